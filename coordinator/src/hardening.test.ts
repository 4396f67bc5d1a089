// Issue 15 (hardening): forged and broken results, poison messages, shards reported done but never
// counted, and hostile agents, each against a real nats-server and coordinator with the fake agent.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { sweep, type control } from "@factsweep/proto";
import { resultsSubject } from "@factsweep/shared";
import { siteToEnum, type SiteName } from "@factsweep/planning";
import {
  fakeEngine,
  fakeP,
  FakeAgents,
  goldenSpec,
  GOLDEN_DIR,
  metricValue,
  startHarness,
  TestAgent,
  until,
  type Harness,
  type TestAgentOptions,
} from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";
import { CREDIT_PER_WORKER } from "./agent-pool.js";
import { DEAD_LETTER_HEADERS, DEAD_LETTER_STREAM } from "./results-consumer.js";

let h: Harness<Coordinator, CoordinatorOptions> | undefined;
const fleet = new FakeAgents();
const agents = fleet.list;
afterEach(async () => {
  await fleet.killAll();
  await h?.close();
  h = undefined;
});

const agentOf = (o: Partial<TestAgentOptions> & { agentId: string }) => fleet.start(h!, o);
const dropAgent = async (a: TestAgent) => {
  await a.kill();
  agents.splice(agents.indexOf(a), 1);
};
const launch = (spec: string, sweepId: string) => h!.coord.launch({ spec, sweepId, specDir: GOLDEN_DIR });
const finished = (id: string) => until(() => ["done", "failed", "cancelled"].includes(h!.coord.get(id).state), `sweep ${id} to end`);
const metrics = () => h!.coord.registry.metrics();
const rejected = async (reason: string) => metricValue(await metrics(), "factsweep_results_rejected_total", { reason }) ?? 0;

function assertExactlyOnce(rows: control.ResultRow[], prompts: number, layers: number, tokens: number): void {
  assert.equal(rows.length, prompts * layers * tokens, "one row per planned cell");
  const keys = new Set(rows.map((r) => `${r.promptIndex}/${r.site}/${r.layer}/${r.token}/${r.window}`));
  assert.equal(keys.size, rows.length, "no cell twice");
  for (const r of rows) assert.equal(r.p, fakeP(r.promptIndex, siteToEnum(r.site as SiteName), r.layer, r.token, r.window));
}

/** The dead letters stored so far: each one's reason header. */
async function deadLetters(): Promise<string[]> {
  const nc = await connect({ servers: h!.nats.url });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(DEAD_LETTER_STREAM);
    const out: string[] = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const m = await jsm.streams.getMessage(DEAD_LETTER_STREAM, { seq });
      out.push(m?.header.get(DEAD_LETTER_HEADERS.reason) ?? "");
    }
    return out;
  } finally {
    await nc.close();
  }
}

test("forged and broken results are refused, counted and dead-lettered; the sweep completes with exactly its planned cells", async () => {
  h = await startHarness(Coordinator.start, { retryBackoffMs: 50 });
  const holder = await agentOf({ agentId: "holder", hold: true, slots: 2 });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "forge");
  await until(() => holder.heldLeases().length === 2, "both shards held");
  const [lease, other] = holder.heldLeases();
  const shard = lease!.shard!;
  const good = { ...fakeEngine(shard, "holder"), leaseId: lease!.leaseId }; // what the holder would publish
  const forged: [string, sweep.ShardResult][] = [
    ["unplanned_shard", { ...good, shardId: "forge.0.99" }],
    ["not_lease_holder", { ...good, agentId: "mallory" }],
    ["not_lease_holder", { ...good, leaseId: "" }],
    ["not_lease_holder", { ...good, leaseId: "a-lease-never-granted" }],
    ["not_lease_holder", { ...good, leaseId: other!.leaseId }],
    ["bad_value", { ...good, cells: good.cells.map((c, i) => (i === 0 ? { ...c, p: NaN } : c)) }],
    ["bad_value", { ...good, cells: good.cells.map((c, i) => (i === 0 ? { ...c, p: 42 } : c)) }],
    ["bad_value", { ...good, cells: good.cells.map((c, i) => (i === 0 ? { ...c, logit: Infinity } : c)) }],
    ["cells_mismatch", { ...good, cells: good.cells.map((c, i) => (i === 0 ? { ...c, cell: { ...c.cell!, layer: 4e9 } } : c)) }],
    ["cells_mismatch", { ...good, cells: Array.from({ length: 1000 }, () => good.cells[0]!) }],
    ["cells_mismatch", { ...good, cells: [...good.cells.slice(1), good.cells[1]!] }],
    ["cells_mismatch", { ...good, cells: good.cells.slice(1) }],
    ["wrong_prompt", { ...good, promptIndex: 1 }],
  ];
  for (const [i, [, r]] of forged.entries()) await holder.publishRaw(r, `forged-${i}`);
  const reasons = ["cells_mismatch", "bad_value", "unplanned_shard", "not_lease_holder", "wrong_prompt"];
  await until(async () => (await Promise.all(reasons.map(rejected))).reduce((x, y) => x + y, 0) === forged.length, "every forged result refused");
  assert.equal(await rejected("cells_mismatch"), 4);
  assert.equal(await rejected("bad_value"), 3);
  assert.equal(await rejected("unplanned_shard"), 1);
  assert.equal(await rejected("not_lease_holder"), 4);
  assert.equal(await rejected("wrong_prompt"), 1);
  assert.equal(h.coord.get("forge").counts?.doneCells, 0, "nothing forged was aggregated");
  await dropAgent(holder);
  await agentOf({ agentId: "worker" });
  await finished("forge");
  assert.equal(h.coord.get("forge").state, "done");
  assertExactlyOnce([...h.coord.results("forge")], 2, 4, 6);
  assert.ok(!JSON.stringify(h.coord.traceView("forge")).includes("4000000000"), "no forged layer in the report");
  const dead = await deadLetters();
  assert.deepEqual(dead.sort(), forged.map(([reason]) => reason).sort(), "each refused message is in the dead-letter stream with its reason");
});

test("a poison message (undecodable, or a shard id that is no KV key) is dead-lettered and acked, and another sweep's valid result is still counted", async () => {
  h = await startHarness(Coordinator.start);
  const holder = await agentOf({ agentId: "holder", hold: true, slots: 1 });
  await launch(goldenSpec({ prompts: 1, shardCells: 24 }), "victim");
  await until(() => holder.heldLeases().length === 1, "the shard held");
  const shard = holder.heldLeases()[0]!.shard!;
  await holder.publishBytes(resultsSubject("victim"), new Uint8Array([0xff, 0xff, 0xff, 0x07, 0x01]), "poison-1");
  await holder.publishRaw({ ...fakeEngine(shard, "holder"), shardId: "victim.0.0 *>" }, "poison-2");
  await holder.publishBytes(
    resultsSubject("victim"),
    sweep.ShardResult.encode({ ...fakeEngine(shard, "holder"), sweepId: "no such/sweep" }).finish(),
    "poison-3",
  );
  await holder.publishBytes(resultsSubject("other"), sweep.ShardResult.encode(fakeEngine(shard, "holder")).finish(), "poison-4");
  await until(
    async () => (await rejected("undecodable")) === 1 && (await rejected("invalid_id")) === 2 && (await rejected("subject_mismatch")) === 1,
    "the poison refused",
  );
  await dropAgent(holder);
  await agentOf({ agentId: "worker" });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "bystander");
  await finished("bystander");
  assert.equal(h.coord.get("bystander").state, "done");
  assertExactlyOnce([...h.coord.results("bystander")], 2, 4, 6);
  await finished("victim");
  assert.equal(h.coord.get("victim").state, "done");
  assert.deepEqual((await deadLetters()).sort(), ["invalid_id", "invalid_id", "subject_mismatch", "undecodable"]);
});

test("a shard reported done whose result is never published is re-leased after the uncounted timeout and the sweep completes", async () => {
  h = await startHarness(Coordinator.start, { uncountedTimeoutMs: 500, retryBackoffMs: 50 });
  const liar = await agentOf({ agentId: "liar", skipPublish: true, slots: 2 });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "lost");
  await until(() => liar.done.length === 2, "both shards reported done");
  await dropAgent(liar);
  await agentOf({ agentId: "worker" });
  await finished("lost");
  const info = h.coord.get("lost");
  assert.equal(info.state, "done");
  assertExactlyOnce([...h.coord.results("lost")], 2, 4, 6);
  assert.equal(metricValue(await metrics(), "factsweep_shards_uncounted_total"), 2);
});

test("resume re-queues shards reported done whose result was never counted", async () => {
  h = await startHarness(Coordinator.start, { uncountedTimeoutMs: 600_000 });
  const liar = await agentOf({ agentId: "liar", skipPublish: true, slots: 1 });
  await launch(goldenSpec({ prompts: 1, shardCells: 24 }), "stuck");
  await until(() => liar.done.length === 1, "the shard reported done");
  await dropAgent(liar);
  await agentOf({ agentId: "worker" });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(h.coord.get("stuck").state, "running", "stuck: done but not counted");
  h.coord.resume("stuck");
  await finished("stuck");
  assert.equal(h.coord.get("stuck").state, "done");
  assertExactlyOnce([...h.coord.results("stuck")], 1, 4, 6);
});

test("a second connection under a live agent's id is refused with ALREADY_EXISTS and the first keeps working", async () => {
  h = await startHarness(Coordinator.start);
  const first = await agentOf({ agentId: "a" });
  const second = await agentOf({ agentId: "a" });
  assert.equal(second.error?.code, grpc.status.ALREADY_EXISTS, String(second.error?.message));
  assert.equal(second.welcome, undefined);
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "dup");
  await finished("dup");
  assert.equal(h.coord.get("dup").state, "done");
  assert.equal(first.done.length, 2, "the first connection did the work");
  assert.equal(h.coord.agents().length, 1);
});

test("Credit 2^32-1 is capped at the agent's workers × CREDIT_PER_WORKER", async () => {
  h = await startHarness(Coordinator.start);
  const greedy = await agentOf({ agentId: "greedy", hold: true, slots: 0, workers: 2 });
  greedy.sendRaw({ $case: "credit", credit: { slots: 2 ** 32 - 1 } });
  await launch(goldenSpec({ prompts: 12, shardCells: 24 }), "greedy");
  await until(() => greedy.heldLeases().length === 2 * CREDIT_PER_WORKER, "the capped number of leases");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(greedy.heldLeases().length, 2 * CREDIT_PER_WORKER);
  assert.equal(h.coord.get("greedy").counts?.shardsPending, 12 - 2 * CREDIT_PER_WORKER);
});

test("reconnecting under one agent id does not burn shards' attempts: the sweep does not fail and completes", async () => {
  h = await startHarness(Coordinator.start, { retryBackoffMs: 20 });
  await launch(goldenSpec({ prompts: 2, shardCells: 24, maxAttempts: 2 }), "burn");
  for (let i = 0; i < 4; i++) {
    const x = await agentOf({ agentId: "x", hold: true, slots: 2 });
    await until(() => x.heldLeases().length === 2, `round ${i}: both shards held`);
    await dropAgent(x);
    await until(() => h!.coord.get("burn").counts?.shardsLeased === 0, `round ${i}: leases back`);
  }
  assert.equal(h.coord.get("burn").state, "running");
  assert.equal(h.coord.get("burn").counts?.shardsFailed, 0);
  await agentOf({ agentId: "worker" });
  await finished("burn");
  assert.equal(h.coord.get("burn").state, "done");
  assertExactlyOnce([...h.coord.results("burn")], 2, 4, 6);
});

test("done and failed for a lease the agent does not hold are ignored and counted", async () => {
  h = await startHarness(Coordinator.start);
  const holder = await agentOf({ agentId: "holder", hold: true, slots: 1 });
  await launch(goldenSpec({ prompts: 1, shardCells: 24, maxAttempts: 5 }), "steal");
  await until(() => holder.heldLeases().length === 1, "the shard held");
  const l = holder.heldLeases()[0]!;
  const evil = await agentOf({ agentId: "evil", hold: true, slots: 0 });
  evil.sendRaw({ $case: "done", done: { leaseId: l.leaseId, shardId: l.shard!.shardId, publishedSeq: 1 } });
  evil.sendRaw({ $case: "failed", failed: { leaseId: l.leaseId, shardId: l.shard!.shardId, error: "nope", retryable: false, handedBack: false } });
  await until(async () => metricValue(await metrics(), "factsweep_lease_reports_ignored_total", { report: "failed" }) === 1, "the reports ignored");
  assert.equal(metricValue(await metrics(), "factsweep_lease_reports_ignored_total", { report: "done" }), 1);
  const info = h.coord.get("steal");
  assert.equal(info.counts?.shardsLeased, 1, "still leased to its holder");
  assert.equal(info.counts?.shardsFailed, 0);
  assert.equal(info.state, "running");
});

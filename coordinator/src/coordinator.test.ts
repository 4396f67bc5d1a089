import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type { control } from "@factsweep/proto";
import { Kvm } from "@nats-io/kv";
import { RESULTS_CONSUMER, RESULTS_STREAM, SHARDS_BUCKET } from "@factsweep/shared";
import { siteToEnum, type SiteName } from "@factsweep/planning";
import { goldenSpec, GOLDEN_DIR, metricValue, startHarness, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";
import { fakeEngine, fakeP, FakeAgents, until, type TestAgentOptions } from "@factsweep/testing";
import { service as HealthService } from "grpc-health-check";

let h: Harness<Coordinator, CoordinatorOptions> | undefined;
const fleet = new FakeAgents();
const agents = fleet.list;
afterEach(async () => {
  await fleet.killAll();
  await h?.close();
  h = undefined;
});

const agentOf = (o: Partial<TestAgentOptions> & { agentId: string }) => fleet.start(h!, o);
const launch = (spec: string, sweepId: string) => h!.coord.launch({ spec, sweepId, specDir: GOLDEN_DIR });
const finished = (id: string) => until(() => ["done", "failed", "cancelled"].includes(h!.coord.get(id).state), `sweep ${id} to end`);

/** Every planned cell exactly once, with the value the (fake) engine computed for it. */
function assertExactlyOnce(rows: control.ResultRow[], prompts: number, layers: number, tokens: number): void {
  assert.equal(rows.length, prompts * layers * tokens, "one row per planned cell");
  const keys = new Set(rows.map((r) => `${r.promptIndex}/${r.site}/${r.layer}/${r.token}/${r.window}`));
  assert.equal(keys.size, rows.length, "no cell twice");
  for (const r of rows) assert.equal(r.p, fakeP(r.promptIndex, siteToEnum(r.site as SiteName), r.layer, r.token, r.window));
}

test("a sweep run by two agents completes with every planned cell aggregated exactly once", async () => {
  h = await startHarness(Coordinator.start);
  await agentOf({ agentId: "a" });
  await agentOf({ agentId: "b" });
  const events = await connect({ servers: h.nats.url });
  const states: string[] = [];
  events.subscribe("factsweep.events.full", { callback: (_e, m) => void states.push((m.json() as { state: string }).state) });
  await events.flush();
  const info = await launch(goldenSpec({ prompts: 3, shardCells: 8 }), "full");
  assert.equal(info.counts?.plannedCells, 3 * 4 * 6);
  await finished("full");
  const end = h.coord.get("full");
  assert.equal(end.state, "done");
  assert.equal(end.counts?.doneCells, 72);
  assert.equal(end.counts?.shardsDone, end.counts?.shardsTotal);
  assertExactlyOnce([...h.coord.results("full")], 3, 4, 6);
  await until(() => states.includes("done"), "the progress event of the end on factsweep.events.full");
  await events.close();
  assert.ok(
    agents.every((a) => a.done.length > 0),
    "both agents got work",
  );
  const metrics = await (await fetch(`http://127.0.0.1:${h.coord.httpPort}/metrics`)).text();
  assert.equal(metricValue(metrics, "factsweep_cells_total", { status: "done" }), 72);
  assert.equal(metricValue(metrics, "factsweep_cells_planned", { sweep: "full" }), 72);
  assert.equal(metricValue(metrics, "factsweep_agents_connected"), 2);
  assert.equal(metricValue(metrics, "factsweep_sweep_progress_ratio", { sweep: "full" }), 1);
  assert.ok(metricValue(metrics, "factsweep_coordinator_process_resident_memory_bytes")! > 0, "process metrics carry the prefix the dashboards use");
});

test("a result published twice, and again after the dedup window, is aggregated once", async () => {
  h = await startHarness(Coordinator.start);
  const a = await agentOf({ agentId: "a", publishTwice: true });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "dedup");
  await finished("dedup");
  // A retry published under another message id (as after the stream's duplicate window) reaches the consumer.
  const shard = a.leases[0]!.shard!;
  assert.equal((await a.publishRaw(fakeEngine(shard, "late"), `${shard.shardId}-late`)).duplicate, false);
  await until(
    async () => metricValue(await h!.coord.registry.metrics(), "factsweep_results_consumed_total", { duplicate: "true" }) === 1,
    "the late duplicate to be consumed",
  );
  const metrics = await h.coord.registry.metrics();
  assert.equal(metricValue(metrics, "factsweep_results_consumed_total", { duplicate: "false" }), 2, "the same-id republish was dropped by JetStream");
  assertExactlyOnce([...h.coord.results("dedup")], 2, 4, 6);
  assert.equal(h.coord.get("dedup").counts?.doneCells, 48);
});

test("results consumed before a coordinator crash are neither lost nor doubled by redelivery after restart", async () => {
  h = await startHarness(Coordinator.start);
  const a = await agentOf({ agentId: "a", slots: 1 });
  await launch(goldenSpec({ prompts: 4, shardCells: 24 }), "crash");
  await until(() => a.done.length >= 2, "two shards done");
  await h.restart("crash");
  const b = await agentOf({ agentId: "a", slots: 2 }); // the same agent reconnects to the new coordinator
  await until(() => ["done", "failed"].includes(h!.coord.get("crash").state), "sweep to end after restart");
  assert.equal(h.coord.get("crash").state, "done", JSON.stringify(h.coord.get("crash")));
  assertExactlyOnce([...h.coord.results("crash")], 4, 4, 6);
  assert.ok(b.done.length + a.done.length >= 4);
  // every result message was acked once the snapshot holding it was durable
  const nc = await connect({ servers: h.nats.url });
  const jsm = await jetstreamManager(nc);
  await until(async () => (await jsm.consumers.info(RESULTS_STREAM, RESULTS_CONSUMER)).num_ack_pending === 0, "all results acked");
  await nc.close();
});

test("a restarted coordinator loads identical sweep state from KV and finishes the sweep", async () => {
  h = await startHarness(Coordinator.start);
  const a = await agentOf({ agentId: "a", slots: 1 });
  await launch(goldenSpec({ prompts: 3, shardCells: 24 }), "reload");
  await until(() => a.done.length >= 1 && h!.coord.get("reload").counts!.shardsDone >= 1, "one shard aggregated");
  await a.stop();
  agents.splice(agents.indexOf(a), 1);
  await until(() => h!.coord.get("reload").counts!.shardsLeased === 0, "the stopped agent's leases released");
  const before = h.coord.get("reload");
  const rowsBefore = [...h.coord.results("reload")];
  await h.restart("graceful");
  const after = h.coord.get("reload");
  assert.deepEqual({ ...after, cellsPerSecond: 0, etaSeconds: 0 }, { ...before, cellsPerSecond: 0, etaSeconds: 0 });
  assert.deepEqual([...h.coord.results("reload")], rowsBefore);
  await agentOf({ agentId: "b" });
  await finished("reload");
  assertExactlyOnce([...h.coord.results("reload")], 3, 4, 6);
});

test("a shard held by an agent that vanishes is re-leased to another agent and completes once", async () => {
  h = await startHarness(Coordinator.start);
  const bad = await agentOf({ agentId: "bad", hold: true, slots: 10 });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "vanish");
  await until(() => bad.heldLeases().length === 2, "the holding agent to get both shards");
  await bad.kill();
  await agentOf({ agentId: "good" });
  await finished("vanish");
  const info = h.coord.get("vanish");
  assert.equal(info.state, "done");
  assert.equal(info.counts?.retries, 2, "each shard took a second attempt");
  assertExactlyOnce([...h.coord.results("vanish")], 2, 4, 6);
});

test("a lease never renewed expires and is retried with backoff; after max_attempts the shard fails, and resume completes it", async () => {
  h = await startHarness(Coordinator.start, { leaseTtlMs: 300, heartbeatMs: 100 });
  const silent = await agentOf({ agentId: "silent", hold: true, silent: true, slots: 100 });
  await launch(goldenSpec({ prompts: 1, shardCells: 24, maxAttempts: 2 }), "expire");
  await finished("expire");
  const info = h.coord.get("expire");
  assert.equal(info.state, "failed");
  assert.equal(silent.leases.length, 2, "leased max_attempts times");
  assert.match(info.failedShards[0] ?? "", /expired.*gave up after 2 attempt/);
  assert.equal(metricValue(await h.coord.registry.metrics(), "factsweep_lease_expirations_total"), 2);
  await silent.kill();
  agents.splice(0);
  await agentOf({ agentId: "worker" });
  const resumed = h.coord.resume("expire");
  assert.equal(resumed.state, "running");
  await finished("expire");
  assert.equal(h.coord.get("expire").state, "done");
  assertExactlyOnce([...h.coord.results("expire")], 1, 4, 6);
});

test("a non-retryable failure fails the shard at once with the agent's error", async () => {
  h = await startHarness(Coordinator.start);
  const a = await agentOf({ agentId: "a", failWith: { error: "prompt too long for the model", retryable: false } });
  await launch(goldenSpec({ prompts: 1, shardCells: 24, maxAttempts: 5 }), "fatal");
  await finished("fatal");
  const info = h.coord.get("fatal");
  assert.equal(info.state, "failed");
  assert.equal(a.leases.length, 1, "not retried");
  assert.match(info.failedShards[0] ?? "", /fatal\.0\.0: prompt too long/);
});

test("cancel stops a sweep and revokes its leases; resume finishes it", async () => {
  h = await startHarness(Coordinator.start);
  const holder = await agentOf({ agentId: "holder", hold: true, slots: 1 });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "cancel");
  await until(() => holder.heldLeases().length === 1, "a lease");
  assert.equal(h.coord.cancel("cancel").state, "cancelled");
  await until(() => holder.cancels.length === 1, "the lease to be revoked");
  await holder.kill();
  agents.splice(0);
  await agentOf({ agentId: "w" });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(h.coord.get("cancel").counts?.doneCells, 0, "a cancelled sweep gets no grants");
  h.coord.resume("cancel");
  await finished("cancel");
  assert.equal(h.coord.get("cancel").state, "done");
  assertExactlyOnce([...h.coord.results("cancel")], 2, 4, 6);
});

test("a nats-server killed and restarted mid-sweep: the sweep completes with every cell exactly once", async () => {
  h = await startHarness(Coordinator.start);
  const a = await agentOf({ agentId: "a", slots: 1 });
  await launch(goldenSpec({ prompts: 4, shardCells: 12 }), "natsfault");
  await until(() => a.done.length >= 2, "two shards done");
  h.nats.kill("SIGKILL");
  await new Promise((r) => setTimeout(r, 200));
  await h.nats.restart();
  await finished("natsfault");
  assert.equal(h.coord.get("natsfault").state, "done");
  assertExactlyOnce([...h.coord.results("natsfault")], 4, 4, 6);
});

test("gRPC health reports SERVING once the coordinator is ready and NOT_FOUND for unknown services", async () => {
  h = await startHarness(Coordinator.start);
  const Client = grpc.makeGenericClientConstructor(HealthService as grpc.ServiceDefinition, "grpc.health.v1.Health");
  const c = new Client(h.addr, grpc.credentials.createInsecure()) as unknown as grpc.Client &
    Record<string, (req: unknown, cb: (e: grpc.ServiceError | null, r: { status: string }) => void) => void>;
  const check = (service: string) => new Promise<{ status: string }>((res, rej) => c.check!({ service }, (e, r) => (e ? rej(e) : res(r))));
  assert.equal((await check("")).status, "SERVING");
  assert.equal((await check("factsweep.control.v1.SweepService")).status, "SERVING");
  await assert.rejects(check("nope"), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  // Watch: the current status at once, then every change (a stopping coordinator is NOT_SERVING).
  const watch = (c as unknown as grpc.Client & { watch(req: unknown): grpc.ClientReadableStream<{ status: string }> }).watch({ service: "" });
  const seen: string[] = [];
  watch.on("data", (r: { status: string }) => void seen.push(r.status));
  watch.on("error", () => undefined);
  await until(() => seen.length === 1, "the watch's first status");
  assert.deepEqual(seen, ["SERVING"]);
  const stopped = h.coord.stop();
  await until(() => seen.length === 2, "the watch to see the stop");
  assert.deepEqual(seen, ["SERVING", "NOT_SERVING"]);
  await stopped;
  watch.cancel();
  c.close();
});

test("shard records lost to a crash during launch are re-planned by the restarted coordinator and the sweep completes once", async () => {
  h = await startHarness(Coordinator.start);
  await launch(goldenSpec({ prompts: 3, shardCells: 12 }), "cut");
  await h.restart("crash");
  // What a coordinator killed in the middle of writing the shards leaves behind: some records missing.
  const nc = await connect({ servers: h.nats.url });
  const kv = await new Kvm(nc).open(SHARDS_BUCKET);
  await kv.purge("cut.1.0");
  await kv.purge("cut.2.1");
  await nc.close();
  await h.restart("crash");
  assert.equal(h.coord.get("cut").counts?.shardsTotal, 6);
  await agentOf({ agentId: "a" });
  await finished("cut");
  assert.equal(h.coord.get("cut").state, "done");
  assertExactlyOnce([...h.coord.results("cut")], 3, 4, 6);
});

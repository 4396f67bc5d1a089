import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { AGGREGATES_BUCKET, SWEEPS_BUCKET } from "@factsweep/shared";
import { startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { StateStore, type SweepRecord, type ShardRecord } from "./state-store.js";
import { LeaseTable } from "./lease-table.js";
import { StaleCoordinatorError, SweepExistsError } from "./errors.js";

let nats: NatsServerHandle;
const conns: NatsConnection[] = [];
const conn = async () => {
  const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  conns.push(nc);
  return nc;
};
before(async () => {
  nats = await startNatsServer();
});
after(async () => {
  for (const c of conns) await c.close().catch(() => undefined);
  await nats.stop();
});

const sweepRec = (id: string): SweepRecord => ({
  sweepId: id,
  name: "n",
  kind: "trace",
  spec: "model: x",
  specDir: "/tmp",
  model: { modelId: "m" },
  prompts: [{ index: 0 }],
  promptErrors: [{ index: 1, message: "subject not found" }],
  state: "running",
  plannedCells: 8,
  shardCount: 2,
  maxAttempts: 3,
  doneCells: 0,
  retries: 0,
  createdMs: 1,
  finishedMs: 0,
});
const shardRec = (sweepId: string, i: number): ShardRecord => ({ ...LeaseTable.pending(`${sweepId}.${i}.0`, sweepId, `${sweepId}/${i}`, 4), shard: "AAEC" });

test("a new coordinator over the same KV loads identical sweep, shard and result state", async () => {
  const a = await StateStore.open(await conn());
  const created = sweepRec("sw1");
  await a.createSweep(created); // it notes where the prompts went (promptChunks), as a live sweep's record keeps
  const s0 = shardRec("sw1", 0);
  const s1 = shardRec("sw1", 1);
  a.saveShard(s0);
  a.saveShard(s1);
  // several updates of one key in a row: coalesced, the newest wins
  a.saveShard({ ...s0, state: "leased", attempts: 1, leaseId: "L1", agentId: "ag" });
  a.saveShard({ ...s0, state: "done", attempts: 1, leaseId: "L1", agentId: "ag", resultConsumed: true });
  a.saveShard({ ...s1, state: "failed", attempts: 3, lastError: "boom" });
  a.saveSweep({ ...created, doneCells: 4, retries: 2 });
  const r0 = new Uint8Array([1, 2, 3]);
  const r1 = new Uint8Array(200_000).fill(7);
  await a.saveResult("sw1.0.0", r0);
  await a.saveResult("sw1.1.0", r1);
  await a.saveResult("sw10.0.0", new Uint8Array([9])); // another sweep whose id starts alike
  await a.flush();

  const b = await StateStore.open(await conn());
  assert.ok(b.epoch > a.epoch, "each coordinator claims a newer epoch");
  const { sweeps, shards } = await b.loadAll();
  // The prompts are stored beside the record, not in it (a record holding them capped a sweep at a few thousand).
  assert.deepEqual(sweeps, [{ ...sweepRec("sw1"), prompts: [], promptChunks: 1, promptCount: 1, doneCells: 4, retries: 2 }]);
  assert.deepEqual(await b.loadPrompts(sweeps[0]!), sweepRec("sw1").prompts);
  assert.deepEqual(shards, [
    { ...s0, state: "done", attempts: 1, leaseId: "L1", agentId: "ag", resultConsumed: true },
    { ...s1, state: "failed", attempts: 3, lastError: "boom" },
  ]);
  assert.deepEqual(
    (await b.loadResults("sw1")).map((x) => Buffer.from(x.value)),
    [Buffer.from(r0), Buffer.from(r1)],
  );
  // the new coordinator writes over the old one's revisions
  b.saveShard({ ...s1, state: "pending", attempts: 0 });
  await b.flush();
  assert.equal((await b.loadAll()).shards[1]?.state, "pending");
});

test("results stored in batches load one by one beside results stored one per key, a batch that cannot be read is left out and named, and a tail starts after a batch's sequence", async () => {
  const nc = await conn();
  const logged: string[] = [];
  const a = await StateStore.open(nc);
  const old = new Uint8Array([5, 5]);
  await a.saveResult("bt.7.0", old); // the form coordinators before batches wrote
  // 40 results of 30,000 bytes: more than one 512 KiB segment, so one batch is several KV values.
  const big = Array.from({ length: 40 }, (_, i) => new Uint8Array(30_000).fill(i + 1));
  const seq1 = await a.saveResults("bt", big);
  await a.saveResults("bt2", [new Uint8Array([9])]); // another sweep: not in bt's results
  // A batch whose framing is cut (written by hand): outside input, refused without losing the others.
  const kv = await new Kvm(nc).open(AGGREGATES_BUCKET);
  await kv.put("bt.b.999.0", new Uint8Array([0, 0, 0, 50, 1, 2]));
  const seq2 = await a.saveResults("bt", [new Uint8Array([1]), new Uint8Array([2])]);
  assert.ok(seq2 > seq1);

  const b = await StateStore.open(nc, { log: (m) => logged.push(m) });
  const all = await b.loadResults("bt");
  const values = all.map((x) => Buffer.from(x.value).toString("hex")).sort();
  const want = [old, ...big, new Uint8Array([1]), new Uint8Array([2])].map((x) => Buffer.from(x).toString("hex")).sort();
  assert.deepEqual(values, want);
  assert.ok(
    logged.some((m) => m.includes("bt.b.999.0") && m.includes("leased again")),
    logged.join("\n"),
  );
  // A snapshot covering seq1 leaves the tail: the last batch only, each result at the batch's sequence.
  const tail = await b.loadResultsAfter("bt", seq1);
  assert.deepEqual(
    tail.map((x) => [Buffer.from(x.value).toString("hex"), x.seq]),
    [
      ["01", seq2],
      ["02", seq2],
    ],
  );
});

test("prompts are stored in chunks under a KV value's size, and a record written before chunks (prompts inline) still loads", async () => {
  const nc = await conn();
  const a = await StateStore.open(nc);
  const prompts = Array.from({ length: 5_000 }, (_, i) => ({ promptKey: `big/${i}`, inputIds: Array.from({ length: 40 }, (_, t) => 1000 + i + t) }));
  await a.createSweep({ ...sweepRec("big"), prompts });
  const b = await StateStore.open(await conn());
  const rec = (await b.loadSweep("big"))!;
  assert.ok(rec.promptChunks! >= 4, `${rec.promptChunks} chunks for ~1.3 MB of prompts`);
  assert.deepEqual(await b.loadPrompts(rec), prompts);

  const old = { ...sweepRec("old"), prompts: [{ promptKey: "old/0" }] };
  const kv = await new Kvm(nc).open(SWEEPS_BUCKET);
  await kv.put("old", JSON.stringify({ epoch: 0, data: old })); // as a coordinator before chunks wrote it
  const loaded = (await b.loadSweep("old"))!;
  assert.equal(loaded.promptChunks, undefined);
  assert.deepEqual(await b.loadPrompts(loaded), [{ promptKey: "old/0" }]);
});

test("launching a sweep id that exists is refused", async () => {
  const a = await StateStore.open(await conn());
  await a.createSweep(sweepRec("dup"));
  await assert.rejects(a.createSweep(sweepRec("dup")), SweepExistsError);
});

test("an older coordinator is fenced off once a newer one wrote the same record", async () => {
  const errors: unknown[] = [];
  const old = await StateStore.open(await conn(), { onWriteError: (_k, e) => errors.push(e) });
  await old.createSweep(sweepRec("fence"));
  old.saveShard(shardRec("fence", 0));
  await old.flush();
  const fresh = await StateStore.open(await conn());
  await fresh.loadAll();
  fresh.saveShard({ ...shardRec("fence", 0), state: "leased", agentId: "new" });
  await fresh.flush();
  old.saveShard({ ...shardRec("fence", 0), state: "failed", agentId: "old" });
  await old.flush();
  assert.ok(
    errors.some((e) => e instanceof StaleCoordinatorError),
    "the stale coordinator learns it lost",
  );
  const { shards } = await fresh.loadAll();
  assert.equal(shards.find((s) => s.shardId === "fence.0.0")?.agentId, "new", "the newer coordinator's write stands");
});

test("writes queued while nats-server restarts reach the KV once it is back", async () => {
  const a = await StateStore.open(await conn(), { retryMs: 50 });
  await a.createSweep(sweepRec("rs"));
  a.saveShard(shardRec("rs", 0));
  await a.flush();
  nats.kill("SIGKILL");
  a.saveShard({ ...shardRec("rs", 0), state: "done", resultConsumed: true });
  await new Promise((r) => setTimeout(r, 300));
  await nats.restart();
  await a.flush();
  const b = await StateStore.open(await conn());
  const { shards } = await b.loadAll();
  assert.equal(shards.find((s) => s.shardId === "rs.0.0")?.state, "done");
});

// Issue 17 item 2: the coordinator's merge of ROME covariance parts, against a real nats-server's
// object store: C = Σ parts / Σ tokens in float32, stored once, the held edits released; a
// coordinator started after the parts were stored (a restart before the merge) merges them at
// load; a part that is not a float32 square matrix is never merged; a failed part fails the edits.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import type { ObjectStore } from "@nats-io/obj";
import { Counter, Registry } from "prom-client";
import { sweep } from "@factsweep/proto";
import { covarianceObjectName, covariancePartName } from "@factsweep/shared";
import { startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { Covariances, openCovarianceStore } from "./covariances.js";
import { HELD_MS } from "./lease-table.js";

let nats: NatsServerHandle;
let nc: NatsConnection;
let os: ObjectStore;
before(async () => {
  nats = await startNatsServer();
  nc = await connect({ servers: nats.url });
  os = await openCovarianceStore(nc, 1, 64 * 1024 * 1024, () => undefined);
});
after(async () => {
  await nc.close();
  await nats.stop();
});

const object = (layer: number) => covarianceObjectName("0123456789abcdef", layer, "out_proj", "fedcba9876543210", 2048);
const shard = (id: string, covariance: object): sweep.Shard =>
  sweep.Shard.fromPartial({ sweepId: "s", shardId: id, kind: "edit", paramsJson: JSON.stringify({ matrix: "W_o", layer: 1, covariance }) });

/** A Covariances over the bucket, recording what it released and its counter. */
function covariances() {
  const released: { ids: string[]; error?: string }[] = [];
  const counter = new Counter({ name: "c", help: "c", labelNames: ["source"], registers: [new Registry()] });
  const c = new Covariances(os, { release: (ids, error) => released.push({ ids, error }), counter, log: () => undefined });
  return { c, released, computed: async () => (await counter.get()).values.find((v) => v.labels.source === "computed")?.value ?? 0 };
}

/** Tracks one held edit and `parts` covariance shards of `obj` (as at launch or after a load). */
function track(c: Covariances, obj: string, parts: number): void {
  c.track([
    { entry: { shardId: "s.0.0", state: "pending", notBeforeMs: HELD_MS }, shard: shard("s.0.0", { object: obj }) },
    ...Array.from({ length: parts }, (_, k) => ({
      entry: { shardId: `s.0.${k + 1}`, state: "pending", notBeforeMs: 0 },
      shard: shard(`s.0.${k + 1}`, { object: obj, part: k, parts }),
    })),
  ]);
}

const putPart = (obj: string, k: number, n: number, m: Float32Array, tokens: number, dim = Math.sqrt(m.length)) =>
  os.putBlob({ name: covariancePartName(obj, k, n), metadata: { tokens: String(tokens), dim: String(dim) } }, new Uint8Array(m.buffer));

async function until(pred: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("an existing bucket is opened and its size limit brought in line", async () => {
  const logs: string[] = [];
  await openCovarianceStore(nc, 1, 32 * 1024 * 1024, (m) => logs.push(m));
  const jsm = await jetstreamManager(nc);
  assert.equal((await jsm.streams.info("OBJ_factsweep-cov")).config.max_bytes, 32 * 1024 * 1024, logs.join("\n"));
});

test("parts merge into C = Σ moments / Σ tokens once every part is stored, and the held edit is released", async () => {
  const obj = object(1);
  const { c, released, computed } = covariances();
  track(c, obj, 2);
  await putPart(obj, 0, 2, new Float32Array([1, 2, 2, 8]), 3);
  c.partDone(shard("s.0.1", { object: obj, part: 0, parts: 2 }));
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await c.has(obj), false, "one part of two: no C yet");
  assert.deepEqual(released, []);
  await putPart(obj, 1, 2, new Float32Array([3, 0, 0, 4]), 1);
  c.partDone(shard("s.0.2", { object: obj, part: 1, parts: 2 }));
  await until(() => released.length === 1);
  assert.deepEqual(released, [{ ids: ["s.0.0"], error: undefined }]);
  const C = new Float32Array(new Uint8Array((await os.getBlob(obj))!).buffer);
  assert.deepEqual([...C], [1, 0.5, 0.5, 3]);
  assert.deepEqual((await os.info(obj))?.metadata, { tokens: "4", dim: "2", parts: "2" });
  assert.equal(await computed(), 1);
  assert.equal(await c.has(covariancePartName(obj, 0, 2)), false, "the parts are deleted once C is stored");
  // At the next launch, C is there: its covariance shards are left out and the edit is not held.
  const { shards, held } = await c.prepare([shard("t.0.0", { object: obj }), shard("t.0.1", { object: obj, part: 0, parts: 2 })]);
  assert.deepEqual(
    shards.map((s) => s.shardId),
    ["t.0.0"],
  );
  assert.equal(held.size, 0);
});

test("a coordinator started after the parts were stored (restart before the merge) merges them when it loads the held shards", async () => {
  const obj = object(2);
  await putPart(obj, 0, 1, new Float32Array([4, 0, 0, 4]), 2);
  const { c, released, computed } = covariances(); // the new process: nothing in memory
  track(c, obj, 1);
  await until(() => released.length === 1);
  assert.deepEqual([...new Float32Array(new Uint8Array((await os.getBlob(obj))!).buffer)], [2, 0, 0, 2]);
  assert.equal(await computed(), 1);
});

test("a part that is not a float32 square matrix of its metadata's dim is never merged; a failed part fails the held edits", async () => {
  const obj = object(3);
  const { c, released } = covariances();
  track(c, obj, 1);
  await putPart(obj, 0, 1, new Float32Array([1, 2, 3]), 2, 2); // 12 bytes
  c.partDone(shard("s.0.1", { object: obj, part: 0, parts: 1 }));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await c.has(obj), false);
  assert.deepEqual(released, []);
  c.partFailed(shard("s.0.1", { object: obj, part: 0, parts: 1 }), "engine error");
  assert.equal(released.length, 1);
  const [first] = released as { ids: string[]; error?: string }[];
  assert.deepEqual(first!.ids, ["s.0.0"]);
  assert.match(first!.error!, /could not be computed .*engine error/);
});

test("an edit failing fails no other edit; a resumed sweep holds its pending edits again until the re-run part makes C", async () => {
  const obj = object(4);
  const { c, released } = covariances();
  track(c, obj, 1);
  c.partFailed(shard("s.0.0", { object: obj }), "an edit's own error");
  assert.deepEqual(released, []);
  c.partFailed(shard("s.0.1", { object: obj, part: 0, parts: 1 }), "engine error");
  assert.equal(released.length, 1);
  // The resume re-queued both (pending, not held): the edit is held before any grant.
  const held: string[][] = [];
  c.resumed(
    [
      { entry: { shardId: "s.0.0", state: "pending", notBeforeMs: 0 }, shard: shard("s.0.0", { object: obj }) },
      { entry: { shardId: "s.0.1", state: "pending", notBeforeMs: 0 }, shard: shard("s.0.1", { object: obj, part: 0, parts: 1 }) },
    ],
    (ids) => held.push(ids),
  );
  assert.deepEqual(held, [["s.0.0"]]);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(released.length, 1, "no C yet: still held");
  await putPart(obj, 0, 1, new Float32Array([1, 0, 0, 1]), 1);
  c.partDone(shard("s.0.1", { object: obj, part: 0, parts: 1 }));
  await until(() => released.length === 2);
  assert.deepEqual(released[1], { ids: ["s.0.0"], error: undefined });
});

import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { SNAPSHOTS_BUCKET } from "@factsweep/shared";
import { startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { StateStore } from "./state-store.js";
import { StaleCoordinatorError } from "./errors.js";
import { packSegments, SEGMENT_MAX_BYTES, SnapshotError, unpackSegment } from "./snapshots.js";

let nats: NatsServerHandle;
const conns: NatsConnection[] = [];
const conn = async () => {
  const nc = await connect({ servers: nats.url });
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

const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill);
const same = (a: Uint8Array[], b: Uint8Array[]) =>
  assert.deepEqual(
    a.map((x) => Buffer.from(x)),
    b.map((x) => Buffer.from(x)),
  );

test("segments pack results under the size cap and unpack to the same results; a cut segment is refused", () => {
  const rs = [bytes(3, 1), bytes(SEGMENT_MAX_BYTES, 2), bytes(300_000, 3), bytes(300_000, 4), bytes(0, 5)];
  const segs = packSegments(rs);
  assert.equal(segs.length, 4, "3 bytes; the oversized result alone; 300k; 300k + empty");
  same(
    segs.flatMap((s, i) => unpackSegment("sw", `k${i}`, s)),
    rs,
  );
  assert.throws(() => unpackSegment("sw", "k", segs[0]!.subarray(0, 5)), SnapshotError);
});

test("a snapshot appended over two coordinators loads whole; the tail is what was stored after its sequence", async () => {
  const a = await StateStore.open(await conn());
  const r = (i: number) => bytes(100 + i, i);
  const seqs: number[] = [];
  for (let i = 0; i < 6; i++) seqs.push(await a.saveResult(`sw.${i}.0`, r(i)));
  await a.saveResult("sw2.0.0", bytes(5, 9)); // another sweep: neither in sw's snapshot nor its tail
  const m1 = await a.appendSnapshot("sw", undefined, [r(0), r(1), r(2)], seqs[2]!);
  assert.deepEqual(m1, { seq: seqs[2], runs: [{ epoch: a.epoch, count: 1 }], results: 3 });

  const b = await StateStore.open(await conn());
  const got = await b.loadSnapshot("sw");
  assert.deepEqual(got?.manifest, m1);
  same(got!.results, [r(0), r(1), r(2)]);
  const tail = await b.loadResultsAfter("sw", m1.seq);
  assert.deepEqual(
    tail.map((t) => t.seq),
    seqs.slice(3),
  );
  const m2 = await b.appendSnapshot(
    "sw",
    got!.manifest,
    tail.map((t) => t.value),
    seqs[5]!,
  );
  assert.deepEqual(m2.runs, [
    { epoch: a.epoch, count: 1 },
    { epoch: b.epoch, count: 1 },
  ]);
  same((await b.loadSnapshot("sw"))!.results, [0, 1, 2, 3, 4, 5].map(r));
  assert.deepEqual(await b.loadResultsAfter("sw", m2.seq), []);
  assert.equal(await b.loadSnapshot("none"), undefined);

  // The older coordinator may not move the manifest back: fenced.
  await assert.rejects(a.appendSnapshot("sw", m1, [r(7)], seqs[5]! + 10), StaleCoordinatorError);

  // A segment gone: the snapshot is refused (the sweep is then read from every stored result).
  const kv = await new Kvm(await conn()).open(SNAPSHOTS_BUCKET);
  await kv.purge(`sw.s.${b.epoch}.0`);
  await assert.rejects(
    b.loadSnapshot("sw"),
    (e: Error) => e instanceof SnapshotError && /segment sw\.s\.\d+\.0 named by the manifest is missing/.test(e.message),
  );

  const removed = await b.deleteSweep("sw");
  assert.equal(removed.results, 6);
  assert.equal(await b.loadSnapshot("sw"), undefined, "delete removes the snapshot too");
});

// Held shards (an edit waiting for its ROME covariance): never granted while held, granted after
// release, failed (and counted failed) when released with an error, held again by hold.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HELD_MS, LeaseTable } from "./lease-table.js";

function table() {
  let n = 0;
  const t = new LeaseTable({ clock: () => 1_000_000, leaseTtlMs: 1000, newLeaseId: () => `L${++n}` });
  t.setSweep("s", true, 3);
  t.restore({ ...LeaseTable.pending("s.0.0", "s", "s/0", 1), notBeforeMs: HELD_MS });
  t.restore(LeaseTable.pending("s.0.1", "s", "s/0", 1));
  t.connectAgent("a", [], 4);
  t.addCredit("a", 4);
  return t;
}

test("a held shard is not granted until released; released with an error it fails", () => {
  const t = table();
  assert.deepEqual(
    t.schedule().map((g) => g.shardId),
    ["s.0.1"],
  );
  assert.equal(t.counts("s").pending, 1);
  const ch = t.release(["s.0.0", "s.0.1"]); // the leased one is not held: untouched
  assert.deepEqual(
    ch.changed.map((e) => e.shardId),
    ["s.0.0"],
  );
  assert.deepEqual(
    t.schedule().map((g) => g.shardId),
    ["s.0.0"],
  );

  const u = table();
  const failed = u.release(["s.0.0"], "its covariance could not be computed");
  assert.equal(failed.newlyFailed, 1);
  assert.equal(u.get("s.0.0")!.state, "failed");
  assert.deepEqual(u.counts("s").failedShards, ["s.0.0"]);
  assert.deepEqual(
    u.schedule().map((g) => g.shardId),
    ["s.0.1"],
  );
});

test("hold keeps a pending shard from being granted until release", () => {
  const t = table();
  t.release(["s.0.0"]);
  t.hold(["s.0.0", "s.0.1"]);
  assert.deepEqual(t.schedule(), []);
  t.release(["s.0.1"]);
  assert.deepEqual(
    t.schedule().map((g) => g.shardId),
    ["s.0.1"],
  );
});

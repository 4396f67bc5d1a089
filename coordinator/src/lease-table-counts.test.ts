import { test } from "node:test";
import assert from "node:assert/strict";
import { LeaseTable } from "./lease-table.js";

/** What counts() must say: a scan of the sweep's shards (the old implementation). */
function scan(t: LeaseTable, sweepId: string) {
  const c = { total: 0, pending: 0, leased: 0, done: 0, failed: 0, doneCells: 0, retries: 0, failedShards: [] as string[] };
  for (const s of t.shardsOf(sweepId)) {
    c.total++;
    c.retries += Math.max(0, s.attempts - 1);
    if (s.state === "done" && s.resultConsumed) {
      c.done++;
      c.doneCells += s.cells;
    } else if (s.state === "failed") {
      c.failed++;
      c.failedShards.push(s.shardId);
    } else if (s.state === "leased") c.leased++;
    else c.pending++;
  }
  return c;
}

test("counts() kept up to date equal a scan after every operation of a seeded random run", () => {
  let now = 1_000_000;
  let n = 0;
  let seed = 12345;
  const rnd = (k: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; // exact 32-bit arithmetic (a float product loses the low bits)
    return (seed >>> 8) % k; // the low bits of this generator repeat with a short period
  };
  const t = new LeaseTable({ clock: () => now, leaseTtlMs: 1000, backoffBaseMs: 10, backoffMaxMs: 50, newLeaseId: () => `L${++n}` });
  t.setSweep("s1", true, 3);
  t.setSweep("s2", true, 2);
  for (let i = 0; i < 40; i++) t.restore(LeaseTable.pending(`s${1 + (i % 2)}.${i}.0`, `s${1 + (i % 2)}`, `s/${i}`, 1 + (i % 5)));
  const agents = ["a", "b", "c"];
  for (const a of agents) t.connectAgent(a, [], 2);
  const check = (what: string) => {
    for (const sw of ["s1", "s2"]) {
      const want = scan(t, sw);
      const got = t.counts(sw);
      assert.deepEqual({ ...got, failedShards: [...got.failedShards].sort() }, { ...want, failedShards: want.failedShards.sort() }, `${sw} after ${what}`);
    }
  };
  check("restore");
  for (let step = 0; step < 3000; step++) {
    const op = rnd(11);
    const a = agents[rnd(agents.length)]!;
    const held = t.leasesOf(a);
    const s = held[rnd(Math.max(1, held.length))];
    if (op <= 1) t.addCredit(a, 1 + rnd(3));
    else if (op === 2) t.schedule();
    else if (op === 3 && s) t.complete(a, s.leaseId, s.shardId);
    else if (op === 4 && s) t.fail(a, s.leaseId, s.shardId, "boom", rnd(4) > 0);
    else if (op === 5) {
      const all = t.shardsOf(rnd(2) ? "s1" : "s2");
      const x = all[rnd(all.length)]!;
      if (x.state === "done" || rnd(3) === 0) t.resultConsumed(x.shardId);
    } else if (op === 6) {
      t.disconnectAgent(a);
      t.connectAgent(a, [], 2);
    } else if (op === 7) {
      now += rnd(1500);
      t.expire();
    } else if (op === 8) t.cancelSweep(rnd(2) ? "s1" : "s2");
    else if (op === 9) t.resumeSweep(rnd(2) ? "s1" : "s2");
    else if (op === 10) {
      const all = t.shardsOf("s1");
      const x = all[rnd(all.length)]!;
      t.restore({ ...x, state: "pending", resultConsumed: false }); // a reload of one record
    }
    check(`step ${step} (op ${op})`);
  }
  t.forgetSweep("s2");
  assert.equal(t.counts("s2").total, 0);
  check("forget");
});

test("a result counted from the open lease of its holder ends that lease without a CancelLease, and the holder's later done is accepted", () => {
  let n = 0;
  const t = new LeaseTable({ leaseTtlMs: 1000, backoffBaseMs: 0, newLeaseId: () => `L${++n}` });
  t.setSweep("s1", true, 3);
  t.restore(LeaseTable.pending("s1.0.0", "s1", "s1/0", 4));
  t.restore(LeaseTable.pending("s1.1.0", "s1", "s1/1", 4));
  t.connectAgent("a", [], 2);
  t.addCredit("a", 2);
  const [g0, g1] = t.schedule();
  t.resultFrom("s1.0.0", g0!.leaseId);
  const ch = t.resultConsumed("s1.0.0");
  assert.deepEqual(ch.revoked, [], "no CancelLease for the lease whose result was counted");
  assert.equal(t.leaseCount("a"), 1);
  assert.equal(t.complete("a", g0!.leaseId, "s1.0.0").ignored, 0, "its done is not an ignored report");
  assert.equal(t.complete("b", g0!.leaseId, "s1.0.0").ignored, 1, "another agent's still is");
  // A result of an earlier lease while another is open: that other lease is revoked, as before.
  t.resultFrom("s1.1.0", "L-old");
  assert.deepEqual(
    t.resultConsumed("s1.1.0").revoked.map((r) => r.leaseId),
    [g1!.leaseId],
  );
  assert.equal(t.counts("s1").done, 2);
});

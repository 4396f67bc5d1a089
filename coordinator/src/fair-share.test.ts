// Several sweeps sharing the agents (issue 16): priority first, then weighted fair share of the
// grants (stride scheduling), no catch-up burst for a sweep that arrives late, no starvation.
import { test } from "node:test";
import assert from "node:assert/strict";
import { LeaseTable, type SweepShare } from "./lease-table.js";

function setup(opts: { agingMs?: number } = {}) {
  let now = 1_000_000;
  let n = 0;
  const t = new LeaseTable({ clock: () => now, leaseTtlMs: 60_000, newLeaseId: () => `L${++n}`, priorityAgingMs: opts.agingMs ?? 300_000 });
  t.connectAgent("a", [], 4);
  const sweep = (id: string, shards: number, share?: SweepShare) => {
    for (let i = 0; i < shards; i++) t.restore(LeaseTable.pending(`${id}.${i}`, id, `${id}/${i}`, 1));
    t.setSweep(id, true, 3, share);
  };
  /** `grants` shards granted one at a time (an agent finishing one, asking for the next), counted by sweep. */
  const serve = (grants: number, stepMs = 0): Map<string, number> => {
    const by = new Map<string, number>();
    for (let i = 0; i < grants; i++) {
      t.addCredit("a", 1);
      for (const g of t.schedule()) {
        const sweepId = g.shardId.split(".")[0]!;
        by.set(sweepId, (by.get(sweepId) ?? 0) + 1);
        t.complete("a", g.leaseId, g.shardId);
        t.resultConsumed(g.shardId);
      }
      now += stepMs;
    }
    return by;
  };
  return { t, sweep, serve, advance: (ms: number) => (now += ms) };
}

test("weights 3:1 get 3 grants of every 4 and 1 while both have shards", () => {
  const { sweep, serve } = setup();
  sweep("a", 1000, { priority: 0, weight: 3 });
  sweep("b", 1000, { priority: 0, weight: 1 });
  const by = serve(400);
  assert.equal(by.get("a"), 300);
  assert.equal(by.get("b"), 100);
});

test("a sweep that arrives late shares from then on, with no burst to catch up", () => {
  const { sweep, serve } = setup();
  sweep("a", 1000);
  assert.equal(serve(200).get("a"), 200, "alone, it gets every grant");
  sweep("b", 1000);
  const by = serve(100);
  assert.deepEqual([by.get("a"), by.get("b")], [50, 50], "equal weights: half each from the moment b arrives");
});

test("a higher priority sweep launched late gets the very next grant and every one while it has shards", () => {
  const { t, sweep, serve } = setup();
  sweep("low", 1000, { priority: 0, weight: 5 });
  serve(10);
  sweep("urgent", 20, { priority: 1, weight: 1 });
  t.addCredit("a", 1);
  assert.match(t.schedule()[0]!.shardId, /^urgent\./, "within one lease round");
  const by = serve(40);
  assert.equal(by.get("urgent"), 19, "the rest of its 20 shards first");
  assert.equal(by.get("low"), 21, "then the low-priority sweep has the agents again");
});

test("no sweep starves: a waiting sweep gains a priority level per aging period until it is served", () => {
  const { sweep, serve } = setup({ agingMs: 1000 });
  sweep("high", 10_000, { priority: 1, weight: 1 });
  sweep("low", 100, { priority: 0, weight: 1 });
  const early = serve(50, 10); // 0.5 s: less than one aging period
  assert.equal(early.get("low"), undefined, "a lower priority waits while a higher one has shards");
  const later = serve(200, 10); // 2 s more
  assert.ok((later.get("low") ?? 0) >= 1, `low was served after waiting an aging period: ${JSON.stringify([...later])}`);
  assert.ok((later.get("high") ?? 0) >= 190, "and high keeps nearly all");
});

test("the share in flight is each active sweep's part of the leases held", () => {
  const { t, sweep } = setup();
  sweep("a", 100, { priority: 0, weight: 3 });
  sweep("b", 100, { priority: 0, weight: 1 });
  assert.equal(t.leaseShare("a"), 0, "nothing in flight");
  t.addCredit("a", 8);
  assert.equal(t.schedule().length, 8);
  assert.equal(t.leaseShare("a"), 0.75);
  assert.equal(t.leaseShare("b"), 0.25);
  assert.deepEqual(t.shareOf("a"), { priority: 0, weight: 3 });
  t.cancelSweep("b");
  assert.equal(t.leaseShare("a"), 1, "a cancelled sweep's leases are revoked and leave the share");
});

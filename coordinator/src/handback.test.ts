import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { goldenSpec, GOLDEN_DIR, startHarness, type Harness } from "@factsweep/testing";
import { FakeAgents, until } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";
import { LeaseTable } from "./lease-table.js";

let h: Harness<Coordinator, CoordinatorOptions> | undefined;
const fleet = new FakeAgents();
afterEach(async () => {
  await fleet.killAll();
  await h?.close();
  h = undefined;
});

test("a lease handed back (drain, shutdown) costs no attempt and no backoff; a failure still does", () => {
  let now = 1_000_000;
  let n = 0;
  const t = new LeaseTable({ clock: () => now, leaseTtlMs: 1000, backoffBaseMs: 100, newLeaseId: () => `L${++n}` });
  t.setSweep("s1", true, 1);
  t.restore(LeaseTable.pending("s1.0.0", "s1", "s1/0", 4));
  t.connectAgent("a", [], 4);
  t.connectAgent("b", [], 4);
  t.addCredit("a", 1);
  const [g] = t.schedule();
  assert.equal(t.handBack("b", g!.leaseId, "s1.0.0", "draining").ignored, 1, "only the lease holder hands it back");
  const ch = t.handBack("a", g!.leaseId, "s1.0.0", "draining");
  assert.equal(ch.retries + ch.newlyFailed, 0);
  const e = t.get("s1.0.0")!;
  assert.deepEqual([e.state, e.attempts, e.notBeforeMs], ["pending", 0, 0]);
  assert.match(e.lastError, /handed back by agent a: draining \(not counted/);
  t.drainAgent("a");
  t.addCredit("b", 1);
  const [g2] = t.schedule();
  assert.deepEqual([g2?.agentId, g2?.attempt], ["b", 1], "re-leased at once to another agent, as its first attempt");
  // A failure of the last allowed attempt still fails the shard (max_attempts 1).
  assert.equal(t.fail("b", g2!.leaseId, "s1.0.0", "boom", true).newlyFailed, 1);
  now += 1;
});

test("with max_attempts 1, shards handed back by a draining agent are run by another and the sweep completes with no retry counted", async () => {
  h = await startHarness(Coordinator.start);
  // An agent that holds its leases and hands them back, as a draining node agent does.
  const leaver = await fleet.start(h, { agentId: "leaver", hold: true, slots: 4, workers: 1 });
  const info = await h.coord.launch({ spec: goldenSpec({ prompts: 1, shardCells: 8, maxAttempts: 1 }), sweepId: "handback", specDir: GOLDEN_DIR });
  const shards = info.counts!.shardsTotal;
  await until(() => leaver.heldLeases().length === Math.min(4, shards), "the leaver holds leases");
  h.coord.drainAgent("leaver", "test drain");
  for (const l of leaver.heldLeases()) {
    leaver.sendRaw({
      $case: "failed",
      failed: { leaseId: l.leaseId, shardId: l.shard!.shardId, error: "agent leaver draining", retryable: true, handedBack: true },
    });
  }
  await fleet.start(h, { agentId: "worker", slots: 2 });
  await until(() => h!.coord.get("handback").state !== "running", "the sweep to end");
  const end = h.coord.get("handback");
  assert.equal(end.state, "done", JSON.stringify(end.failedShards));
  assert.equal(end.counts!.shardsDone, shards);
  assert.equal(end.counts!.retries, 0, "a hand-back is no attempt");
});

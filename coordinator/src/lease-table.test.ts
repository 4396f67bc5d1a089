import { test } from "node:test";
import assert from "node:assert/strict";
import { LeaseTable } from "./lease-table.js";
import { CREDIT_PER_WORKER, MAX_WORKERS_COUNTED } from "./agent-pool.js";

/** A table over a hand-driven clock, with predictable lease ids. */
function setup(opts: { maxAttempts?: number; ttl?: number } = {}) {
  let now = 1_000_000;
  let n = 0;
  const t = new LeaseTable({ clock: () => now, leaseTtlMs: opts.ttl ?? 1000, backoffBaseMs: 100, backoffMaxMs: 1000, newLeaseId: () => `L${++n}` });
  t.setSweep("s1", true, opts.maxAttempts ?? 3);
  return { t, advance: (ms: number) => (now += ms) };
}

test("a lease not renewed within its TTL expires and the shard is re-leased after the backoff", () => {
  const { t, advance } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "s1/0", 4));
  t.connectAgent("a");
  t.addCredit("a", 1);
  const [g] = t.schedule();
  assert.equal(g?.shardId, "s1.0.0");
  advance(999);
  assert.equal(t.expire().expirations, 0, "still within TTL");
  advance(1);
  const ch = t.expire();
  assert.equal(ch.expirations, 1);
  assert.equal(ch.retries, 1);
  assert.equal(t.get("s1.0.0")?.state, "pending");
  t.addCredit("a", 1);
  assert.deepEqual(t.schedule(), [], "backoff of 100 ms not over yet");
  advance(100);
  const [g2] = t.schedule();
  assert.equal(g2?.attempt, 2);
  assert.notEqual(g2?.leaseId, g?.leaseId);
});

test("heartbeats renew only the leases the agent holds", () => {
  const { t, advance } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "s1/0", 4));
  t.connectAgent("a");
  t.connectAgent("b");
  t.addCredit("a", 1);
  const [g] = t.schedule();
  advance(800);
  assert.equal(t.renew("b", [g!.leaseId]), 0, "another agent cannot renew it");
  assert.equal(t.renew("a", [g!.leaseId]), 1);
  advance(800);
  assert.equal(t.expire().expirations, 0);
  advance(201);
  assert.equal(t.expire().expirations, 1);
});

test("backoff doubles per attempt up to its cap", () => {
  const { t } = setup();
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((a) => t.backoffMs(a)),
    [100, 200, 400, 800, 1000, 1000],
  );
});

test("a shard whose leases keep expiring fails after max_attempts with its last error, and resume re-queues it", () => {
  const { t, advance } = setup({ maxAttempts: 2 });
  t.restore(LeaseTable.pending("s1.0.0", "s1", "s1/0", 4));
  t.connectAgent("a");
  let failed = 0;
  for (let i = 0; i < 2; i++) {
    t.addCredit("a", 1);
    assert.equal(t.schedule().length, 1);
    advance(1000);
    failed += t.expire().newlyFailed;
    advance(1000);
  }
  assert.equal(failed, 1);
  const s = t.get("s1.0.0")!;
  assert.equal(s.state, "failed");
  assert.match(s.lastError, /expired.*gave up after 2 attempt/);
  t.addCredit("a", 1);
  assert.equal(t.schedule().length, 0, "a failed shard is not leased again");
  assert.deepEqual(t.counts("s1").failedShards, ["s1.0.0"]);
  t.resumeSweep("s1");
  assert.equal(t.schedule()[0]?.attempt, 1);
});

test("a non-retryable failure fails the shard at once; a retryable one re-queues it", () => {
  const { t } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "s1/0", 4));
  t.restore(LeaseTable.pending("s1.1.0", "s1", "s1/1", 4));
  t.connectAgent("a");
  t.addCredit("a", 2);
  const [g0, g1] = t.schedule();
  const c0 = t.fail("a", g0!.leaseId, g0!.shardId, "prompt too long", false);
  assert.equal(c0.newlyFailed, 1);
  assert.equal(t.get("s1.0.0")?.lastError, "prompt too long");
  const c1 = t.fail("a", g1!.leaseId, g1!.shardId, "worker died", true);
  assert.equal(c1.retries, 1);
  assert.equal(t.get("s1.1.0")?.state, "pending");
});

test("a shard goes to the agent that holds its prompt's cached runs", () => {
  const { t } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.restore(LeaseTable.pending("s1.1.0", "s1", "p1", 4));
  t.connectAgent("a", ["p1"]);
  t.connectAgent("b", ["p0"]);
  t.addCredit("a", 1);
  t.addCredit("b", 1);
  const grants = Object.fromEntries(t.schedule().map((g) => [g.shardId, g.agentId]));
  assert.deepEqual(grants, { "s1.0.0": "b", "s1.1.0": "a" });
});

test("the second shard of a prompt follows the first to the same agent; other work is spread by load", () => {
  const { t } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.restore(LeaseTable.pending("s1.0.1", "s1", "p0", 4));
  t.restore(LeaseTable.pending("s1.1.0", "s1", "p1", 4));
  t.connectAgent("a");
  t.connectAgent("b");
  t.addCredit("a", 2);
  t.addCredit("b", 2);
  const grants = Object.fromEntries(t.schedule().map((g) => [g.shardId, g.agentId]));
  assert.equal(grants["s1.0.0"], grants["s1.0.1"]);
  assert.notEqual(grants["s1.1.0"], grants["s1.0.0"]);
});

test("a disconnected agent's leases are re-queued and its credit is gone", () => {
  const { t, advance } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.connectAgent("b");
  t.addCredit("a", 5);
  t.schedule();
  const ch = t.disconnectAgent("a");
  assert.equal(ch.changed.length, 1);
  assert.equal(t.get("s1.0.0")?.state, "pending");
  advance(100);
  t.addCredit("b", 1);
  assert.equal(t.schedule()[0]?.agentId, "b");
});

test("a shard counts as done only once its result is aggregated, and a late second holder is revoked", () => {
  const { t, advance } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.connectAgent("b");
  t.addCredit("a", 1);
  const [g] = t.schedule();
  advance(1000);
  t.expire();
  advance(100);
  t.addCredit("b", 1);
  const [g2] = t.schedule();
  assert.equal(g2?.agentId, "b");
  // agent a finished after all: its stale completion changes nothing, its result arrives
  assert.equal(t.complete("a", g!.leaseId, "s1.0.0").changed.length, 0);
  const ch = t.resultConsumed("s1.0.0");
  assert.deepEqual(
    ch.revoked.map((r) => r.agentId),
    ["b"],
  );
  assert.equal(t.counts("s1").done, 1);
  assert.equal(t.counts("s1").doneCells, 4);
  assert.equal(t.inFlight(), 0);
});

test("a shard reported done waits for its result and is not re-leased within the uncounted timeout", () => {
  const { t, advance } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.addCredit("a", 2);
  const [g] = t.schedule();
  t.complete("a", g!.leaseId, "s1.0.0");
  assert.equal(t.counts("s1").done, 0, "not done until aggregated");
  advance(2_900); // under 3 lease TTLs
  assert.equal(t.expire().retries, 0);
  assert.equal(t.schedule().length, 0);
  t.resultConsumed("s1.0.0");
  assert.equal(t.counts("s1").done, 1);
  advance(60_000);
  assert.equal(t.expire().uncounted, 0, "a counted shard is never re-leased");
});

test("a shard reported done whose result is never counted is re-leased after the uncounted timeout (3 lease TTLs)", () => {
  const { t, advance } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.addCredit("a", 2);
  const [g] = t.schedule();
  t.complete("a", g!.leaseId, "s1.0.0");
  advance(3_000);
  const ch = t.expire();
  assert.equal(ch.uncounted, 1);
  assert.equal(ch.retries, 1);
  assert.equal(t.get("s1.0.0")?.state, "pending");
  assert.match(t.get("s1.0.0")?.lastError ?? "", /reported the shard done but no valid result/);
  advance(1_000);
  const [g2] = t.schedule();
  assert.equal(g2?.attempt, 2);
});

test("resume re-queues shards reported done whose result was never counted, and a restored one gets a fresh timeout", () => {
  const { t, advance } = setup({ maxAttempts: 1 });
  const e = { ...LeaseTable.pending("s1.0.0", "s1", "p0", 4), state: "done" as const, attempts: 1, agentId: "a", doneMs: 0 };
  t.restore(e);
  advance(2_000);
  assert.equal(t.expire().uncounted, 0, "restored: the timeout starts at the restart");
  assert.equal(t.resumeSweep("s1").changed.length, 1);
  assert.equal(t.get("s1.0.0")?.state, "pending");
  assert.equal(t.get("s1.0.0")?.attempts, 0);
  t.connectAgent("b");
  t.addCredit("b", 1);
  assert.equal(t.schedule()[0]?.agentId, "b");
});

test("done or failed for a lease the agent does not hold is ignored and counted", () => {
  const { t } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.connectAgent("x");
  t.addCredit("a", 1);
  const [g] = t.schedule();
  assert.equal(t.complete("x", g!.leaseId, "s1.0.0").ignored, 1);
  assert.equal(t.fail("x", g!.leaseId, "s1.0.0", "boom", false).ignored, 1);
  assert.equal(t.get("s1.0.0")?.state, "leased", "still a's");
  assert.equal(t.complete("a", g!.leaseId, "s1.0.0").ignored, 0);
  assert.equal(t.get("s1.0.0")?.state, "done");
});

test("credit is capped at the agent's workers × CREDIT_PER_WORKER, leases held included", () => {
  const { t } = setup();
  for (let i = 0; i < 20; i++) t.restore(LeaseTable.pending(`s1.${i}.0`, "s1", `p${i}`, 4));
  t.connectAgent("a", [], 2);
  assert.equal(t.addCredit("a", 2 ** 32 - 1), 2 ** 32 - 1 - 2 * CREDIT_PER_WORKER);
  assert.equal(t.schedule().length, 2 * CREDIT_PER_WORKER);
  assert.equal(t.addCredit("a", 5), 5, "all slots are held as leases");
  t.connectAgent("b", [], 100_000);
  t.addCredit("b", 2 ** 32 - 1);
  assert.equal(t.agentList().find((x) => x.agentId === "b")?.credit, MAX_WORKERS_COUNTED * CREDIT_PER_WORKER);
});

test("an agent's disconnects cost a shard one attempt at most; another agent's cost one more", () => {
  const { t, advance } = setup({ maxAttempts: 2 });
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  for (let i = 0; i < 5; i++) {
    t.connectAgent("a");
    t.addCredit("a", 1);
    assert.equal(t.schedule().length, 1, `round ${i}: re-leased`);
    t.disconnectAgent("a");
    advance(2_000);
  }
  assert.equal(t.get("s1.0.0")?.state, "pending", "five reconnects of one agent did not fail it");
  assert.equal(t.get("s1.0.0")?.attempts, 1);
  t.connectAgent("b");
  t.addCredit("b", 1);
  t.schedule();
  assert.equal(t.disconnectAgent("b").newlyFailed, 1, "a second agent's disconnect spends the last attempt");
});

test("a result is accepted only under the shard's current lease, from its holder", () => {
  const { t, advance } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.restore(LeaseTable.pending("s1.0.1", "s1", "p0", 4));
  t.connectAgent("a");
  t.connectAgent("b");
  t.addCredit("a", 2);
  const [g0, g1] = t.schedule();
  assert.equal(g0?.leaseId, "L1");
  assert.equal(t.holdsLease("s1.0.0", "a", "L1"), true);
  assert.equal(t.holdsLease("s1.0.0", "b", "L1"), false, "another agent quoting the lease");
  assert.equal(t.holdsLease("s1.0.0", "a", g1!.leaseId), false, "the agent's lease of another shard");
  assert.equal(t.holdsLease("s1.0.0", "a", ""), false, "no lease id");
  assert.equal(t.holdsLease("s1.9.0", "a", "L1"), false, "a shard never planned");
  t.complete("a", "L2", "s1.0.1");
  assert.equal(t.holdsLease("s1.0.1", "a", "L2"), true, "reported done, result not counted yet: still its lease");
  t.resultConsumed("s1.0.1");
  assert.equal(t.holdsLease("s1.0.1", "a", "L2"), false, "counted: no lease any more (a repeat is a duplicate)");
  advance(1_000);
  t.expire();
  assert.equal(t.holdsLease("s1.0.0", "a", "L1"), false, "an expired lease");
  advance(200);
  t.addCredit("b", 1);
  const [g2] = t.schedule();
  assert.equal(g2?.agentId, "b");
  assert.equal(t.holdsLease("s1.0.0", "b", g2!.leaseId), true);
  assert.equal(t.holdsLease("s1.0.0", "a", "L1"), false, "a late result of the expired lease is refused; b publishes it");
});

test("complete checks the holder: done from another agent or under another lease is ignored", () => {
  const { t } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.connectAgent("b");
  t.addCredit("a", 1);
  const [g] = t.schedule();
  assert.equal(t.complete("b", g!.leaseId, "s1.0.0").ignored, 1);
  assert.equal(t.complete("a", "L-other", "s1.0.0").ignored, 1);
  assert.equal(t.get("s1.0.0")?.state, "leased");
  assert.equal(t.complete("a", g!.leaseId, "s1.0.0").ignored, 0);
  assert.equal(t.get("s1.0.0")?.state, "done");
});

test("a lease held past the maximum lease time is revoked and re-queued, heartbeats or not", () => {
  let now = 1_000_000;
  let n = 0;
  const t = new LeaseTable({ clock: () => now, leaseTtlMs: 1000, backoffBaseMs: 100, maxLeaseMs: 5_000, newLeaseId: () => `L${++n}` });
  t.setSweep("s1", true, 3);
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.addCredit("a", 2);
  t.schedule();
  for (let i = 0; i < 4; i++) {
    now += 900;
    assert.equal(t.renew("a", ["L1"]), 1);
    const ch = t.expire();
    assert.equal(ch.overdue + ch.expirations, 0, "heartbeats keep it within the maximum");
  }
  now += 1_400; // 5,000 ms after the grant, renewed 800 ms ago
  t.renew("a", ["L1"]);
  const ch = t.expire();
  assert.equal(ch.overdue, 1);
  assert.deepEqual(
    ch.revoked.map((r) => [r.agentId, r.leaseId]),
    [["a", "L1"]],
    "the holder is told to drop it",
  );
  assert.equal(t.get("s1.0.0")?.state, "pending");
  assert.match(t.get("s1.0.0")!.lastError, /maximum lease time \(5000 ms, --max-lease-ms\)/);
  assert.equal(t.holdsLease("s1.0.0", "a", "L1"), false);
  now += 100;
  const [g] = t.schedule();
  assert.equal(g?.attempt, 2, "the revocation spent an attempt");
  now += 4_999;
  assert.equal(t.expire().overdue, 0, "the new lease has its own maximum");
});

test("cancel revokes leases and stops grants without spending attempts", () => {
  const { t } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.addCredit("a", 2);
  t.schedule();
  const ch = t.cancelSweep("s1");
  assert.equal(ch.revoked.length, 1);
  assert.equal(t.get("s1.0.0")?.attempts, 0);
  assert.equal(t.schedule().length, 0);
});

test("a draining agent gets no new leases", () => {
  const { t } = setup();
  t.restore(LeaseTable.pending("s1.0.0", "s1", "p0", 4));
  t.connectAgent("a");
  t.addCredit("a", 2);
  t.drainAgent("a");
  assert.equal(t.schedule().length, 0);
});

test("a lease restored after a coordinator restart gets a fresh TTL for its agent to reconnect", () => {
  const { t, advance } = setup();
  const e = { ...LeaseTable.pending("s1.0.0", "s1", "p0", 4), state: "leased" as const, attempts: 1, leaseId: "old", agentId: "a", leaseExpiresMs: 0 };
  t.restore(e);
  t.connectAgent("a");
  advance(900);
  assert.equal(t.renew("a", ["old"]), 1, "the reconnected agent keeps its lease");
  advance(900);
  assert.equal(t.expire().expirations, 0);
  advance(200);
  assert.equal(t.expire().expirations, 1);
});

test("hand-out is proportional to the grants: 2,048 grants to 128 agents (with cache affinity) in well under a second, evenly spread", (tc) => {
  const { t } = setup();
  const shards = 4096;
  for (let i = 0; i < shards; i++) t.restore(LeaseTable.pending(`s1.${i}.0`, "s1", `s1/${i}`, 4));
  for (let a = 0; a < 128; a++) {
    // Each agent caches as many prompts as it has credit (and a few more), so affinity decides every grant.
    t.connectAgent(
      `a${a}`,
      Array.from({ length: 4 * CREDIT_PER_WORKER }, (_, k) => `s1/${a * 4 * CREDIT_PER_WORKER + k}`),
      4,
    );
    t.addCredit(`a${a}`, 4 * CREDIT_PER_WORKER);
  }
  const t0 = process.hrtime.bigint();
  const grants = t.schedule();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.equal(grants.length, 128 * 4 * CREDIT_PER_WORKER);
  const per = new Map<string, number>();
  for (const g of grants) per.set(g.agentId, (per.get(g.agentId) ?? 0) + 1);
  assert.deepEqual(new Set(per.values()), new Set([4 * CREDIT_PER_WORKER]), "every agent filled to its credit");
  const cached = grants.filter((g) => {
    const i = Number(g.shardId.split(".")[1]);
    return Math.floor(i / (4 * CREDIT_PER_WORKER)) === Number(g.agentId.slice(1));
  }).length;
  assert.equal(cached, grants.length, "every grant went to the agent caching its prompt");
  tc.diagnostic(`schedule(): ${grants.length} grants in ${ms.toFixed(1)} ms`);
  assert.ok(ms < 500, `schedule() took ${ms.toFixed(0)} ms for ${grants.length} grants`);
  // And a second round, after every agent finished one shard, costs its grants, not the queue's size.
  for (let a = 0; a < 128; a++) {
    const [l] = t.leasesOf(`a${a}`);
    t.complete(`a${a}`, l!.leaseId, l!.shardId);
    t.addCredit(`a${a}`, 1);
  }
  const t1 = process.hrtime.bigint();
  assert.equal(t.schedule().length, 128);
  assert.ok(Number(process.hrtime.bigint() - t1) / 1e6 < 100);
});

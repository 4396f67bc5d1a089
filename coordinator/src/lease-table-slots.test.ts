import { test } from "node:test";
import assert from "node:assert/strict";
import { LeaseTable, type Changes, type ShardEntry } from "./lease-table.js";
import { parseShardId } from "./shard-slots.js";

// Plan-form ids (`<sweep>.<prompt>.<part>`) are held as slots; ids of any other form as entry
// objects, the way every shard was held before. The same seeded run on both must decide the same.
const plan = (sw: string, prompt: number, part: number) => `${sw}.${prompt}.${part}`;
const other = (sw: string, prompt: number, part: number) => `${sw}.p${prompt}.${part}`;
/** A reference id back to its plan form. */
const toPlan = (id: string) => id.replace(/\.p(\d+)\./, ".$1.");

function table(clock: () => number) {
  let n = 0;
  return new LeaseTable({ clock, leaseTtlMs: 1000, backoffBaseMs: 10, backoffMaxMs: 50, newLeaseId: () => `L${++n}`, uncountedTimeoutMs: 2500 });
}

/** What a caller can see of an entry, in plan-form ids; a counted shard's last lease and hold are not kept by a slot. */
function seen(e: ShardEntry | undefined) {
  if (!e) return undefined;
  const counted = e.state === "done" && e.resultConsumed;
  return {
    shardId: toPlan(e.shardId),
    sweepId: e.sweepId,
    promptKey: e.promptKey,
    cells: e.cells,
    state: e.state,
    attempts: e.attempts,
    resultConsumed: e.resultConsumed,
    notBeforeMs: counted ? 0 : e.notBeforeMs, // nor its hold or backoff, which no longer matter
    lastError: e.lastError.replace(/\.p(\d+)\./g, ".$1."),
    leaseId: counted ? "" : e.leaseId,
    agentId: counted ? "" : e.agentId,
  };
}

/** A table operation's changes (in any order: a sweep's entries are walked in the order they were made). */
const changes = (c: Changes) => ({
  ...c,
  changed: c.changed.map((e) => seen(e)!).sort((x, y) => (x.shardId < y.shardId ? -1 : x.shardId > y.shardId ? 1 : 0)),
  revoked: c.revoked.map((r) => ({ ...r, shardId: toPlan(r.shardId) })).sort((x, y) => (x.shardId < y.shardId ? -1 : x.shardId > y.shardId ? 1 : 0)),
});

test("plan shards held as slots decide as entry objects do: a seeded random run against a table of entries only", () => {
  let now = 1_000_000;
  let seed = 987654;
  const rnd = (k: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; // exact 32-bit arithmetic (a float product loses the low bits)
    return (seed >>> 8) % k; // the low bits of this generator repeat with a short period
  };
  const slots = table(() => now);
  const ref = table(() => now);
  const sweeps = ["s1", "s2"];
  const both = <T>(f: (t: LeaseTable, id: (sw: string, p: number, q: number) => string) => T): [T, T] => [f(slots, plan), f(ref, other)];
  const same = <T>(what: string, f: (t: LeaseTable, id: (sw: string, p: number, q: number) => string) => T, map: (x: T) => unknown = (x) => x) => {
    const [a, b] = both(f);
    assert.deepEqual(map(a), map(b), what);
    return a;
  };
  both((t) => t.setSweep("s1", true, 3));
  both((t) => t.setSweep("s2", true, 2, { priority: 0, weight: 2 }));
  // Prompts of 1-3 parts; more are added during the run (a launch arriving in batches).
  let prompts = 0;
  const ids: [string, number, number][] = [];
  const addPrompts = (k: number) => {
    for (let i = 0; i < k; i++, prompts++) {
      const sw = sweeps[prompts % 2]!;
      const parts = 1 + (prompts % 3);
      for (let q = 0; q < parts; q++) {
        ids.push([sw, prompts, q]);
        both((t, id) => t.restore(LeaseTable.pending(id(sw, prompts, q), sw, `${sw}/${prompts}`, 1 + ((prompts + q) % 4))));
      }
    }
  };
  addPrompts(20);
  const agents = ["a", "b", "c", "d"];
  for (const a of agents) both((t) => t.connectAgent(a, [], 2));
  const check = (what: string, all = true) => {
    for (const sw of sweeps) {
      same(
        `${what}: counts of ${sw}`,
        (t) => t.counts(sw),
        (c) => ({ ...c, failedShards: c.failedShards.map(toPlan).sort() }),
      );
      same(
        `${what}: shards of ${sw}`,
        (t) => t.shardsOf(sw),
        (l) => l.map(seen).sort((x, y) => (x!.shardId < y!.shardId ? -1 : 1)),
      );
    }
    same(`${what}: queue depth`, (t) => t.queueDepth());
    for (const [sw, p, q] of all ? ids : ids.slice(-16)) same(`${what}: get ${plan(sw, p, q)}`, (t, id) => t.get(id(sw, p, q)), seen);
  };
  check("start");
  // Mostly recent shards: those are the fresh ones.
  const pick = () => ids[rnd(2) === 0 ? ids.length - 1 - rnd(Math.min(ids.length, 12)) : rnd(ids.length)]!;
  let freshHeld = 0;
  for (let step = 0; step < 2500; step++) {
    const op = rnd(16);
    const a = agents[rnd(agents.length)]!;
    const held = slots.leasesOf(a);
    const s = held.length > 0 ? parseShardId(held[rnd(held.length)]!.shardId) : undefined;
    const lease = (t: LeaseTable, id: string) => t.get(id)?.leaseId ?? "";
    const k = 1 + rnd(3); // drawn once for both tables
    const sw2 = sweeps[rnd(2)]!;
    if (op <= 1) same("credit", (t) => t.addCredit(a, k));
    else if (op === 2)
      same(
        "schedule",
        (t) => t.schedule(),
        (g) => g.map((x) => ({ ...x, shardId: toPlan(x.shardId) })),
      );
    else if (op === 3 && s) same("done", (t, id) => t.complete(a, lease(t, id(s.sweepId, s.prompt, s.part)), id(s.sweepId, s.prompt, s.part)), changes);
    else if (op === 4 && s) {
      const retryable = rnd(4) > 0;
      same("failed", (t, id) => t.fail(a, lease(t, id(s.sweepId, s.prompt, s.part)), id(s.sweepId, s.prompt, s.part), "boom", retryable), changes);
    } else if (op === 5 && s)
      same("hand back", (t, id) => t.handBack(a, lease(t, id(s.sweepId, s.prompt, s.part)), id(s.sweepId, s.prompt, s.part), "drain"), changes);
    else if (op === 6 && s) {
      // Its result counted from its open lease before the done (the usual order), then the done.
      same("result from", (t, id) => t.resultFrom(id(s.sweepId, s.prompt, s.part), lease(t, id(s.sweepId, s.prompt, s.part))));
      const leases = both((t, id) => lease(t, id(s.sweepId, s.prompt, s.part)));
      same("counted", (t, id) => t.resultConsumed(id(s.sweepId, s.prompt, s.part)), changes);
      same("its done", (t, id) => t.complete(a, leases[t === slots ? 0 : 1], id(s.sweepId, s.prompt, s.part)), changes);
    } else if (op === 7) {
      const [sw, p, q] = pick();
      same("counted (any shard)", (t, id) => t.resultConsumed(id(sw, p, q)), changes);
    } else if (op === 8) {
      const [sw, p, q] = pick();
      const e = slots.get(plan(sw, p, q));
      if (e?.state === "pending" && e.attempts === 0 && e.notBeforeMs === 0 && e.lastError === "") freshHeld++;
      same("hold", (t, id) => t.hold([id(sw, p, q)]), changes);
    } else if (op === 9) {
      const [sw, p, q] = pick();
      const error = rnd(3) === 0 ? "no covariance" : undefined;
      same("release", (t, id) => t.release([id(sw, p, q)], error), changes);
    } else if (op === 10) {
      same("disconnect", (t) => t.disconnectAgent(a), changes);
      both((t) => t.connectAgent(a, [], 2));
    } else if (op === 11) {
      now += rnd(1500);
      same("expire", (t) => t.expire(), changes);
    } else if (op === 12 && rnd(4) === 0) same("cancel", (t) => t.cancelSweep(sw2), changes);
    else if (op === 13) same("resume", (t) => t.resumeSweep(sw2), changes);
    else if (op === 14 && rnd(2) === 0) addPrompts(2 + rnd(4));
    else if (op === 15 && rnd(4) === 0) {
      // A record reloaded over the shard (as a restart's restore does).
      const [sw, p, q] = pick();
      const st = rnd(3);
      both((t, id) => {
        const e = LeaseTable.pending(id(sw, p, q), sw, `${sw}/${p}`, 1 + ((p + q) % 4));
        if (st === 1) Object.assign(e, { state: "done", resultConsumed: true, attempts: 1 });
        if (st === 2) Object.assign(e, { attempts: 1, notBeforeMs: now + 20, lastError: "reloaded" });
        t.restore(e);
      });
    }
    check(`step ${step} (op ${op})`, step % 50 === 0);
  }
  assert.ok(freshHeld >= 20, `the run held ${freshHeld} fresh shards (their entries keep the slot's place in the queue)`);
  both((t) => t.forgetSweep("s2"));
  check("forget");
  assert.equal(slots.counts("s2").total, 0);
});

test("a fresh shard is granted in plan order, once, and only an entry made at its grant is reported; its id keeps its exact string", () => {
  let now = 0;
  const t = table(() => now);
  t.setSweep("s", true, 3);
  for (let p = 0; p < 3; p++) for (let q = 0; q < 2; q++) t.restore(LeaseTable.pending(`s.${p}.${q}`, "s", `s/${p}`, 1));
  t.restore(LeaseTable.pending("s.07.0", "s", "s/7", 1)); // not plan form: an entry of its own, not slot 7
  assert.equal(t.get("s.7.0"), undefined);
  assert.equal(t.get("s.07.0")?.shardId, "s.07.0");
  assert.equal(t.get("s.1.1")?.state, "pending");
  t.connectAgent("a", [], 8);
  t.addCredit("a", 8);
  const order = t.schedule().map((g) => g.shardId);
  assert.deepEqual(order, ["s.0.0", "s.0.1", "s.1.0", "s.1.1", "s.2.0", "s.2.1", "s.07.0"]);
  t.addCredit("a", 1);
  assert.deepEqual(t.schedule(), [], "nothing granted twice");
  assert.equal(t.counts("s").leased, 7);
});

test("a counted shard keeps its place in the counts when its entry goes, and a restore over it replaces it", () => {
  const t = table(() => 0);
  t.setSweep("s", true, 3);
  t.restore(LeaseTable.pending("s.0.0", "s", "s/0", 5));
  t.connectAgent("a", [], 1);
  t.addCredit("a", 1);
  const [g] = t.schedule();
  t.complete("a", g!.leaseId, "s.0.0");
  t.resultConsumed("s.0.0");
  assert.deepEqual({ done: t.counts("s").done, doneCells: t.counts("s").doneCells, total: t.counts("s").total }, { done: 1, doneCells: 5, total: 1 });
  assert.equal(t.get("s.0.0")?.state, "done");
  t.restore(LeaseTable.pending("s.0.0", "s", "s/0", 5)); // reloaded as pending
  assert.deepEqual({ done: t.counts("s").done, pending: t.counts("s").pending, total: t.counts("s").total }, { done: 0, pending: 1, total: 1 });
  t.addCredit("a", 1);
  assert.deepEqual(
    t.schedule().map((x) => x.shardId),
    ["s.0.0"],
  );
});

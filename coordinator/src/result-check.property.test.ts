// Issue 15 (fuzzing in CI, bounded in time): property tests of result validation. The content
// checks (result-check.ts) directly on generated shards, and the whole refusal path (ids, lease
// holder, content) through Sweeps over a planned golden sweep, with an in-memory store and no NATS.
// Fixed seed and run counts (deterministic in CI); a failure prints fast-check's seed and path.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { Registry } from "prom-client";
import { sweep } from "@factsweep/proto";
import { resultsSubject } from "@factsweep/shared";
import { goldenSpec, GOLDEN_DIR, sharedPath } from "@factsweep/testing";
import { checkResultContent, cellKey, MAX_RESULT_JSON_BYTES, REJECT_REASONS, type Rejection } from "./result-check.js";
import { LeaseTable } from "./lease-table.js";
import { Scheduler } from "./scheduler.js";
import { Sweeps } from "./sweeps.js";
import { CoordinatorMetrics } from "./metrics.js";
import type { StateStore } from "./state-store.js";

const SEED = 0x15c4;
const run = <T>(prop: fc.IProperty<T>, numRuns: number) => fc.assert(prop, { seed: SEED, numRuns, verbose: 1, endOnFailure: true });

const probability = fc.oneof(fc.double({ min: 0, max: 1, noNaN: true }), fc.constantFrom(0, 1, -0, Number.MIN_VALUE));
const finite = fc.double({ noNaN: true, noDefaultInfinity: true });
/** Values a probability must not take. */
const badProbability = fc.oneof(
  fc.constantFrom(NaN, Infinity, -Infinity, -Number.MIN_VALUE, 1 + Number.EPSILON, 42, -1),
  fc.double({ min: 1, minExcluded: true, noNaN: true }),
  fc.double({ max: 0, maxExcluded: true, noNaN: true }).filter((x) => !Object.is(x, -0)),
);

const cellArb = fc.record({
  site: fc.integer({ min: 0, max: 12 }),
  layer: fc.integer({ min: 0, max: 70 }),
  token: fc.integer({ min: 0, max: 40 }),
  window: fc.integer({ min: 1, max: 20 }),
});

/** A planned trace shard: distinct cells of one prompt. */
const plannedShard = fc
  .tuple(fc.uniqueArray(cellArb, { minLength: 1, maxLength: 40, selector: cellKey }), fc.nat({ max: 1000 }))
  .map(([cells, index]): sweep.Shard =>
    sweep.Shard.fromPartial({ sweepId: "sw", shardId: `sw.${index}.0`, kind: "trace", prompt: { index, promptKey: `sw/${index}` }, cells }),
  );

/** A result with exactly the planned cells in a shuffled order and valid values. */
const validResult = (shard: sweep.Shard) =>
  fc
    .tuple(
      fc.shuffledSubarray(shard.cells, { minLength: shard.cells.length, maxLength: shard.cells.length }),
      fc.array(fc.tuple(probability, finite), { minLength: shard.cells.length, maxLength: shard.cells.length }),
      probability,
      probability,
    )
    .map(([cells, values, pClean, pCorrupt]) =>
      sweep.ShardResult.fromPartial({
        sweepId: shard.sweepId,
        shardId: shard.shardId,
        promptIndex: shard.prompt!.index,
        agentId: "holder",
        attempt: 1,
        pClean,
        pCorrupt,
        cells: cells.map((cell, i) => ({ cell: { ...cell }, p: values[i]![0], logit: values[i]![1] })),
      }),
    );

type Mutant = { expect: Rejection["reason"]; r: sweep.ShardResult };

/** One content mutation of a valid result, with the reason it must be refused for. */
function contentMutation(shard: sweep.Shard, good: sweep.ShardResult): fc.Arbitrary<Mutant> {
  const n = good.cells.length;
  const at = fc.nat({ max: n - 1 });
  const withCells = (cells: sweep.ShardResult["cells"]) => ({ ...good, cells });
  const planned = new Set(shard.cells.map(cellKey));
  return fc.oneof(
    at.map((i): Mutant => ({ expect: "cells_mismatch", r: withCells(good.cells.filter((_, j) => j !== i)) })),
    fc
      .tuple(at, at)
      .map(([i, j]) => [i, n > 1 && i === j ? (j + 1) % n : j] as const)
      .filter(([i, j]) => i !== j) // a planned cell given twice in place of another (n > 1)
      .map(([i, j]): Mutant => ({ expect: "cells_mismatch", r: withCells(good.cells.map((c, k) => (k === j ? good.cells[i]! : c))) })),
    at.map((i): Mutant => ({ expect: "cells_mismatch", r: withCells([...good.cells, good.cells[i]!]) })),
    cellArb
      .filter((c) => !planned.has(cellKey(c)))
      .map((c): Mutant => ({ expect: "cells_mismatch", r: withCells([...good.cells, { cell: c, p: 0.5, logit: 0 }]) })),
    fc
      .tuple(
        at,
        cellArb.filter((c) => !planned.has(cellKey(c))),
      )
      .map(([i, c]): Mutant => ({ expect: "cells_mismatch", r: withCells(good.cells.map((x, j) => (j === i ? { ...x, cell: c } : x))) })),
    at.map((i): Mutant => ({ expect: "cells_mismatch", r: withCells(good.cells.map((x, j) => (j === i ? { ...x, cell: undefined } : x))) })),
    fc.tuple(at, badProbability).map(([i, p]): Mutant => ({ expect: "bad_value", r: withCells(good.cells.map((x, j) => (j === i ? { ...x, p } : x))) })),
    fc
      .tuple(at, fc.constantFrom(NaN, Infinity, -Infinity))
      .map(([i, logit]): Mutant => ({ expect: "bad_value", r: withCells(good.cells.map((x, j) => (j === i ? { ...x, logit } : x))) })),
    badProbability.map((pClean): Mutant => ({ expect: "bad_value", r: { ...good, pClean } })),
    badProbability.map((pCorrupt): Mutant => ({ expect: "bad_value", r: { ...good, pCorrupt } })),
    fc
      .integer({ min: -5, max: 2000 })
      .filter((i) => i !== good.promptIndex)
      .map((promptIndex): Mutant => ({ expect: "wrong_prompt", r: { ...good, promptIndex } })),
  );
}

test("a result with exactly the planned cells (any order) and valid values is accepted", () => {
  run(
    fc.property(
      plannedShard.chain((s) => validResult(s).map((r) => [s, r] as const)),
      ([shard, r]) => assert.equal(checkResultContent(shard, r), undefined),
    ),
    300,
  );
});

test("any single content mutation (cell dropped, duplicated, added, moved; p or logit not finite or out of [0, 1]; wrong prompt) is refused with its reason", () => {
  run(
    fc.property(
      plannedShard.chain((s) => validResult(s).chain((good) => contentMutation(s, good).map((m) => [s, m] as const))),
      ([shard, m]) => {
        const got = checkResultContent(shard, m.r);
        assert.ok(got, `accepted a mutant that should be ${m.expect}`);
        assert.equal(got.reason, m.expect, got.detail);
        assert.ok(got.detail.includes(shard.shardId), "the detail names the shard");
      },
    ),
    500,
  );
});

test("other kinds: result_json must be a JSON object of at most MAX_RESULT_JSON_BYTES, and carry no cells", () => {
  const shard = sweep.Shard.fromPartial({ sweepId: "sw", shardId: "sw.3.0", kind: "knockout", prompt: { index: 3 } });
  const base = sweep.ShardResult.fromPartial({ sweepId: "sw", shardId: "sw.3.0", promptIndex: 3, agentId: "a", attempt: 1, pClean: 0.5, pCorrupt: 0.25 });
  const object = fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 });
  run(
    fc.property(object, (o) => assert.equal(checkResultContent(shard, { ...base, resultJson: JSON.stringify(o) }), undefined)),
    200,
  );
  const notObject = fc.oneof(
    fc
      .jsonValue({ maxDepth: 2 })
      .filter((v) => v === null || typeof v !== "object" || Array.isArray(v))
      .map((v) => JSON.stringify(v)),
    fc.string({ maxLength: 30 }).filter((s) => {
      try {
        const v: unknown = JSON.parse(s);
        return v === null || typeof v !== "object" || Array.isArray(v);
      } catch {
        return true;
      }
    }),
  );
  run(
    fc.property(notObject, (s) => assert.equal(checkResultContent(shard, { ...base, resultJson: s })?.reason, "bad_result_json")),
    200,
  );
  run(
    fc.property(object, fc.array(fc.record({ cell: cellArb, p: probability, logit: finite }), { minLength: 1, maxLength: 3 }), (o, cells) =>
      assert.equal(checkResultContent(shard, { ...base, resultJson: JSON.stringify(o), cells })?.reason, "bad_result_json"),
    ),
    50,
  );
  // Oversized, counted in UTF-8 bytes: a padded object just over the cap (ASCII or multi-byte padding) is refused; at the cap it passes.
  run(
    fc.property(fc.constantFrom("a", "é", "€", "😀"), fc.integer({ min: 1, max: 9 }), (ch, over) => {
      const bytes = Buffer.byteLength(ch, "utf8");
      const fill = (total: number) => `{"x":"${ch.repeat(Math.floor((total - 8) / bytes))}${"a".repeat((total - 8) % bytes)}"}`;
      const at = fill(MAX_RESULT_JSON_BYTES);
      assert.equal(Buffer.byteLength(at, "utf8"), MAX_RESULT_JSON_BYTES);
      assert.equal(checkResultContent(shard, { ...base, resultJson: at }), undefined);
      const big = fill(MAX_RESULT_JSON_BYTES + over);
      const got = checkResultContent(shard, { ...base, resultJson: big });
      assert.equal(got?.reason, "bad_result_json");
      assert.match(got.detail, /bytes \(at most/);
    }),
    8,
  );
});

// ---- the whole refusal path (ids, lease holder, content) through Sweeps ------------------------

const noGolden = !sharedPath("golden/mamba-tiny") && "shared/golden is absent";

/** An in-memory StateStore: Sweeps and the Scheduler only write to it here. */
const memoryStore = () =>
  ({
    createSweep: async () => undefined,
    sweepExists: async () => false,
    saveSweep: () => undefined,
    saveShard: () => undefined,
    saveResult: async () => undefined,
    saveResults: async () => 0,
    loadResults: async () => [],
    loadAll: async () => ({ sweeps: [], shards: [] }),
    flush: async () => undefined,
    shardsDurable: async () => undefined,
  }) as unknown as StateStore;

let world: { sweeps: Sweeps; table: LeaseTable; scheduler: Scheduler; shards: sweep.Shard[] } | undefined;
/** The lease each planned shard was granted under, by shard id. */
const leaseOf = new Map<string, string>();

before(async () => {
  if (noGolden) return;
  const store = memoryStore();
  const table = new LeaseTable({
    leaseTtlMs: 3_600_000,
    newLeaseId: (() => {
      let i = 0;
      return () => `lease-${++i}`;
    })(),
  });
  const scheduler = new Scheduler({ store, table });
  const metrics = new CoordinatorMetrics(new Registry(), { shardsInFlight: () => 0, queueDepth: () => 0, agentsConnected: () => 0, sweeps: () => [] });
  const sweeps = new Sweeps({ store, table, scheduler, metrics, roots: [GOLDEN_DIR], isReady: () => true, publish: () => undefined, log: () => undefined });
  await sweeps.launch({ spec: goldenSpec({ prompts: 3, shardCells: 10 }), sweepId: "prop", specDir: GOLDEN_DIR } as never);
  await new Promise((r) => setImmediate(r)); // the scheduler's kick (no agent yet: no grant)
  table.connectAgent("holder");
  table.addCredit("holder", 1000);
  const grants = table.schedule();
  assert.ok(grants.length > 0 && grants.every((g) => g.agentId === "holder" && g.attempt === 1));
  const shards = grants.map((g) => scheduler.plannedShard(g.shardId)!);
  for (const g of grants) leaseOf.set(g.shardId, g.leaseId);
  world = { sweeps, table, scheduler, shards };
});

const goodFor = (shard: sweep.Shard): sweep.ShardResult =>
  sweep.ShardResult.fromPartial({
    sweepId: shard.sweepId,
    shardId: shard.shardId,
    promptIndex: shard.prompt!.index,
    agentId: "holder",
    attempt: 1,
    leaseId: leaseOf.get(shard.shardId),
    pClean: 0.9,
    pCorrupt: 0.1,
    cells: shard.cells.map((cell, i) => ({ cell, p: (i % 10) / 10, logit: i })),
  });

test(
  "through Sweeps: wrong ids, subject, agent or lease id, and every content mutation are refused with a reason and nothing is aggregated",
  { skip: noGolden },
  () => {
    const { sweeps, table, shards } = world!;
    const idChars = fc.stringOf(fc.constantFrom("a", "Z", "0", "-", "_", ".", " ", "*", ">", "/", "é", "\u0000"), { maxLength: 12 });
    const mutant = fc.nat({ max: shards.length - 1 }).chain((si) => {
      const shard = shards[si]!;
      const good = goodFor(shard);
      return fc
        .oneof(
          { weight: 3, arbitrary: contentMutation(shard, good) },
          fc
            .string({ maxLength: 10 })
            .filter((a) => a !== "holder")
            .map((agentId): Mutant => ({ expect: "not_lease_holder", r: { ...good, agentId } })),
          fc
            .oneof(fc.string({ maxLength: 10 }), fc.constantFrom(...leaseOf.values()))
            .filter((l) => l !== good.leaseId)
            .map((leaseId): Mutant => ({ expect: "not_lease_holder", r: { ...good, leaseId } })),
          fc.nat({ max: 5 }).map((part): Mutant => ({ expect: "unplanned_shard", r: { ...good, shardId: `prop.${shard.prompt!.index}.${part + 50}` } })),
          fc.constantFrom("other", "prop2", "x-1").map((sweepId): Mutant => ({ expect: "unknown_sweep", r: { ...good, sweepId, shardId: `${sweepId}.0.0` } })),
          idChars
            .filter((id) => id !== good.shardId)
            .map((shardId): Mutant => ({ expect: /^prop\.[A-Za-z0-9_-]/.test(shardId) ? "unplanned_shard" : "invalid_id", r: { ...good, shardId } })),
          idChars.filter((id) => id !== "prop").map((sweepId): Mutant => ({ expect: "invalid_id", r: { ...good, sweepId } })),
        )
        .map((m) => [shard, m] as const);
    });
    run(
      fc.property(mutant, ([, m]) => {
        const got = sweeps.add(m.r, resultsSubject(m.r.sweepId));
        assert.notEqual(got, "added", `a ${m.expect} mutant was aggregated`);
        assert.notEqual(got, "duplicate");
        const rej = got as Rejection;
        assert.ok(REJECT_REASONS.includes(rej.reason));
        if (m.expect === "unknown_sweep" || m.expect === "invalid_id" || m.expect === "unplanned_shard")
          assert.ok(["invalid_id", "unknown_sweep", "unplanned_shard"].includes(rej.reason), `${m.expect}: got ${rej.reason} (${rej.detail})`);
        else assert.equal(rej.reason, m.expect, rej.detail);
      }),
      400,
    );
    // A result on another sweep's subject is refused before anything else.
    const good0 = goodFor(shards[0]!);
    assert.equal((sweeps.add(good0, resultsSubject("other")) as Rejection).reason, "subject_mismatch");
    assert.equal(table.counts("prop").doneCells, 0);
    // And the valid results are still accepted afterwards, each once.
    for (const s of shards) assert.equal(sweeps.add(goodFor(s), resultsSubject("prop")), "added");
    for (const s of shards) assert.equal(sweeps.add(goodFor(s), resultsSubject("prop")), "duplicate");
  },
);

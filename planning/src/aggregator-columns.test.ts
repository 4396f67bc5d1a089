// The aggregate's columnar shard store (shard-store.ts) and its in-place read of stored results
// (addEncoded, shard-result-wire.ts): the same aggregate, rows and state as decode + add, for any
// result; ids keyed exactly as strings; a state of the format before (version 1) still loads.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { engine, sweep } from "@factsweep/proto";
import { ResultAggregator } from "./aggregator.js";
import { WireShardResult } from "./shard-result-wire.js";

const prompts = [
  { index: 0, numTokens: 5, subjectStart: 1, subjectEnd: 3, subject: "ab" },
  { index: 1, numTokens: 3, subjectStart: 0, subjectEnd: 1, subject: "c" },
  { index: 7, numTokens: 4, subjectStart: 2, subjectEnd: 3, subject: "d" },
];
const SITES = [engine.Site.SITE_RESIDUAL, engine.Site.SITE_MIXER, engine.Site.SITE_SSM];

const cellArb = fc.record({
  site: fc.constantFrom(...SITES),
  layer: fc.integer({ min: 0, max: 40 }),
  token: fc.integer({ min: 0, max: 4 }),
  window: fc.integer({ min: 0, max: 5 }),
  head: fc.option(fc.integer({ min: 0, max: 7 }), { nil: undefined }),
  p: fc.double({ min: 0, max: 1, noNaN: true }),
  logit: fc.double({ min: -20, max: 20, noNaN: true }),
});
const resultArb = fc.record({
  // Mostly the plan's id form; sometimes another prefix, leading zeros or no parts (kept by the whole id).
  shardId: fc.oneof(
    fc.tuple(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 40 })).map(([a, b]) => `sw.${a}.${b}`),
    fc.constantFrom(
      "sw.01.2",
      "sw.1.02",
      "other.1.2",
      "sw",
      "sw.1",
      "sw.1.2.3",
      "sw.-1.2",
      "sw.9999999999.1",
      "sw.1.2x",
      "sw.1..2",
      "sw.1.",
      "sw..1",
      "sw.0.0",
      "sw.\u0661.2",
      "sw.1.\u00e9",
    ),
  ),
  promptIndex: fc.constantFrom(0, 1, 7),
  answerId: fc.integer({ min: 0, max: 50_000 }),
  pClean: fc.double({ min: 0, max: 1, noNaN: true }),
  pCorrupt: fc.double({ min: 0, max: 1, noNaN: true }),
  cells: fc.array(cellArb, { maxLength: 6 }),
  agentId: fc.string({ maxLength: 8 }),
  leaseId: fc.string({ maxLength: 8 }),
  engineSeconds: fc.double({ noNaN: true }),
});
interface TestResult {
  shardId: string;
  promptIndex: number;
  answerId: number;
  pClean: number;
  pCorrupt: number;
  cells: { site: engine.Site; layer: number; token: number; window: number; head: number | undefined; p: number; logit: number }[];
  agentId: string;
  leaseId: string;
  engineSeconds: number;
}
const encode = (r: TestResult): Uint8Array =>
  sweep.ShardResult.encode(
    sweep.ShardResult.fromPartial({
      ...r,
      sweepId: "sw",
      worker: "cpu",
      attempt: 2,
      cells: r.cells.map(({ site, layer, token, window, head, p, logit }) => ({
        cell: { site, layer, token, window, ...(head === undefined ? {} : { head }) },
        p,
        logit,
      })),
    }),
  ).finish();

/** What a call returned, or the error it threw. */
function outcome(f: () => unknown): string {
  try {
    return `ok ${String(f())}`;
  } catch (err) {
    return `${(err as Error).name}: ${(err as Error).message}`;
  }
}

/** Everything an aggregate shows: counts, rows, heatmaps, per-fact rows, the state. */
function view(a: ResultAggregator): unknown {
  return {
    shards: a.shardCount,
    cells: a.cells,
    rows: [...a.rows()],
    grids: a.grids().map((g) => [g, a.heatmap(g.site, g.window), a.factRows(g.site, g.window, "last")]),
    grid: a.promptGrid(0, "residual", 1),
    state: a.toJSON(),
  };
}

test("addEncoded gives the same aggregate, rows and state as decode + add, results in any order with duplicates", () => {
  fc.assert(
    fc.property(fc.array(resultArb, { maxLength: 25 }), (results) => {
      const byAdd = new ResultAggregator({ sweepId: "sw", prompts, model: "m" });
      const byBytes = new ResultAggregator({ sweepId: "sw", prompts, model: "m" });
      for (const r of results) {
        const bytes = encode(r);
        assert.equal(
          outcome(() => byBytes.addEncoded(bytes)),
          outcome(() => byAdd.add(sweep.ShardResult.decode(bytes))),
        );
      }
      assert.deepEqual(view(byBytes), view(byAdd));
      assert.deepEqual(view(ResultAggregator.fromJSON(JSON.stringify(byBytes.toJSON()))), view(byAdd));
    }),
    { numRuns: 300, seed: 16 },
  );
});

test("the usual stored result is read in place, field for field as the generated decoder reads it", () => {
  const bytes = encode({
    shardId: "sw.7.3",
    promptIndex: 7,
    answerId: 42,
    pClean: 0.75,
    pCorrupt: 0.125,
    agentId: "agent-1",
    leaseId: "l-9",
    engineSeconds: 0.5,
    cells: [
      { site: engine.Site.SITE_SSM, layer: 3, token: 2, window: 1, head: 5, p: 0.25, logit: -1.5 },
      { site: engine.Site.SITE_RESIDUAL, layer: 0, token: 0, window: 0, head: undefined, p: 0, logit: 0 },
    ],
  });
  const w = new WireShardResult();
  assert.equal(w.read(bytes), true);
  assert.deepEqual(
    [w.shardId, w.promptIndex, w.answerId, w.pClean, w.pCorrupt, w.cells, w.sweepIdIs(new TextEncoder().encode("sw"))],
    ["sw.7.3", 7, 42, 0.75, 0.125, 2, true],
  );
  assert.deepEqual(
    [0, 1].map((i) => [w.site[i], w.layer[i], w.token[i], w.window[i], w.head[i], w.p[i], w.logit[i]]),
    [
      [engine.Site.SITE_SSM, 3, 2, 1, 5, 0.25, -1.5],
      [engine.Site.SITE_RESIDUAL, 0, 0, 0, -1, 0, 0],
    ],
  );
});

test("a cut or malformed encoding and a result that does not fit fail in addEncoded exactly as in decode + add", () => {
  const good = encode({ shardId: "sw.0.1", promptIndex: 0, answerId: 1, pClean: 0.9, pCorrupt: 0.1, agentId: "", leaseId: "", engineSeconds: 0, cells: [] });
  const bad = [
    good.subarray(0, good.length - 3), // cut inside a double
    Uint8Array.from([...good, 0x4a, 0x05, 0x0a, 0x03, 0x08]), // a cell cut inside
    Uint8Array.from([...good, 0x00]), // tag 0
    Uint8Array.from([...good, 0x0b]), // a group
    encode({ shardId: "sw.0.2", promptIndex: 3, answerId: 0, pClean: 0, pCorrupt: 0, agentId: "", leaseId: "", engineSeconds: 0, cells: [] }), // unknown prompt
    encode({
      shardId: "sw.1.2",
      promptIndex: 1,
      answerId: 0,
      pClean: 0,
      pCorrupt: 0,
      agentId: "",
      leaseId: "",
      engineSeconds: 0,
      cells: [{ site: engine.Site.SITE_RESIDUAL, layer: 0, token: 4, window: 1, head: undefined, p: 0.5, logit: 0 }], // token outside the prompt
    }),
    sweep.ShardResult.encode(sweep.ShardResult.fromPartial({ sweepId: "other", shardId: "sw.0.3", promptIndex: 0 })).finish(),
    sweep.ShardResult.encode(sweep.ShardResult.fromPartial({ sweepId: "sw", shardId: "sw.0.4", promptIndex: 0, cells: [{ p: 0.5 }] })).finish(), // no cell
  ];
  for (const bytes of bad) {
    const a = new ResultAggregator({ sweepId: "sw", prompts });
    const b = new ResultAggregator({ sweepId: "sw", prompts });
    assert.equal(
      outcome(() => a.addEncoded(bytes)),
      outcome(() => b.add(sweep.ShardResult.decode(bytes))),
    );
    assert.deepEqual(view(a), view(b));
  }
});

test("shard ids are kept as whole strings: a plan-form id and another spelling of the same numbers are two shards", () => {
  const agg = new ResultAggregator({ sweepId: "sw", prompts });
  const r = (shardId: string) => sweep.ShardResult.fromPartial({ sweepId: "sw", shardId, promptIndex: 0, pClean: 0.9, pCorrupt: 0.1 });
  for (const id of ["sw.1.2", "sw.01.2", "sw.1.02", "sw2.1.2", "sw.1.2"]) agg.add(r(id));
  assert.equal(agg.shardCount, 4);
  assert.deepEqual(
    ["sw.1.2", "sw.01.2", "sw.1.02", "sw2.1.2", "sw.1.3", "sw.2.2"].map((id) => agg.has(id)),
    [true, true, true, true, false, false],
  );
  assert.deepEqual(agg.toJSON().shardIds, ["sw.1.2", "sw.01.2", "sw.1.02", "sw2.1.2"]);
});

test("a state of the format before (shards as [id, StoredShard], ids without cells) loads: counts, rows and has as saved", () => {
  // Written by hand in the version-1 format the aggregator wrote before its columns.
  const state = {
    version: 1 as const,
    sweepId: "sw",
    scheme: "rome" as const,
    model: "m",
    corruption: "swap",
    prompts,
    buckets: [["residual|1|last|0", { n: 1, sumP: 0.5, sumPCorrupt: 0.1, sumPClean: 0.9, sumIE: 0.5, nIE: 1 }]] as [string, never][],
    promptProbs: [[1, 0.9, 0.1, 5]] as [number, number, number, number][],
    shardIds: ["sw.1.0", "sw.0.3"],
    cellCount: 2,
    shards: [["sw.1.0", { promptIndex: 1, answerId: 5, pClean: 0.9, pCorrupt: 0.1, cells: [engine.Site.SITE_RESIDUAL, 0, 2, 1, 0.5, 0.25] }]] as [
      string,
      never,
    ][],
  };
  const agg = ResultAggregator.fromJSON(JSON.stringify(state));
  assert.deepEqual([agg.shardCount, agg.cells, agg.has("sw.0.3"), agg.has("sw.1.0"), agg.has("sw.0.0")], [2, 2, true, true, false]);
  assert.deepEqual(
    [...agg.rows()].map((r) => [r.promptIndex, r.site, r.layer, r.token, r.window, r.p, r.pClean, r.fieldsJson, r.head]),
    [[1, "residual", 0, 2, 1, 0.5, 0.9, '{"answer_id":5}', undefined]],
  );
  assert.deepEqual(agg.bucket("residual", 1, "last", 0), { n: 1, sumP: 0.5, sumPCorrupt: 0.1, sumPClean: 0.9, sumIE: 0.5, nIE: 1 });
  const again = agg.toJSON();
  assert.deepEqual([again.shardIds, again.shards], [state.shardIds, state.shards]);
});

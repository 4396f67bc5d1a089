import { test } from "node:test";
import assert from "node:assert/strict";
import { engine, type sweep } from "@factsweep/proto";
import { ResultAggregator } from "./aggregator.js";
import { averageIndirectEffect, indirectEffect } from "./effects.js";
import { ResultError } from "./errors.js";

const R = engine.Site.SITE_RESIDUAL;
const M = engine.Site.SITE_MIXER;

test("IE is (p − p*) / (p_clean − p*), and undefined when the corruption changed nothing", () => {
  assert.equal(indirectEffect(0.5, 0.1, 0.9), 0.5);
  assert.equal(indirectEffect(0.1, 0.1, 0.9), 0);
  assert.equal(indirectEffect(0.9, 0.1, 0.9), 1);
  assert.equal(indirectEffect(0.3, 0.4, 0.4), null);
  assert.ok(Math.abs(averageIndirectEffect([0.5, 0.7], [0.1, 0.3]) - 0.4) < 1e-12);
});

// Prompt 0: 4 tokens, subject [1, 3) → groups: 0 prefix, 1 subject_first, 2 subject_last, 3 first_subsequent+last.
// Prompt 1: 3 tokens, subject [0, 1) → 0 subject_first+subject_last, 1 first_subsequent, 2 last.
const prompts = [
  { index: 0, numTokens: 4, subjectStart: 1, subjectEnd: 3, subject: "ab" },
  { index: 1, numTokens: 3, subjectStart: 0, subjectEnd: 1, subject: "c" },
];

function result(
  shardId: string,
  promptIndex: number,
  pClean: number,
  pCorrupt: number,
  cells: [engine.Site, number, number, number, number][],
): sweep.ShardResult {
  return {
    resultJson: "",
    sweepId: "sw",
    shardId,
    promptIndex,
    agentId: "a",
    attempt: 0,
    leaseId: "",
    answerId: 5,
    pClean,
    pCorrupt,
    cells: cells.map(([site, layer, token, window, p]) => ({ cell: { site, layer, token, window }, p, logit: 0 })),
    engineSeconds: 0,
    worker: "cpu",
  };
}

const r0 = result("sw.0.0", 0, 0.9, 0.1, [
  [R, 0, 2, 1, 0.5], // subject_last, IE 0.5
  [R, 1, 2, 1, 0.7], // IE 0.75
  [R, 0, 3, 1, 0.1], // last, IE 0
]);
const r1 = result("sw.1.0", 1, 0.6, 0.2, [
  [R, 0, 0, 1, 0.4], // subject_first + subject_last, IE 0.5
  [R, 0, 2, 1, 0.6], // last, IE 1
  [M, 0, 2, 3, 0.2], // other (site, window)
]);

test("the heatmap averages IE per token group and layer across prompts, and AIE is mean(p) − mean(p*)", () => {
  const agg = new ResultAggregator({ sweepId: "sw", prompts });
  assert.equal(agg.add(r0), true);
  assert.equal(agg.add(r1), true);
  const h = agg.heatmap("residual", 1);
  assert.deepEqual(h.layers, [0, 1]);
  assert.deepEqual(h.groups, ["subject_first", "subject_last", "first_subsequent", "last"]);
  const at = (g: string, l: number) => h.meanIE[h.groups.indexOf(g as never)]![h.layers.indexOf(l)];
  const close = (a: number | null | undefined, b: number) => assert.ok(a != null && Math.abs(a - b) < 1e-12, `${a} != ${b}`);
  close(at("subject_last", 0), (0.5 + 0.5) / 2);
  close(at("subject_last", 1), 0.75);
  close(at("last", 0), (0 + 1) / 2);
  close(at("subject_first", 0), 0.5);
  assert.equal(at("last", 1), null);
  const aie = h.aie[h.groups.indexOf("last")]![0]!;
  assert.ok(Math.abs(aie - averageIndirectEffect([0.1, 0.6], [0.1, 0.2])) < 1e-12);
  assert.deepEqual(
    agg
      .grids()
      .map((g) => `${g.site}/${g.window}`)
      .sort(),
    ["mixer/3", "residual/1"],
  );
  const s = agg.summary();
  assert.equal(s.cells, 6);
  assert.equal(s.prompts, 2);
  assert.ok(Math.abs(s.totalEffect - ((0.9 + 0.6) / 2 - (0.1 + 0.2) / 2)) < 1e-12);
  const peak = s.peaks.find((p) => p.site === "residual" && p.group === "subject_last")!;
  assert.equal(peak.layer, 1);
});

test("a shard added twice (redelivery or retry) counts once", () => {
  const agg = new ResultAggregator({ sweepId: "sw", prompts });
  agg.add(r0);
  const before = JSON.stringify(agg.heatmap("residual", 1));
  assert.equal(agg.add({ ...r0, attempt: 2, agentId: "b" }), false);
  assert.equal(agg.cells, 3);
  assert.equal(agg.shardCount, 1);
  assert.equal(JSON.stringify(agg.heatmap("residual", 1)), before);
});

test("a restored aggregator (toJSON → JSON text → fromJSON) has the same heatmaps and still refuses old shards", () => {
  for (const cells of [true, false]) {
    const agg = new ResultAggregator({ sweepId: "sw", prompts, model: "mamba-tiny", corruption: "swap" });
    agg.add(r0);
    const restored = ResultAggregator.fromJSON(JSON.stringify(agg.toJSON({ cells })));
    assert.equal(restored.add(r0), false, "shard ids survive");
    assert.equal(restored.add(r1), true);
    agg.add(r1);
    assert.deepEqual(restored.heatmap("residual", 1), agg.heatmap("residual", 1));
    assert.deepEqual(restored.summary(), agg.summary());
    assert.equal([...restored.rows()].length, cells ? 6 : 3, "without cells, rows cover only shards added after the restore");
  }
});

test("rows carry the site name, the token group and IE (NaN where p_clean == p*)", () => {
  const agg = new ResultAggregator({ sweepId: "sw", prompts, model: "m", corruption: "swap" });
  agg.add(r1);
  agg.add(result("sw.0.0", 0, 0.3, 0.3, [[R, 0, 2, 1, 0.3]]));
  const rows = [...agg.rows()];
  assert.deepEqual(
    rows.map((r) => [r.promptIndex, r.site, r.token, r.tokenGroup]),
    [
      [0, "residual", 2, "subject_last"],
      [1, "residual", 0, "subject_last"],
      [1, "residual", 2, "last"],
      [1, "mixer", 2, "last"],
    ],
  );
  assert.ok(Number.isNaN(rows[0]!.ie));
  assert.ok(Math.abs(rows[2]!.ie - 1) < 1e-12);
  assert.equal(rows[1]!.subject, "c");
  assert.equal(rows[1]!.corruption, "swap");
});

test("a result of another sweep, an unknown prompt or a token outside the prompt is a ResultError and changes nothing", () => {
  const agg = new ResultAggregator({ sweepId: "sw", prompts });
  assert.throws(() => agg.add({ ...r0, sweepId: "other" }), ResultError);
  assert.throws(() => agg.add({ ...r0, promptIndex: 9 }), /prompt 9, which this sweep does not have/);
  assert.throws(
    () =>
      agg.add(
        result("sw.0.1", 0, 0.9, 0.1, [
          [R, 0, 1, 1, 0.5],
          [R, 0, 4, 1, 0.5],
        ]),
      ),
    /token 4 outside prompt 0/,
  );
  assert.equal(agg.cells, 0);
  assert.equal(agg.has("sw.0.1"), false);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, mkdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KIND_AGGREGATE_FILE, type KindAggregate } from "@factsweep/planning";
import { kindSections, readKindAggregates, writeKindReport } from "./kinds.js";

const base = (kind: KindAggregate["kind"], modelType: string, model: string): KindAggregate => ({
  kind,
  sweepId: `${model}-${kind}`,
  model,
  modelType,
  numLayers: 2,
  shards: 1,
});

const aggs: KindAggregate[] = [
  {
    ...base("knockout", "gpt_neox", "neox-facts"),
    knockout: {
      window: 2,
      points: [
        { token_set: "subject", layer: 0, relative_change: -0.5, n: 3 },
        { token_set: "subject", layer: 1, relative_change: -0.2, n: 3 },
      ],
    },
  },
  { ...base("knockout", "mamba", "mamba-facts"), knockout: { window: 2, points: [{ token_set: "last", layer: 0, relative_change: -0.1, n: 3 }] } },
  {
    ...base("sever", "mamba", "mamba-facts"),
    sever: {
      points: [
        { path: "none", token: "last", layer: 0, recovery: 0.9, n: 2 },
        { path: "ssm", token: "last", layer: 0, recovery: 0.4, n: 2 },
      ],
    },
  },
  {
    ...base("lre", "mamba", "mamba-facts"),
    lre: {
      betas: [1, 2],
      points: [
        { relation: "r1", layer: -1, beta: 1, faithfulness: 0.2, trials: 2 },
        { relation: "r1", layer: 0, beta: 2, faithfulness: 0.8, trials: 2 },
      ],
      best: [{ relation: "r1", layer: 0, beta: 2, faithfulness: 0.8 }],
      overall: { layer: 0, beta: 2, mean: 0.8, relations: [{ relation: "r1", faithfulness: 0.8 }] },
    },
  },
  {
    ...base("edit", "mamba", "mamba-facts"),
    edit: {
      points: [
        { matrix: "W_o", layer: 0, cases: 4, ES: 1, PS: 0.75, NS: 0.5, S: 0.69, EM: 0.3, PM: 0.2, NM: 0.1, pre_ES: 0, pre_PS: 0, pre_NS: 1, entropy: null },
      ],
    },
  },
];

test("kindSections draws one section per kind present, Mamba before NeoX, charts inline as SVG", async () => {
  const sections = await kindSections(aggs);
  assert.equal(sections.length, 4);
  assert.match(sections[0]!, /Information-flow knockout/);
  assert.match(sections[1]!, /Path blocking/);
  assert.match(sections[2]!, /Linear relation embeddings/);
  assert.match(sections[3]!, /Rank-one editing/);
  for (const s of sections) assert.match(s, /<svg/);
  const ko = sections[0]!;
  assert.ok(ko.indexOf("mamba-facts (Mamba)") < ko.indexOf("neox-facts (GPT-NeoX)"));
  assert.match(sections[2]!, /best overall layer 0, β 2, mean faithfulness 0\.80; 1 of 1 relations above 0\.5/);
  assert.match(sections[3]!, /<td>W_o<\/td><td>0<\/td><td>4<\/td><td>100\.0<\/td><td>75\.0<\/td><td>50\.0<\/td><td>69\.0<\/td>/);
  assert.deepEqual(await kindSections([]), []);
});

test("readKindAggregates reads kind.json from sweepctl local folders and skips folders without one", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kinds-report-"));
  mkdirSync(join(dir, "a"));
  mkdirSync(join(dir, "b"));
  writeFileSync(join(dir, "a", KIND_AGGREGATE_FILE), JSON.stringify(aggs[2]));
  const read = readKindAggregates([join(dir, "a"), join(dir, "b")]);
  assert.deepEqual(read, [aggs[2]]);
  const file = await writeKindReport(read, join(dir, "out"));
  assert.match(readFileSync(file, "utf8"), /Path blocking/);
});

test("an edit sweep with a trace gets the figure-4 panel (trace IE beside ES/PS/NS per layer) and its note; without a trace, neither", async () => {
  const editPoint = (layer: number, cases: number, ES: number) => ({
    matrix: "W_o",
    layer,
    cases,
    ES,
    PS: 0.5,
    NS: 0.9,
    S: 0.6,
    EM: 0,
    PM: 0,
    NM: 0,
    pre_ES: 0,
    pre_PS: 0,
    pre_NS: 1,
    entropy: null,
  });
  const trace = { sweepId: "tr-1", matrices: [{ matrix: "W_o", site: "mixer", window: 2, layers: [0, 1, 2], meanIE: [0.2, 0.4, 0.1], facts: 5 }] };
  const withTrace = (chosen: boolean): KindAggregate => ({
    ...base("edit", "mamba", "mamba-facts"),
    edit: { points: [editPoint(0, 1, 1), editPoint(1, 3, 0.5)], trace: { ...trace, chosen } },
  });
  const [chosen] = await kindSections([withTrace(true)]);
  assert.match(chosen!, /causal trace beside the edit, per layer \(figure 4\)/);
  assert.match(chosen!, /layers from trace sweep tr-1: each case edited at its fact&#39;s peak IE at the last subject token \(W_o ← mixer, window 2\)/);
  assert.match(chosen!, /cases edited at this layer/);
  // The table's trace IE column: the trace's mean IE at the point's layer.
  assert.match(chosen!, /<td>W_o<\/td><td>1<\/td><td>3<\/td><td>50\.0<\/td><td>50\.0<\/td><td>90\.0<\/td><td>60\.0<\/td><td>40\.0<\/td>/);
  const [beside] = await kindSections([withTrace(false)]);
  assert.match(beside!, /trace sweep tr-1 drawn beside every case edited at every layer/);
  assert.doesNotMatch(beside!, /cases edited at this layer/);
  const [plain] = await kindSections([aggs[4]!]);
  assert.doesNotMatch(plain!, /figure 4|trace sweep/);
  assert.equal((plain!.match(/<svg/g) ?? []).length, 1, "only the scores chart");
});

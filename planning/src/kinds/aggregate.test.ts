import { test } from "node:test";
import assert from "node:assert/strict";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { sweep } from "@factsweep/proto";
import { planSweep } from "../plan.js";
import { parseSweepSpec } from "../spec.js";
import { KindAggregator, kindCsvColumns, kindRowRecord } from "./aggregate.js";
import { severCells } from "./sever.js";
import { ngramEntropy, wordTokens } from "./edit.js";
import { loadTokenizer } from "../tokenizer.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const RELATIONS = join(REPO, "models/world/relations");

function setup(body: string, model = "mamba-facts") {
  const spec = parseSweepSpec(`name: t\nmodel: { id: m, path: ${join(REPO, "models", model)} }\n${body}`);
  const plan = planSweep(spec, "a");
  const agg = new KindAggregator({ sweepId: "a", spec, prompts: plan.prompts, modelType: plan.modelConfig.modelType, numLayers: plan.modelConfig.numLayers });
  const result = (shardId: string, json: unknown) =>
    sweep.ShardResult.fromPartial({ sweepId: "a", shardId, promptIndex: Number(shardId.split(".")[1]), resultJson: JSON.stringify(json) });
  return { spec, plan, agg, result };
}

test("knockout: the mean relative change per (set, layer) counts each shard once, however often it arrives", () => {
  const { agg, result } = setup(
    `kind: knockout\ndataset: { relations: [${RELATIONS}], per_relation: 1 }\nknockout: { window: 2, token_sets: [subject, last] }\nlayers: [3]\n`,
  );
  const rows = (rc: number) => ({
    window: 2,
    p: 0.5,
    rows: [
      { layer: 3, token_set: "subject", p_knocked: 0.5 * (1 + rc), relative_change: rc },
      { layer: 3, token_set: "last", p_knocked: 0.5, relative_change: 0 },
    ],
  });
  assert.equal(agg.add(result("a.0.0", rows(-0.5))), true);
  assert.equal(agg.add(result("a.1.0", rows(-0.1))), true);
  assert.equal(agg.add(result("a.1.0", rows(-0.9))), false); // a redelivery of shard a.1.0
  const pts = agg.summary().knockout!.points;
  const subj = pts.find((p) => p.token_set === "subject")!;
  assert.equal(subj.n, 2);
  assert.ok(Math.abs(subj.relative_change! - -0.3) < 1e-12);
  assert.equal([...agg.rows()].length, 4);
});

test("sever: recovery is (p − p*)/(p_clean − p*) per (path, token selector, layer), cells matched to the shard's part", () => {
  const { spec, plan, agg, result } = setup(
    `kind: sever\ndataset: { relations: [${RELATIONS}], per_relation: 1 }\nsever: { tokens: [last] }\nlayers: [0, 1]\nshard_cells: 3\n`,
    "neox-facts",
  );
  const p = plan.prompts[0]!;
  const cells = severCells(spec, p, "gpt_neox", plan.modelConfig.numLayers); // last × 2 layers × 3 paths = 6 → parts 0, 1
  assert.equal(cells.length, 6);
  const ps = [0.9, 0.5, 0.1, 0.8, 0.4, 0.2];
  agg.add(result(`a.${p.index}.0`, { p: ps.slice(0, 3), p_clean: 1, p_corrupt: 0, answer_id: 1, samples: 1 }));
  agg.add(result(`a.${p.index}.1`, { p: ps.slice(3), p_clean: 1, p_corrupt: 0, answer_id: 1, samples: 1 }));
  const pts = agg.summary().sever!.points;
  cells.forEach((c, i) => {
    const pt = pts.find((x) => x.path === c.path && x.layer === c.layer && x.token === "last")!;
    assert.ok(Math.abs(pt.recovery! - ps[i]!) < 1e-12, `${c.path} ${c.layer}`);
  });
  assert.throws(() => agg.add(result(`a.${p.index}.2`, { p: [0.1], p_clean: 1, p_corrupt: 0 })), /1 sever results for 0 planned cells/);
});

test("lre: faithfulness per (relation, layer, β) is averaged over trials; a trial with no correct test fact does not count", () => {
  const { agg, result } = setup(
    `kind: lre\ndataset: { relations: [${join(RELATIONS, "company_country.json")}] }\nlre: { icl: 2, trials: 3, test: 3, betas: [1, 2], embedding: false }\nlayers: [4]\n`,
  );
  const r = (f: (number | null)[]) => ({ layer: 4, betas: [1, 2], n_train: 2, n_test: 3, n_test_correct: 3, faithfulness: f, train_correct: 2, tests: [] });
  agg.add(result("a.0.0", r([1, 0.5])));
  agg.add(result("a.0.1", r([0, 0.5])));
  agg.add(result("a.0.2", r([null, null])));
  const l = agg.summary().lre!;
  const at = (beta: number) => l.points.find((p) => p.beta === beta)!;
  assert.deepEqual([at(1).faithfulness, at(1).trials, at(2).faithfulness], [0.5, 2, 0.5]);
  assert.equal(l.best[0]!.faithfulness, 0.5);
  assert.equal(l.overall!.layer, 4);
  const rows = [...agg.rows()].map(kindRowRecord);
  assert.deepEqual(
    rows.map((x) => x.trial),
    [0, 0, 1, 1, 2, 2],
  );
});

test("edit: S is the harmonic mean of the mean ES, PS, NS over cases (ROME's summarize), not the mean of per-case S", () => {
  const { agg, result } = setup(`kind: edit\ndataset: { relations: [${RELATIONS}] }\nedit: { cases: 2, matrices: [W_o], max_corpus: 4 }\nlayers: [2]\n`);
  const ev = (ES: number, PS: number, NS: number) => ({ ES, PS, NS, S: 3 / (1 / ES + 1 / PS + 1 / NS), EM: 0.1, PM: 0.1, NM: 0.1, generation: null });
  agg.add(result("a.0.0", { matrix: "W_o", layer: 2, pre: ev(0, 0, 1), post: ev(1, 1, 0.5), restored: true }));
  agg.add(result("a.1.0", { matrix: "W_o", layer: 2, pre: ev(0, 0, 1), post: ev(1, 0.5, 1), restored: true }));
  const pt = agg.summary().edit!.points[0]!;
  assert.deepEqual([pt.cases, pt.ES, pt.PS, pt.NS, pt.pre_NS], [2, 1, 0.75, 0.75, 1]);
  assert.ok(Math.abs(pt.S! - 3 / (1 + 1 / 0.75 + 1 / 0.75)) < 1e-12);
  const row = kindRowRecord([...agg.rows()][0]!);
  assert.deepEqual(
    Object.keys(row).filter((k) => !kindCsvColumns("edit").includes(k)),
    [],
  );
  assert.equal(row.restored, true);
});

test("edit: generation entropy counts words of the decoded samples, as ROME's does; the engine's token-id entropy is kept beside it", () => {
  const { agg, result, plan } = setup(
    `kind: edit\ndataset: { relations: [${RELATIONS}] }\nedit: { cases: 1, matrices: [W_o], max_corpus: 4, generation: true }\nlayers: [2]\n`,
  );
  // The plan asks the engine for the sampled ids.
  const params = JSON.parse(plan.shards[0]!.paramsJson) as { generation: unknown };
  assert.deepEqual(params.generation, { return_ids: true });
  const tok = loadTokenizer(join(REPO, "models/mamba-facts/tokenizer.json"));
  const texts = ["The capital of Norvia is Tallin, the city of Tallin.", "He plays the cello. He plays the cello. He plays"];
  const ids = texts.map((t) => tok.encode(t));
  const ev = { ES: 1, PS: 1, NS: 1, S: 1, EM: 0.1, PM: 0.1, NM: 0.1 };
  agg.add(result("a.0.0", { matrix: "W_o", layer: 2, pre: ev, post: { ...ev, generation: { entropy: 1.25, ids } }, restored: true }));
  const words = texts.map((t) => ngramEntropy(wordTokens(tok.decode(tok.encode(t)))));
  const row = kindRowRecord([...agg.rows()][0]!);
  assert.ok(Math.abs(Number(row.entropy) - (words[0]! + words[1]!) / 2) < 1e-12, `${row.entropy}`);
  assert.equal(row.entropy_tokens, 1.25);
  assert.ok(Math.abs(agg.summary().edit!.points[0]!.entropy! - Number(row.entropy)) < 1e-12);
  // nltk's word_tokenize splits these the same way; n-gram entropies as the engine's (rome.ngram_entropy).
  assert.deepEqual(wordTokens("I don't know, it's 3.5 km from Paris!"), ["I", "do", "n't", "know", ",", "it", "'s", "3.5", "km", "from", "Paris", "!"]);
  assert.equal(ngramEntropy([4, 4, 4, 4, 4]), 0);
  assert.ok(Math.abs(ngramEntropy([1, 2, 3, 4, 5]) - (2 * (2 / 3) + Math.log2(3) * (4 / 3)) / 2) < 1e-12);
});

test("a result that is not JSON, or lacks the kind's fields, is refused naming the shard", () => {
  const { agg, result } = setup(`kind: knockout\ndataset: { relations: [${RELATIONS}], per_relation: 1 }\n`);
  assert.throws(
    () => agg.add(sweep.ShardResult.fromPartial({ sweepId: "a", shardId: "a.0.0", promptIndex: 0, resultJson: "{" })),
    /shard a\.0\.0: result_json is not JSON/,
  );
  assert.throws(() => agg.add(result("a.0.0", { p: 1 })), /shard a\.0\.0: result_json has no rows/);
  assert.equal(agg.shardCount, 0);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { SpecError } from "../errors.js";
import { planSweep } from "../plan.js";
import { parseSweepSpec, type SweepSpec } from "../spec.js";
import { loadTokenizer } from "../tokenizer.js";
import { MAX_PARAMS_BYTES, shardUnits } from "./index.js";
import { severCells } from "./sever.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const MAMBA = join(REPO, "models/mamba-facts");
const NEOX = join(REPO, "models/neox-facts");
const RELATIONS = join(REPO, "models/world/relations");
const tok = loadTokenizer(join(REPO, "models/world/tokenizer.json"));

const spec = (body: string): SweepSpec => parseSweepSpec(`name: t\n${body}`, { baseDir: REPO });

test("a kind section gets the paper's defaults when left out", () => {
  const s = spec(`kind: knockout\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}] }\n`);
  assert.deepEqual(s.knockout, {
    window: 10,
    token_sets: ["subject", "subject_last", "non_subject", "last"],
    corpus: "dataset",
    max_corpus: 128,
    corpus_tokens: 128,
  });
  const l = spec(`kind: lre\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}] }\n`).lre!;
  assert.equal(l.icl, 5);
  assert.equal(l.trials, 3);
  assert.deepEqual([l.betas[0], l.betas.at(-1), l.betas.length], [0, 12, 25]);
});

test("a section of another kind is refused, naming the section", () => {
  assert.throws(
    () => spec(`kind: sever\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}] }\nlre: { icl: 3 }\n`),
    (e: SpecError) => {
      assert.equal(e.path, "lre");
      assert.match(e.message, /only applies to kind lre \(this sweep is kind sever\)/);
      return true;
    },
  );
});

test("a bad field inside a kind section is named with its path", () => {
  assert.throws(
    () => spec(`kind: knockout\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}] }\nknockout: { token_sets: [subjct] }\n`),
    (e: SpecError) => {
      assert.equal(e.path, "knockout.token_sets[0]");
      return true;
    },
  );
  assert.throws(
    () => spec(`kind: edit\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}] }\nedit: { hparams: { v_lrr: 1 } }\n`),
    SpecError,
  );
});

test("knockout plans one shard per prompt over the layers, with the corpus only for Mamba", () => {
  const body = (path: string) =>
    `kind: knockout\nmodel: { id: m, path: ${path} }\ndataset: { relations: [${RELATIONS}], per_relation: 2 }\nknockout: { window: 2, max_corpus: 4 }\n`;
  const m = planSweep(spec(body(MAMBA)), "k");
  assert.equal(m.shards.length, m.prompts.length);
  const p = JSON.parse(m.shards[0]!.paramsJson) as { layers: number[]; window: number; corpus: number[][]; token_sets: string[] };
  assert.deepEqual(p.layers, [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.equal(p.window, 2);
  assert.equal(p.corpus.length, 4);
  // "dataset": the corpus is the prompts' own texts, tokenized
  assert.deepEqual(p.corpus[0], tok.encode(m.prompts[0]!.text));
  assert.equal(shardUnits(m.shards[0]!), 8 * 4);
  const n = planSweep(spec(body(NEOX)), "k");
  assert.equal((JSON.parse(n.shards[0]!.paramsJson) as { corpus?: unknown }).corpus, undefined);
});

test("a corpus that would make a shard message too large is refused naming the field to lower", () => {
  const dir = mkdtempSync(join(tmpdir(), "kinds-"));
  const big = join(dir, "big.txt");
  writeFileSync(big, Array.from({ length: 1024 }, (_, i) => `line ${i} ` + "word ".repeat(300)).join("\n"));
  const s = spec(
    `kind: knockout\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}], per_relation: 1 }\nknockout: { corpus: ${big}, max_corpus: 1024, corpus_tokens: 2048 }\n`,
  );
  assert.throws(
    () => planSweep(s, "k"),
    (e: SpecError) => {
      assert.equal(e.path, "knockout.max_corpus");
      assert.match(e.message, new RegExp(`over the ${MAX_PARAMS_BYTES}-byte limit`));
      return true;
    },
  );
});

test("sever cells cover selector × position × layer × path, cut by shard_cells, and the aggregator re-derives them", () => {
  const s = spec(
    `kind: sever\nmodel: { id: m, path: ${NEOX} }\ndataset: { relations: [${RELATIONS}], per_relation: 1 }\nsever: { tokens: [subject, last] }\nshard_cells: 10\n`,
  );
  const plan = planSweep(s, "s");
  const p = plan.prompts[0]!;
  const cells = severCells(s, p, "gpt_neox", plan.modelConfig.numLayers);
  const subjectLen = p.subjectEnd - p.subjectStart;
  assert.equal(cells.length, (subjectLen + 1) * plan.modelConfig.numLayers * 3);
  const mine = plan.shards.filter((sh) => sh.prompt!.index === p.index);
  const sent = mine.flatMap((sh) => (JSON.parse(sh.paramsJson) as { cells: unknown[] }).cells);
  assert.deepEqual(
    sent,
    cells.map(({ token, layer, path }) => ({ token, layer, path })),
  );
  assert.ok(mine.every((sh) => (JSON.parse(sh.paramsJson) as { cells: unknown[] }).cells.length <= 10));
  assert.deepEqual([...new Set(cells.map((c) => c.path))], ["none", "attn", "mlp"]);
});

test("a sever path the model lacks is refused with the model's paths", () => {
  const s = spec(`kind: sever\nmodel: { id: m, path: ${NEOX} }\ndataset: { relations: [${RELATIONS}], per_relation: 1 }\nsever: { paths: [none, ssm] }\n`);
  assert.throws(
    () => planSweep(s, "s"),
    (e: SpecError) => e.path === "sever.paths[1]" && /none, attn, mlp/.test(e.message),
  );
});

test("lre builds Hernandez's in-context prompts: the other training facts as lines, then the query, subject_last on the query's subject", () => {
  const s = spec(
    `kind: lre\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${join(RELATIONS, "company_country.json")}] }\nlre: { icl: 3, trials: 2, test: 4, betas: [1, 2] }\nlayers: [2, 5]\n`,
  );
  const plan = planSweep(s, "l");
  assert.equal(plan.prompts.length, 1);
  assert.equal(plan.shards.length, 3 * 2); // (emb, 2, 5) × 2 trials
  const byPart = (part: number) =>
    JSON.parse(plan.shards.find((sh) => sh.shardId === `l.0.${part}`)!.paramsJson) as {
      layer: number;
      betas: number[];
      train: { ids: number[]; subject_last: number; object_id: number }[];
      test: { ids: number[]; subject_last: number; object_id: number }[];
    };
  const p0 = byPart(0);
  assert.equal(p0.layer, -1);
  assert.equal(byPart(2).layer, 2); // part = layer index × trials + trial
  assert.equal(p0.train.length, 3);
  assert.equal(p0.test.length, 4);
  const text = tok.decode(p0.test[0]!.ids);
  const lines = text.split("\n");
  assert.equal(lines.length, 4, text); // three examples, then the query
  assert.ok(
    lines.slice(0, 3).every((l) => /^.+ is a company from \S+/.test(l)),
    text,
  );
  assert.match(lines[3]!, / is a company from$/);
  const subjectEnd = tok.decode(p0.test[0]!.ids.slice(0, p0.test[0]!.subject_last + 1));
  assert.ok(text.startsWith(subjectEnd) && lines[3]!.length > 0 && subjectEnd.endsWith(lines[3]!.replace(" is a company from", "")), subjectEnd);
  // trials draw different training facts; the same trial is the same at every layer
  assert.notDeepEqual(byPart(1).train, p0.train);
  assert.deepEqual(byPart(2).train, p0.train);
});

test("edit plans (case, layer, matrix) shards with a rewrite, paraphrases, neighbours sharing the true object and a new object of the relation", () => {
  const s = spec(
    `kind: edit\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}] }\nedit: { cases: 4, matrices: [W_o, W_g], max_corpus: 8 }\nlayers: [1, 3]\n`,
  );
  const plan = planSweep(s, "e");
  assert.equal(plan.prompts.length, 4);
  // 4 cases × 2 layers × 2 matrices, then 2 covariance shards per (layer, key module) (edit-covariance.test.ts)
  assert.equal(plan.shards.length, 4 * 2 * 2 + 2 * 2 * 2);
  const sh = plan.shards[0]!;
  const p = JSON.parse(sh.paramsJson) as Record<string, unknown> & {
    rewrite: { ids: number[]; subject: [number, number] };
    target_new_ids: number[];
    target_true_ids: number[];
    neighbourhood: number[][];
    paraphrases: number[][];
    subject_ids: number[];
  };
  assert.equal(p.matrix, "W_o");
  assert.equal(p.layer, 1);
  assert.equal(JSON.parse(plan.shards[1]!.paramsJson).matrix, "W_g");
  const prompt = sh.prompt!;
  assert.equal(tok.decode(p.subject_ids).trim(), prompt.subject);
  assert.notEqual(p.target_new_ids[0], p.target_true_ids[0]);
  assert.equal(tok.decode(p.target_true_ids), ` ${prompt.object}`);
  assert.ok(p.paraphrases.length > 0 && p.neighbourhood.length > 0);
  assert.ok(p.neighbourhood.every((ids) => !tok.decode(ids).includes(prompt.subject)));
  // the cases are spread over the relations
  assert.equal(new Set(plan.prompts.map((x) => x.relation)).size, 4);
  assert.throws(
    () => planSweep(spec(`kind: edit\nmodel: { id: m, path: ${NEOX} }\ndataset: { relations: [${RELATIONS}] }\nedit: { matrices: [W_o] }\n`), "e"),
    (e: SpecError) => e.path === "edit.matrices[0]",
  );
});

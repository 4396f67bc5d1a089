import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadSpecTokenizer, planSweep } from "./plan.js";
import { parseSweepSpec } from "./spec.js";
import { planPrompts } from "./prompts.js";
import { sharedPath } from "@factsweep/testing";

const EXAMPLES = resolve(dirname(fileURLToPath(import.meta.url)), "../examples");
const GOLDEN = sharedPath("golden/mamba-tiny");
const DATA = sharedPath("data");

test("the golden example spec plans 3 prompts × (residual, mixer, ssm) × 4 layers × every token", { skip: !GOLDEN && "shared/golden is absent" }, () => {
  const spec = parseSweepSpec(readFileSync(join(EXAMPLES, "golden-mamba.yaml"), "utf8"), { baseDir: EXAMPLES });
  spec.model.path = GOLDEN!; // the example's relative path assumes the main checkout layout
  const plan = planSweep(spec, "golden");
  assert.deepEqual(plan.promptErrors, []);
  assert.equal(plan.plannedCells, 3 * 4 * (7 + 11 + 16));
  assert.ok(plan.shards.every((s) => s.cells.length <= 32));
});

const GOLDEN2 = sharedPath("golden-mamba2/mamba2-tiny");

test(
  "the Mamba-2 golden example spec plans 3 prompts × (residual, mixer, ssm, in_ssm) × 4 layers × every token",
  { skip: !GOLDEN2 && "shared/golden-mamba2 is absent" },
  () => {
    const spec = parseSweepSpec(readFileSync(join(EXAMPLES, "golden-mamba2.yaml"), "utf8"), { baseDir: EXAMPLES });
    spec.model.path = GOLDEN2!; // the example's relative path assumes the main checkout layout
    const plan = planSweep(spec, "golden2");
    assert.deepEqual(plan.promptErrors, []);
    assert.equal(plan.plannedCells, 4 * 4 * (7 + 12 + 17));
  },
);

test("the relations example spec parses and its prompts plan with the real tokenizer", { skip: !DATA && "shared/data is absent" }, () => {
  const spec = parseSweepSpec(readFileSync(join(EXAMPLES, "relations-mamba-2.8b.yaml"), "utf8"), { baseDir: EXAMPLES });
  spec.model.tokenizer = join(DATA!, "tokenizers/gpt-neox-20b/tokenizer.json");
  spec.dataset.relations = [join(DATA!, "relations/factual/country_capital_city.json"), join(DATA!, "relations/factual/person_plays_pro_sport.json")];
  const { prompts, errors } = planPrompts(spec, loadSpecTokenizer(spec), { sweepId: "rel" });
  assert.equal(prompts.length + errors.length, 24 + 150);
  assert.ok(prompts.length > 150, `${errors.length} prompts without a swap partner`);
});

test("the paper-scale kind examples parse with the paper's settings", () => {
  const read = (f: string) => parseSweepSpec(readFileSync(join(EXAMPLES, f), "utf8"), { baseDir: EXAMPLES });
  assert.deepEqual(read("knockout-mamba-2.8b.yaml").knockout, {
    window: 10,
    token_sets: ["subject", "subject_last", "non_subject", "last"],
    corpus: "dataset",
    max_corpus: 128,
    corpus_tokens: 128,
  });
  assert.deepEqual(read("sever-mamba-2.8b.yaml").sever, { paths: ["none", "ssm", "gate", "mixer"], tokens: ["subject_last", "last"] });
  const lre = read("lre-mamba-2.8b.yaml");
  assert.deepEqual([lre.lre!.icl, lre.lre!.trials, lre.lre!.betas.at(-1), lre.layers], [5, 3, 12, "0:64:2"]);
  assert.equal(read("edit-pythia-2.8b.yaml").edit!.cases, 2000);
  assert.deepEqual(read("edit-from-trace-mamba-2.8b.yaml").layers, { from_trace: "mamba-2.8b-relations-3f2a1c" });
});

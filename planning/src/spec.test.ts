import { test } from "node:test";
import assert from "node:assert/strict";
import { parseSweepSpec, resolveLayers } from "./spec.js";
import { SpecError } from "./errors.js";
import { PROMPT_SHARD_CELLS } from "./spec-base.js";

const demo = `
name: demo
kind: trace
model: { id: mamba-tiny, path: ../golden/mamba-tiny }
dataset:
  prompts:
    - { input_ids: [5, 6, 7, 8], subject: [1, 3], corrupted_ids: [5, 9, 9, 8] }
corruption: { kind: swap, seed: 7 }
grid: [ { site: residual }, { site: mixer, window: 10 } ]
layers: "0:3"
tokens: [subject_last, last]
`;

function specError(text: string, format?: "yaml" | "json"): SpecError {
  try {
    parseSweepSpec(text, { format, baseDir: "/specs" });
  } catch (err) {
    assert.ok(err instanceof SpecError, `expected SpecError, got ${String(err)}`);
    return err;
  }
  assert.fail("spec was accepted");
}

test("a valid YAML spec parses with defaults filled in and paths resolved against baseDir", () => {
  const spec = parseSweepSpec(demo, { baseDir: "/work/shared/specs" });
  assert.equal(spec.model.path, "/work/shared/golden/mamba-tiny");
  assert.equal(spec.model.dtype, "float32");
  assert.deepEqual(spec.grid, [
    { site: "residual", window: 1 },
    { site: "mixer", window: 10 },
  ]);
  assert.deepEqual(spec.corruption, { kind: "swap", seed: 7 });
  assert.equal(spec.shard_cells, PROMPT_SHARD_CELLS, "default: one shard per prompt (capped)");
  assert.equal(spec.max_attempts, 3);
  assert.equal(spec.token_groups, "rome");
  assert.deepEqual(spec.tokens, ["subject_last", "last"]);
});

test("JSON specs parse too, and noise corruption gets ROME's defaults", () => {
  const spec = parseSweepSpec(JSON.stringify({ name: "n", model: { id: "m", path: "/m" }, dataset: { known: "k.json" }, corruption: { kind: "noise" } }), {
    format: "json",
    baseDir: "/d",
  });
  assert.deepEqual(spec.corruption, { kind: "noise", scale: 3, std: "auto", samples: 10, seed: 1 });
  assert.equal(spec.dataset.known, "/d/k.json");
  assert.equal(spec.dataset.per_relation, undefined);
});

test("a misspelt site names the field path, the allowed sites and the received value", () => {
  const err = specError(demo.replace("site: mixer", "site: mixr"));
  assert.equal(err.path, "grid[1].site");
  assert.equal(err.received, "mixr");
  assert.match(err.message, /grid\[1\]\.site/);
  assert.match(err.message, /"residual"/);
  assert.match(err.message, /got "mixr" \(string\)/);
});

test("two dataset sources are refused with a message naming both", () => {
  const err = specError(`name: x\nmodel: {id: m, path: /m}\ndataset: { known: a.json, relations: [b] }\n`);
  assert.equal(err.path, "dataset.relations");
  assert.match(err.message, /`known` and `relations`/);
});

test("an unknown field is named with a hint to check its spelling", () => {
  const err = specError(`name: x\nmodel: {id: m, path: /m}\ndataset: { known: a.json }\nshard_cell: 10\n`);
  assert.match(err.message, /unknown field `shard_cell`/);
});

test("an unknown kind is refused with the list of kinds", () => {
  const err = specError(`name: x\nkind: patch\nmodel: {id: m, path: /m}\ndataset: { known: a.json }\n`);
  assert.equal(err.path, "kind");
  assert.match(err.message, /expected one of trace, knockout, sever, lre, edit/);
});

test("several problems are all listed, the first one carried as path/expected/received", () => {
  const err = specError(`name: x\nmodel: {id: m, path: /m}\ndataset: { known: a.json }\nshard_cells: 0\nmax_attempts: two\n`);
  assert.equal(err.issues.length, 2);
  assert.equal(err.path, "shard_cells");
  assert.equal(err.received, 0);
  assert.match(err.message, /max_attempts: .*got "two" \(string\)/);
});

test('shard_cells is "prompt" by default (a prompt\'s whole grid, capped at PROMPT_SHARD_CELLS); a number keeps its meaning', () => {
  const base = `name: x\nmodel: {id: m, path: /m}\ndataset: { known: a.json }\n`;
  assert.equal(PROMPT_SHARD_CELLS, 16_384);
  assert.equal(parseSweepSpec(base).shard_cells, PROMPT_SHARD_CELLS);
  assert.equal(parseSweepSpec(`${base}shard_cells: prompt\n`).shard_cells, PROMPT_SHARD_CELLS);
  assert.equal(parseSweepSpec(`${base}shard_cells: 512\n`).shard_cells, 512);
  const err = specError(`${base}shard_cells: half\n`);
  assert.equal(err.path, "shard_cells");
  assert.match(err.message, /shard_cells: expected "prompt" \(one shard per prompt\) or a number of cells/);
});

test("broken YAML is a SpecError with the line number", () => {
  const err = specError("name: [unclosed\n");
  assert.match(err.message, /not valid YAML at line \d+/);
});

test("layer ranges resolve end-exclusive and out-of-range layers are refused naming the model's depth", () => {
  assert.deepEqual(resolveLayers("all", 3), [0, 1, 2]);
  assert.deepEqual(resolveLayers("1:3", 4), [1, 2]);
  assert.deepEqual(resolveLayers("0:8:4", 8), [0, 4]);
  assert.deepEqual(resolveLayers([2, 0, 2], 4), [0, 2]);
  assert.throws(() => resolveLayers([0, 4], 4), /layer numbers in 0\.\.3 \(the model has 4 layers\), got 4/);
  assert.throws(() => resolveLayers("0:10", 4), /beyond the model's 4 layers/);
});

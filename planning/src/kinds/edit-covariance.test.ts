// Issue 17 item 2: the covariance shards an edit sweep plans, and the C each edit shard names.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { covarianceRefOf } from "@factsweep/shared";
import { planSweep } from "../plan.js";
import { parseSweepSpec } from "../spec.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const MAMBA = join(REPO, "models/mamba-facts");
const RELATIONS = join(REPO, "models/world/relations");

function plan(edit: string, layers = "[1, 3]") {
  const spec = parseSweepSpec(
    `name: t\nkind: edit\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${RELATIONS}] }\nedit: ${edit}\nlayers: ${layers}\n`,
    {
      baseDir: REPO,
    },
  );
  const shards = planSweep(spec, "e").shards.map((sh) => ({ id: sh.shardId, params: JSON.parse(sh.paramsJson) as Record<string, unknown> }));
  return {
    edits: shards.filter((s) => s.params.cov_only !== true),
    cov: shards.filter((s) => s.params.cov_only === true),
  };
}

test("one C per (layer, key module): W_a and W_g share in_proj's, each C in cov_shards slices covering the corpus once", () => {
  const { edits, cov } = plan("{ cases: 2, matrices: [W_o, W_a, W_g], max_corpus: 9, cov_shards: 4 }");
  assert.equal(edits.length, 2 * 2 * 3);
  const objects = new Set(edits.map((e) => covarianceRefOf(JSON.stringify(e.params))!.object));
  assert.equal(objects.size, 2 * 2, [...objects].join("\n")); // (layer 1, 3) × (out_proj, in_proj)
  for (const e of edits) {
    const object = covarianceRefOf(JSON.stringify(e.params))!.object;
    assert.match(object, new RegExp(`\\.l${String(e.params.layer)}\\.${e.params.matrix === "W_o" ? "out_proj" : "in_proj"}\\.`));
  }
  assert.equal(cov.length, 4 * 4);
  for (const object of objects) {
    const parts = cov.filter((c) => (c.params.covariance as { object: string }).object === object);
    assert.deepEqual(
      parts.map((c) => (c.params.covariance as { part: number }).part),
      [0, 1, 2, 3],
    );
    assert.ok(parts.every((c) => (c.params.covariance as { parts: number }).parts === 4));
    // The slices, in order, are the edits' whole corpus (9 sequences: no sequence twice, none left out).
    assert.deepEqual(
      parts.flatMap((c) => c.params.corpus as number[][]),
      edits[0]!.params.corpus,
    );
    assert.ok(
      parts.every((c) => c.params.matrix !== undefined && !("rewrite" in c.params)),
      "a covariance shard carries no case",
    );
  }
});

test("C's name changes with the corpus and mom2_max_len; no covariance shard with cov_shards 0 or without mom2_adjustment", () => {
  const name = (edit: string) => covarianceRefOf(JSON.stringify(plan(edit, "[1]").edits[0]!.params))!.object;
  const base = name("{ cases: 1, matrices: [W_o], max_corpus: 8 }");
  assert.equal(name("{ cases: 2, matrices: [W_o], max_corpus: 8 }"), base, "the cases are no part of C");
  assert.notEqual(name("{ cases: 1, matrices: [W_o], max_corpus: 7 }"), base);
  assert.notEqual(name("{ cases: 1, matrices: [W_o], max_corpus: 8, hparams: { mom2_max_len: 16 } }"), base);
  for (const edit of ["{ cases: 1, matrices: [W_o], cov_shards: 0 }", "{ cases: 1, matrices: [W_o], hparams: { mom2_adjustment: false } }"]) {
    const p = plan(edit, "[1]");
    assert.equal(p.cov.length, 0, edit);
    assert.equal(p.edits[0]!.params.covariance, undefined, edit);
  }
});

test("a .json corpus of token ids stays a path: its covariance shards read slices of it (corpus_slice)", () => {
  const dir = mkdtempSync(join(tmpdir(), "cov-plan-"));
  const file = join(dir, "corpus.json");
  writeFileSync(file, JSON.stringify(Array.from({ length: 5 }, (_, i) => [10 + i, 20 + i, 30 + i])));
  const { edits, cov } = plan(`{ cases: 1, matrices: [W_o], corpus: ${file}, cov_shards: 2 }`, "[1]");
  assert.equal(edits[0]!.params.corpus_path, file);
  assert.deepEqual(
    cov.map((c) => [c.params.corpus_path, c.params.corpus_slice]),
    [
      [file, [0, 2]],
      [file, [2, 5]],
    ],
  );
});

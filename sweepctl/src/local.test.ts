import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { REPO_ROOT } from "@factsweep/testing";
import { parquetReadObjects } from "hyparquet";

const CLI = join(REPO_ROOT, "sweepctl", "dist", "cli.js");
const MODEL = join(REPO_ROOT, "models", "mamba-facts");
const RELATIONS = join(REPO_ROOT, "models", "world", "relations", "company_country.json");

/** A small trace of the shipped tiny Mamba: 3 facts, the residual at 2 layers, swap corruption. */
function spec(dir: string): string {
  const f = join(dir, "spec.yaml");
  writeFileSync(
    f,
    [
      "name: local-provenance",
      `model: { id: mamba-facts, path: ${MODEL} }`,
      `dataset: { relations: [${RELATIONS}], limit: 3 }`,
      "corruption: { kind: swap, seed: 7 }",
      "grid: [{ site: residual, window: 1 }]",
      "layers: [0, 4]",
      "findings: false",
      "",
    ].join("\n"),
  );
  return f;
}

const local = (specFile: string, out: string, ...extra: string[]) =>
  execa(process.execPath, [CLI, "local", specFile, "--agents", "1", "--out", out, "--quiet", ...extra], { reject: false });

test("sweepctl local keeps provenance with its results and refuses to overwrite an earlier run unless told to", { timeout: 300_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "local-prov-"));
  const specFile = spec(dir);
  const out = join(dir, "out");
  const first = await local(specFile, out, "--id", "prov-a");
  assert.equal(first.exitCode, 0, first.stderr);

  // Every trace row names its prompt: text, relation, the restored token's string, the answer and the swap partner.
  const rows = readFileSync(join(out, "results.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, string | number>);
  assert.ok(rows.length > 0);
  for (const r of rows) {
    assert.match(String(r.prompt), new RegExp(String(r.subject)), "the prompt text holds its subject");
    assert.equal(r.relation, "company_country");
    assert.ok(String(r.prompt).includes(String(r.token_str).trim()), `token "${r.token_str}" is a piece of "${r.prompt}"`);
    assert.equal(typeof r.answer_id, "number");
    assert.ok(String(r.answer).length > 0, "the answer token decoded");
    assert.ok(String(r.swap_subject).length > 0 && r.swap_subject !== r.subject, `swap partner "${r.swap_subject}" of "${r.subject}"`);
    assert.ok(String(r.corrupted_prompt).includes(String(r.swap_subject)));
  }
  // The Parquet export, read back by a Parquet reader: the same rows and every provenance column.
  const buf = readFileSync(join(out, "results.parquet"));
  const table = await parquetReadObjects({ file: buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) });
  assert.equal(table.length, rows.length);
  for (const k of ["prompt", "relation", "object", "token_str", "answer", "answer_id", "swap_subject", "corrupted_prompt", "ie", "layer"])
    assert.ok(k in table[0]!, `parquet lacks ${k}`);
  assert.deepEqual(
    table.map((r) => [r.prompt_index, r.layer, r.token, r.prompt, r.token_str, r.swap_subject, r.p]),
    rows.map((r) => [BigInt(r.prompt_index!), BigInt(r.layer!), BigInt(r.token!), r.prompt, r.token_str, r.swap_subject, r.p]),
  );
  const header = readFileSync(join(out, "results.csv"), "utf8").split("\n")[0]!;
  assert.match(header, /,answer_id,answer,prompt,relation,object,token_str,swap_subject,corrupted_prompt$/);
  assert.equal(readFileSync(join(out, "prompts.csv"), "utf8").trim().split("\n").length, 1 + new Set(rows.map((r) => r.prompt_index)).size);

  // run.json: the spec as given, the code version, every seed, the model's fingerprint, how it ended.
  const run = JSON.parse(readFileSync(join(out, "run.json"), "utf8")) as Record<string, any>;
  assert.equal(run.sweep_id, "prov-a");
  assert.equal(run.spec, readFileSync(specFile, "utf8"));
  assert.equal(readFileSync(join(out, "spec.yaml"), "utf8"), run.spec);
  assert.deepEqual(run.seeds, { "corruption.seed": 7 });
  assert.ok(run.code.version && (run.code.commit === undefined || /^[0-9a-f]{40}$/.test(run.code.commit)), JSON.stringify(run.code));
  assert.match(run.model.sha256["config.json"], /^[0-9a-f]{64}$/);
  assert.equal(run.state, "done");
  // The spec turned the findings off; the saved view says so and says the run is done.
  const trace = JSON.parse(readFileSync(join(out, "trace.json"), "utf8")) as { findings?: boolean; state?: string; facts: number; plannedFacts: number };
  assert.equal(trace.findings, false);
  assert.equal(trace.state, "done");

  // plan: the cells and shards the run had, and an estimate from the run's own measured rate.
  const plan = await execa(process.execPath, [CLI, "plan", specFile, "--json", "--rate-from", out], { reject: false });
  assert.equal(plan.exitCode, 0, plan.stderr);
  const planned = JSON.parse(plan.stdout) as {
    cells: number;
    shards: number;
    prompts: number;
    estimate?: { seconds: number };
    memory?: { weights: number; prompt_cache_max: number; prompt_cache_total: number; batch_min: { cpu: number }; minimum: { cpu: number } };
  };
  // Memory per worker, from the engine's arithmetic (engine/tests/test_estimate.py checks it against a
  // loaded model and prepared prompts): the parts add up, and every prompt's runs are at least the largest.
  const mem = planned.memory!;
  assert.ok(mem.weights > 0 && mem.prompt_cache_max > 0 && mem.prompt_cache_total >= mem.prompt_cache_max, plan.stdout);
  assert.equal(mem.minimum.cpu, mem.weights + mem.prompt_cache_max + mem.batch_min.cpu);
  const info = JSON.parse(readFileSync(join(out, "sweep.json"), "utf8")) as { counts: { plannedCells: number; shardsTotal: number; doneCells: number } };
  assert.equal(planned.cells, info.counts.plannedCells);
  assert.equal(planned.shards, info.counts.shardsTotal);
  assert.ok(planned.estimate && planned.estimate.seconds > 0, plan.stdout);
  const est = planned.estimate as { seconds: number; workerSeconds: number };
  assert.ok(Math.abs(est.workerSeconds - est.seconds * run.agents * run.workers) < 1e-6, "worker time: wall time × every engine worker of the run");

  // A second run into the same folder: refused (exit 2, naming the sweep and the fix), nothing changed.
  const again = await local(specFile, out, "--id", "prov-b");
  assert.equal(again.exitCode, 2, again.stderr);
  assert.match(again.stderr, /already holds the results of sweep prov-a; choose another --out, or pass --overwrite/);
  assert.equal((JSON.parse(readFileSync(join(out, "run.json"), "utf8")) as { sweep_id: string }).sweep_id, "prov-a");
  // --overwrite replaces it, leaving nothing of the old run.
  const over = await local(specFile, out, "--id", "prov-c", "--overwrite");
  assert.equal(over.exitCode, 0, over.stderr);
  assert.equal((JSON.parse(readFileSync(join(out, "run.json"), "utf8")) as { sweep_id: string }).sweep_id, "prov-c");
  assert.ok(!readFileSync(join(out, "results.csv"), "utf8").includes("prov-a"));
  assert.ok(existsSync(join(out, "trace.json")));
});

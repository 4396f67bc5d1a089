/**
 * The experiment kinds (knockout, sever, lre, edit) through the whole system: sweepctl launches,
 * the coordinator plans and leases, agents run RunExperiment on real engine workers, results go
 * through JetStream into the coordinator's aggregate, and `sweepctl results` exports per-shard rows.
 * Each sweep must equal the same planned shards run on one engine worker alone.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { execa } from "execa";
import { EngineClient } from "@factsweep/node-agent";
import { KindAggregator, kindRowRecord, parseSweepSpec, planSweep, type KindRow } from "@factsweep/planning";
import { Cluster, REPO } from "./cluster.js";

const MODELS = join(REPO, "models");
const RELATIONS = join(MODELS, "world/relations");

let cluster: Cluster;
before(async () => {
  cluster = await new Cluster({ agents: 2, modelRoots: [MODELS] }).start();
});
after(async () => {
  await cluster?.stop();
});

/** The spec's shards run on one engine worker alone, folded by the same aggregator: rows keyed by shard part + row identity. */
async function engineAlone(specPath: string): Promise<KindRow[]> {
  const spec = parseSweepSpec(readFileSync(specPath, "utf8"), { baseDir: dirname(specPath) });
  const plan = planSweep(spec, "ref");
  const agg = new KindAggregator({ sweepId: "ref", spec, prompts: plan.prompts, modelType: plan.modelConfig.modelType, numLayers: plan.modelConfig.numLayers });
  const py = (await execa("bash", [join(REPO, "scripts/find-python.sh")])).stdout.trim();
  const child = spawn(py, ["-m", "engine"], { cwd: REPO, env: { ...process.env, PYTHONPATH: REPO }, stdio: ["pipe", "pipe", "inherit"] });
  const engine = new EngineClient({ stdin: child.stdin, stdout: child.stdout });
  try {
    await engine.hello();
    await engine.loadModel({ modelId: "m", path: plan.model.path, dtype: "float32", device: "cpu" });
    for (const sh of plan.shards) {
      const p = sh.prompt!;
      let info;
      if (sh.kind === "knockout" || sh.kind === "sever") {
        info = await engine.preparePromptSpec("m", p.promptKey, p);
      }
      const r = await engine.runExperiment({ modelId: "m", kind: sh.kind, promptKey: p.promptKey, paramsJson: sh.paramsJson }, { timeoutMs: 300_000 });
      agg.add({
        sweepId: "ref",
        shardId: sh.shardId,
        promptIndex: p.index,
        agentId: "",
        attempt: 0,
        leaseId: "",
        answerId: info?.answerId ?? 0,
        pClean: 0,
        pCorrupt: 0,
        cells: [],
        engineSeconds: 0,
        worker: "",
        resultJson: r.resultJson,
      });
    }
    await engine.shutdown();
  } finally {
    child.kill();
  }
  return [...agg.rows()].map(kindRowRecord);
}

/** Rows without the sweep id (the shard id keeps only its index.part). */
const norm = (rows: KindRow[]): KindRow[] =>
  rows.map(({ sweep_id: _s, model: _m, shard_id, ...rest }) => ({ shard: String(shard_id).split(".").slice(-2).join("."), ...rest }));

function assertRowsClose(got: KindRow[], want: KindRow[], what: string): void {
  assert.equal(got.length, want.length, `${what}: ${got.length} rows, expected ${want.length}`);
  const g = norm(got);
  const w = norm(want);
  g.forEach((row, i) => {
    for (const [k, v] of Object.entries(w[i]!)) {
      const x = row[k];
      if (typeof v === "number" && typeof x === "number") assert.ok(Math.abs(x - v) <= 1e-6 * Math.max(1, Math.abs(v)), `${what} row ${i} ${k}: ${x} vs ${v}`);
      else assert.deepEqual(x, v, `${what} row ${i} ${k}`);
    }
  });
}

async function runKind(id: string, body: string): Promise<{ rows: KindRow[]; reference: KindRow[]; csv: string }> {
  const spec = cluster.writeSpec(`${id}.yaml`, `name: ${id}\n${body}`);
  const launched = await cluster.sweepctl("launch", spec, "--id", id, "--quiet");
  assert.equal(launched.exitCode, 0, `launch failed: ${launched.stderr}\n${cluster.logs()}`);
  const info = await cluster.waitFor(id, (s) => s.state !== "running", 600_000);
  assert.equal(info.state, "done", `${id}: ${JSON.stringify(info)}\n${cluster.logs()}`);
  assert.ok(info.counts.shardsTotal > 0 && info.counts.shardsDone === info.counts.shardsTotal);
  const out = await cluster.sweepctl("results", id, "--format", "jsonl");
  assert.equal(out.exitCode, 0, out.stderr);
  const rows = out.stdout
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as KindRow);
  const csv = (await cluster.sweepctl("results", id, "--format", "csv")).stdout;
  return { rows, reference: await engineAlone(spec), csv };
}

test("a knockout sweep on the tiny Mamba equals the engine run alone, one row per (prompt, centre, token set)", async () => {
  const { rows, reference, csv } = await runKind(
    "e2e-knockout",
    `kind: knockout
model: { id: mamba-facts, path: ${join(MODELS, "mamba-facts")} }
dataset: { relations: [${join(RELATIONS, "company_country.json")}, ${join(RELATIONS, "person_occupation.json")}], per_relation: 1 }
knockout: { window: 2, token_sets: [subject, last], corpus: ${join(MODELS, "world/filler.txt")}, max_corpus: 8 }
layers: [1, 5]
`,
  );
  assertRowsClose(rows, reference, "knockout");
  assert.equal(rows.length, 2 * 2 * 2);
  assert.ok(rows.every((r) => r.kind === "knockout" && typeof r.relative_change === "number"));
  assert.match(csv.split("\n")[0]!, /^sweep_id,model,kind,shard_id,prompt_index,relation,subject,token_set,layer,window,p,p_knocked,relative_change$/);
});

test("a sever sweep on the tiny NeoX equals the engine run alone, and restoring the last token after the last block recovers the clean run whatever path is frozen", async () => {
  const { rows, reference } = await runKind(
    "e2e-sever",
    `kind: sever
model: { id: neox-facts, path: ${join(MODELS, "neox-facts")} }
dataset: { relations: [${join(RELATIONS, "company_country.json")}], per_relation: 2 }
corruption: { kind: swap, seed: 1 }
sever: { tokens: [subject_last, last] }
layers: [0, 5]
shard_cells: 5
`,
  );
  assertRowsClose(rows, reference, "sever");
  assert.equal(rows.length, 2 * 2 * 2 * 3);
  // restoring the last token's state after the last block (5 of 6) recovers the clean run fully, whatever is frozen
  const lastTop = rows.filter((r) => r.token_selector === "last" && r.layer === 5);
  assert.equal(lastTop.length, 2 * 3);
  assert.ok(
    lastTop.every((r) => Math.abs(Number(r.p) - Number(r.p_clean)) < 1e-5),
    JSON.stringify(lastTop),
  );
});

test("an lre sweep on the tiny Mamba equals the engine run alone, one row per (layer, trial, β)", async () => {
  const { rows, reference } = await runKind(
    "e2e-lre",
    `kind: lre
model: { id: mamba-facts, path: ${join(MODELS, "mamba-facts")} }
dataset: { relations: [${join(RELATIONS, "company_country.json")}] }
lre: { icl: 2, in_context: false, trials: 2, test: 4, betas: [1, 4], embedding: false }
layers: [6]
`,
  );
  assertRowsClose(rows, reference, "lre");
  assert.deepEqual(
    rows.map((r) => [r.trial, r.beta]),
    [
      [0, 1],
      [0, 4],
      [1, 1],
      [1, 4],
    ],
  );
});

test("an edit sweep on the tiny Mamba equals the engine run alone and restores the weights after each case", async () => {
  // cov_shards 1: the cluster's C (one covariance shard, fetched by the agents) is bit-identical to the
  // engine's own, so rows match to 1e-6; several shards sum in another order (covariance.test.ts).
  const { rows, reference } = await runKind(
    "e2e-edit",
    `kind: edit
model: { id: mamba-facts, path: ${join(MODELS, "mamba-facts")} }
dataset: { relations: [${join(RELATIONS, "company_country.json")}] }
edit: { cases: 1, matrices: [W_o], max_corpus: 64, cov_shards: 1, paraphrases: 2, neighbours: 2, generation: true, hparams: { v_num_grad_steps: 5, context_template_length_params: [[5, 2]], cov_ridge: 0.01 } }
layers: [2]
`,
  );
  assertRowsClose(rows, reference, "edit");
  assert.equal(rows.length, 1);
  assert.equal(rows[0]!.restored, true);
  assert.equal(rows[0]!.matrix, "W_o");
  // Generation entropy: the engine's sampled ids, decoded by the coordinator and counted in words (ROME's measure).
  assert.ok(typeof rows[0]!.entropy === "number" && rows[0]!.entropy > 0, JSON.stringify(rows[0]));
  assert.ok(typeof rows[0]!.entropy_tokens === "number" && rows[0]!.entropy !== rows[0]!.entropy_tokens, JSON.stringify(rows[0]));
});

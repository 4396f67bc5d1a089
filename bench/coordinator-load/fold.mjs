#!/usr/bin/env node
// The restart's aggregate fold in one process (issue 16): S stored ShardResults of the load sweep
// (spec.mjs, one cell each, the `fakeEngine` double's values) decoded and added to a fresh
// ResultAggregator, then every planned shard asked `has` (the restore's "already counted?"), as a
// restarted coordinator does with its snapshot. Each trial runs in its own child process (heap
// measured after a forced GC); this build and a baseline build's planning package alternate, so the
// pairs see the same machine noise.
//
//   node bench/coordinator-load/fold.mjs --baseline /tmp/base/planning/dist/index.js [--shards 1000000] [--pairs 3] [--out file.json]
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { values: opt } = parseArgs({
  options: {
    shards: { type: "string", default: "1000000" },
    pairs: { type: "string", default: "3" },
    baseline: { type: "string", default: "" },
    out: { type: "string", default: "" },
    // internal: one trial in this process
    child: { type: "string", default: "" },
    data: { type: "string", default: "" },
  },
});

if (opt.child) {
  // One trial: the planning build at opt.child folds the framed results in opt.data.
  const { ResultAggregator } = await import(pathToFileURL(opt.child).href);
  const { sweep } = await import("@factsweep/proto");
  const { prompts, ids } = JSON.parse(readFileSync(opt.data + ".json", "utf8"));
  const buf = readFileSync(opt.data);
  const frames = [];
  for (let at = 0; at < buf.length;) {
    const len = buf.readUInt32BE(at);
    frames.push(buf.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  const promptSpecs = prompts.map((p) => sweep.PromptSpec.fromJSON(p));
  global.gc();
  const mem = () => process.memoryUsage().heapUsed + process.memoryUsage().external; // typed arrays live outside the heap
  const heap0 = mem();
  const t0 = performance.now();
  const agg = new ResultAggregator({ sweepId: "fold", prompts: promptSpecs, model: "mamba-facts", corruption: "swap" });
  // As the build's coordinator folds a snapshot: builds with addEncoded read the stored bytes in place.
  if (typeof agg.addEncoded === "function") for (const f of frames) agg.addEncoded(f);
  else for (const f of frames) agg.add(sweep.ShardResult.decode(f));
  const t1 = performance.now();
  let counted = 0;
  for (const id of ids) if (agg.has(id)) counted++;
  const t2 = performance.now();
  global.gc();
  const heap = mem() - heap0;
  if (counted !== frames.length || agg.cells !== frames.length) throw new Error(`counted ${counted}, cells ${agg.cells}, of ${frames.length}`);
  process.stdout.write(JSON.stringify({ fold_ms: t1 - t0, has_ms: t2 - t1, heap_mb: heap / 2 ** 20 }));
  process.exit(0);
}

const { fakeEngine } = await import("@factsweep/testing");
const { sweep } = await import("@factsweep/proto");
const { DEFAULT_PLAN_LIMITS, parseSweepSpec, planSweep } = await import("@factsweep/planning");
const { writeLoadSpec } = await import("./spec.mjs");
const shards = Number(opt.shards);
const work = mkdtempSync(join(tmpdir(), "fold-"));
const spec = writeLoadSpec(work, join(root, "models/mamba-facts"), shards);
const limits = { ...DEFAULT_PLAN_LIMITS, maxShards: 2_000_000, maxSpecBytes: 8 * 2 ** 20 };
const plan = planSweep(parseSweepSpec(spec.text, { baseDir: work, limits }), "fold");
const parts = [];
for (const sh of plan.shards) {
  const bytes = sweep.ShardResult.encode(fakeEngine({ ...sh, sweepId: "fold", attempt: 1 }, "bench")).finish();
  const len = Buffer.alloc(4);
  len.writeUInt32BE(bytes.length);
  parts.push(len, bytes);
}
const data = join(work, "results.bin");
writeFileSync(data, Buffer.concat(parts));
writeFileSync(data + ".json", JSON.stringify({ prompts: plan.prompts.map((p) => sweep.PromptSpec.toJSON(p)), ids: plan.shards.map((s) => s.shardId) }));
console.error(`${plan.shards.length} results encoded (${work})`);
const current = join(root, "planning/dist/index.js");
const builds = [...(opt.baseline ? [["baseline", resolve(opt.baseline)]] : []), ["current", current]];
const trials = [];
for (let i = 0; i < Number(opt.pairs); i++) {
  for (const [name, path] of builds) {
    const me = fileURLToPath(import.meta.url);
    const out = execFileSync(process.execPath, ["--expose-gc", "--max-old-space-size=8192", me, "--child", path, "--data", data], {
      cwd: root,
      encoding: "utf8",
    });
    const r = { build: name, pair: i + 1, ...JSON.parse(out) };
    for (const k of ["fold_ms", "has_ms", "heap_mb"]) r[k] = Math.round(r[k] * 10) / 10;
    console.error(JSON.stringify(r));
    trials.push(r);
  }
}
const mean = (name, k) => {
  const xs = trials.filter((t) => t.build === name).map((t) => t[k]);
  return xs.reduce((a, b) => a + b, 0) / xs.length;
};
const summary = { shards: plan.shards.length };
for (const [name] of builds) for (const k of ["fold_ms", "has_ms", "heap_mb"]) summary[`${name}_${k}`] = Math.round(mean(name, k) * 10) / 10;
if (opt.baseline) summary.fold_ratio = Math.round((summary.current_fold_ms / summary.baseline_fold_ms) * 100) / 100;
console.table(trials);
console.log(JSON.stringify(summary));
if (opt.out) {
  const command = `node bench/coordinator-load/fold.mjs --shards ${opt.shards} --pairs ${opt.pairs}${opt.baseline ? ` --baseline ${opt.baseline}` : ""}`;
  mkdirSync(dirname(resolve(opt.out)), { recursive: true });
  writeFileSync(
    resolve(opt.out),
    JSON.stringify(
      { bench: "coordinator-fold", command, hardware: `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}`, date: new Date().toISOString(), summary, trials },
      null,
      2,
    ) + "\n",
  );
}

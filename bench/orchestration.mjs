#!/usr/bin/env node
// Orchestration overhead: the same planned cells computed (a) by one engine worker driven
// directly, shard by shard, and (b) through the whole system (embedded nats-server, coordinator,
// one node agent with one engine worker: `sweepctl local`). Both in this one script, same machine,
// same engine; the figure is the ratio of the two times.
//
//   node bench/orchestration.mjs [spec=examples/demo/mamba-swap.yaml] [--agents 1] [--repeats 2]
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { EngineClient } from "@factsweep/node-agent";
import { parseSweepSpec, planSweep } from "@factsweep/planning";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : dflt;
};
const agents = Number(flag("--agents", "1"));
const repeats = Number(flag("--repeats", "2"));
const specPath = resolve(args[0] ?? join(root, "examples/demo/mamba-swap.yaml"));

async function engineAlone() {
  const spec = parseSweepSpec(readFileSync(specPath, "utf8"), { baseDir: dirname(specPath) });
  const plan = planSweep(spec, "bench");
  const py = execFileSync("bash", [join(root, "scripts/find-python.sh")])
    .toString()
    .trim();
  const child = spawn(py, ["-m", "engine"], { cwd: root, env: { ...process.env, PYTHONPATH: root }, stdio: ["pipe", "pipe", "ignore"] });
  const engine = new EngineClient({ stdin: child.stdin, stdout: child.stdout });
  await engine.hello();
  const model = plan.shards[0].model;
  await engine.loadModel({ modelId: "m", path: model.path, dtype: model.dtype || "float32", device: "cpu", allowPickle: false, cacheBudgetBytes: 0 });
  const t0 = performance.now();
  let cells = 0;
  for (const shard of plan.shards) {
    const p = shard.prompt;
    await engine.preparePromptSpec("m", p.promptKey, p);
    await engine.runCells({ modelId: "m", promptKey: p.promptKey, cells: shard.cells, slowPath: false });
    cells += shard.cells.length;
  }
  const seconds = (performance.now() - t0) / 1000;
  await engine.shutdown();
  child.kill();
  return { seconds, cells, shards: plan.shards.length };
}

function throughSystem() {
  const out = mkdtempSync(join(tmpdir(), "orch-"));
  execFileSync("node", [join(root, "sweepctl/dist/cli.js"), "local", specPath, "--agents", String(agents), "--workers", "1", "--out", out, "--quiet"], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  const info = JSON.parse(readFileSync(join(out, "sweep.json"), "utf8"));
  // From the launch (shards durable) to the last result aggregated: the sweep as a user waits for it.
  const seconds = (Number(info.finishedMs) - Number(info.createdMs)) / 1000;
  return { seconds, cells: Number(info.counts.doneCells), shards: info.counts.shardsTotal };
}

const rows = [];
for (let r = 0; r < repeats; r++) {
  const a = await engineAlone();
  const s = throughSystem();
  rows.push({ engine: a, system: s, overhead: s.seconds / a.seconds - 1 });
  console.error(
    `run ${r + 1}: engine alone ${a.seconds.toFixed(2)} s (${a.cells} cells), system ${s.seconds.toFixed(2)} s (${s.cells} cells), overhead ${(100 * (s.seconds / a.seconds - 1)).toFixed(1)}%`,
  );
}
const med = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
console.log(
  JSON.stringify(
    {
      spec: specPath,
      agents,
      cpus: cpus().length,
      cpu: cpus()[0]?.model,
      node: process.version,
      repeats,
      rows,
      median_overhead: med(rows.map((r) => r.overhead)),
    },
    null,
    1,
  ),
);

/**
 * `sweepctl plan <spec>` (and `launch --dry-run`): what a sweep would run, planned on this machine
 * exactly as the coordinator plans it (the same planSweep): prompts kept and skipped with the
 * reasons, cells, shards, and a time estimate from a measured rate: the connected agents' (`--agents`:
 * the coordinator's Agents, what their results took), `--rate`, or earlier `local` runs of the same
 * model (`--rate-from`, their run.json and sweep.json). The work of a cell is one
 * corrupted forward (a noise cell runs `samples` of them), so rates carry across corruptions.
 * Memory per worker is the engine's own arithmetic (`python -m engine.estimate`, from config.json
 * alone), not a copy of it here: weights, the prompt cache, the smallest micro-batch.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { control } from "@factsweep/proto";
import { parseSweepSpec, planSweep, promptErrorReasons, type SweepPlan, type SweepSpec } from "@factsweep/planning";
import { CliExit, EXIT } from "./cli-output.js";
import { readSpec } from "./local.js";

/** Work units of a cell: noise runs `samples` corrupted copies, swap one. */
export const workPerCell = (spec: SweepSpec): number => (spec.corruption.kind === "noise" ? spec.corruption.samples : 1);

/** A measured rate: work units per second of a finished run of one model, and where it came from. */
export interface MeasuredRate {
  model: string;
  workPerSecond: number;
  source: string;
  agents?: number;
  /** Engine workers that made the rate, in all (agents × workers per agent). */
  workers?: number;
}

/** The rate of a finished `sweepctl local` run folder (run.json: spec and agents; sweep.json: cells and times). */
export function rateOfRun(dir: string): MeasuredRate {
  const runFile = join(dir, "run.json");
  const sweepFile = join(dir, "sweep.json");
  if (!existsSync(runFile) || !existsSync(sweepFile))
    throw new Error(`${dir}: no run.json and sweep.json; expected the --out folder of a finished \`sweepctl local\` run`);
  const run = JSON.parse(readFileSync(runFile, "utf8")) as { spec: string; agents?: number; workers?: number };
  const info = JSON.parse(readFileSync(sweepFile, "utf8")) as {
    state: string;
    createdMs: string | number;
    finishedMs: string | number;
    counts?: { doneCells?: number };
  };
  if (info.state !== "done") throw new Error(`${dir}: the run ended ${info.state}, not done; its rate would mislead`);
  const spec = parseSweepSpec(run.spec, { baseDir: dir });
  const seconds = (Number(info.finishedMs) - Number(info.createdMs)) / 1000;
  return {
    model: spec.model.id,
    workPerSecond: ((info.counts?.doneCells ?? 0) * workPerCell(spec)) / seconds,
    source: dir,
    ...(run.agents ? { agents: run.agents } : {}),
    ...(run.agents ? { workers: run.agents * (run.workers ?? 1) } : {}),
  };
}

/**
 * The rate of the connected agents on `model` (the coordinator's Agents: forwards over engine seconds
 * of each agent's counted results, per worker): the sum over the agents that have run the model of
 * their per-worker rate × their workers. Undefined when none has.
 */
export function rateOfAgents(agents: control.AgentStatus[], model: string): MeasuredRate | undefined {
  const measured = agents.flatMap((a) =>
    a.rates.filter((r) => r.model === model && r.engineSeconds > 0).map((r) => ({ a, perWorker: r.forwards / r.engineSeconds })),
  );
  if (measured.length === 0) return undefined;
  const workers = measured.reduce((n, m) => n + Math.max(1, m.a.workers), 0);
  return {
    model,
    workPerSecond: measured.reduce((sum, m) => sum + m.perWorker * Math.max(1, m.a.workers), 0),
    source: `the coordinator's connected agents (${measured.map((m) => m.a.agentId).join(", ")}; engine time of their counted results)`,
    agents: measured.length,
    workers,
  };
}

/** What `plan` prints, as data. */
export interface PlanSummary {
  name: string;
  kind: string;
  model: string;
  layers: number;
  prompts: number;
  skipped: { reason: string; count: number }[];
  cells: number;
  shards: number;
  cellsPerShard: { min: number; median: number; max: number };
  work: number;
  /** Wall time at the rate, and worker-seconds (GPU-seconds on GPU workers) when the rate says how many workers made it. */
  estimate?: { seconds: number; workerSeconds?: number; rate: MeasuredRate };
  /** Bytes a worker needs (engine.estimate), or why there is no figure. */
  memory?: WorkerMemory | { unknown: string };
  /** An edit's `layers: { from_trace }`: the trace and, per matrix, how many cases each layer edits. */
  fromTrace?: { sweepId: string; chosen: boolean; matrices: { matrix: string; site: string; window: number; cases: Record<number, number> }[] };
}

/** What `python -m engine.estimate` prints (bytes; see engine/estimate.py). */
export interface WorkerMemory {
  model_type: string;
  dtype: string;
  weights: number;
  prompt_cache_max: number;
  prompt_cache_total: number;
  longest_prompt_tokens: number;
  batch_min: { gpu: number; cpu: number };
  minimum: { gpu: number; cpu: number };
}

/** The repository holding engine/ and scripts/ (sweepctl/dist/.. /..). */
const ENGINE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/**
 * Memory per worker for the planned prompts, from the engine's Python (scripts/find-python.sh:
 * FACTSWEEP_PYTHON, then a python3 with torch). Only trace sweeps prepare prompts into the cache;
 * the other kinds get the weights and the batch. No Python here is not an error: the figure is
 * then unknown, with the reason.
 */
export async function workerMemory(spec: SweepSpec, plan: SweepPlan): Promise<WorkerMemory | { unknown: string }> {
  const { execa } = await import("execa");
  const tokens = plan.prompts.map((p) => p.inputIds.length).filter((n) => n > 0);
  if (tokens.length === 0) return { unknown: "no prompt planned" };
  const py = await execa("bash", [join(ENGINE_ROOT, "scripts", "find-python.sh")], { reject: false });
  if (py.exitCode !== 0 || !py.stdout.trim()) return { unknown: `the engine's Python was not found here (${py.stderr.trim().split("\n")[0]})` };
  const r = await execa(py.stdout.trim(), ["-m", "engine.estimate"], {
    cwd: ENGINE_ROOT,
    env: { PYTHONPATH: ENGINE_ROOT },
    input: JSON.stringify({ path: spec.model.path, dtype: spec.model.dtype, samples: workPerCell(spec), tokens }),
    reject: false,
    timeout: 120_000,
  });
  if (r.exitCode !== 0) return { unknown: `engine.estimate failed: ${String(r.stderr).trim().split("\n").at(-1)}` };
  const m = JSON.parse(String(r.stdout)) as WorkerMemory;
  return spec.kind === "trace"
    ? m
    : { ...m, prompt_cache_max: 0, prompt_cache_total: 0, minimum: { gpu: m.minimum.gpu - m.prompt_cache_max, cpu: m.minimum.cpu - m.prompt_cache_max } };
}

const KiB = 1024;
/** Bytes for people: 1.4 GiB, 312 MiB, 40 KiB. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= KiB && i < units.length - 1) {
    v /= KiB;
    i++;
  }
  return i === 0 ? `${n} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** Plans `spec` here (reads config.json, tokenizer, dataset) and estimates its time from `rates` of the same model. */
export function planSummary(spec: SweepSpec, rates: MeasuredRate[] = [], plan: SweepPlan = planSweep(spec, "plan")): PlanSummary {
  const sizes = plan.shards.map((s) => s.units || s.cells.length).sort((a, b) => a - b);
  const work = plan.plannedCells * workPerCell(spec);
  const rate = rates.find((r) => r.model === spec.model.id);
  return {
    name: spec.name,
    kind: spec.kind,
    model: spec.model.id,
    layers: plan.model.numLayers,
    prompts: plan.prompts.length,
    skipped: promptErrorReasons(plan.promptErrors),
    cells: plan.plannedCells,
    shards: plan.shards.length,
    cellsPerShard: { min: sizes[0] ?? 0, median: sizes[Math.floor(sizes.length / 2)] ?? 0, max: sizes.at(-1) ?? 0 },
    work,
    ...(plan.traceLayers ? { fromTrace: fromTraceSummary(plan) } : {}),
    ...(rate
      ? { estimate: { seconds: work / rate.workPerSecond, ...(rate.workers ? { workerSeconds: (work / rate.workPerSecond) * rate.workers } : {}), rate } }
      : {}),
  };
}

/** Cases per edited layer of each matrix, from the planned shards' params. */
function fromTraceSummary(plan: SweepPlan): NonNullable<PlanSummary["fromTrace"]> {
  const t = plan.traceLayers!;
  const matrices = t.matrices.map((m) => ({ matrix: m.matrix, site: m.site, window: m.window, cases: {} as Record<number, number> }));
  for (const sh of plan.shards) {
    const { matrix, layer, cov_only } = JSON.parse(sh.paramsJson) as { matrix: string; layer: number; cov_only?: boolean };
    if (cov_only) continue; // a covariance shard computes C, it edits no case
    const m = matrices.find((x) => x.matrix === matrix);
    if (m) m.cases[layer] = (m.cases[layer] ?? 0) + 1;
  }
  return { sweepId: t.sweepId, chosen: !t.editLayers, matrices };
}

const dur = (s: number): string => (s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

/** The plan as the CLI prints it. */
export function describePlan(p: PlanSummary, spec: SweepSpec): string {
  const lines = [
    `sweep      ${p.name} (${p.kind}), model ${p.model} (${p.layers} layers)`,
    `prompts    ${p.prompts} planned, ${p.skipped.reduce((n, s) => n + s.count, 0)} skipped`,
    ...p.skipped.map((s) => `  ${s.count} × ${s.reason}`),
    `cells      ${p.cells}` + (workPerCell(spec) > 1 ? ` (× ${workPerCell(spec)} noise samples = ${p.work} corrupted forwards)` : ""),
    `shards     ${p.shards} (cells per shard: min ${p.cellsPerShard.min}, median ${p.cellsPerShard.median}, max ${p.cellsPerShard.max})`,
  ];
  if (p.fromTrace) {
    const how = p.fromTrace.chosen ? "each case at its fact's peak IE at the last subject token" : "every case at each of edit_layers, the trace beside";
    lines.push(`layers     from trace sweep ${p.fromTrace.sweepId} (${how}); cases per layer:`);
    for (const m of p.fromTrace.matrices)
      lines.push(
        `  ${m.matrix} ← ${m.site} (window ${m.window}): ${Object.entries(m.cases)
          .map(([l, n]) => `layer ${l} × ${n}`)
          .join(", ")}`,
      );
  }
  if (p.estimate) {
    const r = p.estimate.rate;
    const who = r.agents ? ` with ${r.agents} agent(s), ${r.workers ?? r.agents} engine worker(s) in all` : "";
    lines.push(
      `estimate   ${dur(p.estimate.seconds)} at ${r.workPerSecond.toFixed(1)} forwards/s, measured by ${r.source}${who} (same machines and agents assumed)` +
        (p.estimate.workerSeconds !== undefined ? `; ${dur(p.estimate.workerSeconds)} of worker time (GPU time on GPU workers)` : ""),
    );
  } else {
    lines.push(
      `estimate   none: no measured rate of ${p.model}; pass --agents (the coordinator's agents that have run it), --rate <forwards/s> or --rate-from <a finished local run of this model>`,
    );
  }
  const m = p.memory;
  if (m && "unknown" in m) lines.push(`memory     unknown: ${m.unknown}`);
  else if (m) {
    const cache =
      spec.kind === "trace"
        ? ` + the longest prompt's (${m.longest_prompt_tokens} tokens) cached runs ${formatBytes(m.prompt_cache_max)}`
        : " (a " + spec.kind + " sweep keeps no prompt cache)";
    lines.push(
      `memory     per worker at least ${formatBytes(m.minimum.gpu)} on a GPU, ${formatBytes(m.minimum.cpu)} on a CPU: weights ${formatBytes(m.weights)} (${m.dtype})${cache} + one cell's micro-batch (${formatBytes(m.batch_min.gpu)} GPU, ${formatBytes(m.batch_min.cpu)} CPU)`,
    );
    if (spec.kind === "trace")
      lines.push(
        `           every prompt's runs: ${formatBytes(m.prompt_cache_total)}; the engine gives half of what is free to its cache (least recently used out) and sizes micro-batches from the rest`,
      );
  }
  return lines.join("\n");
}

/** `plan` and `launch --dry-run`: the spec planned here, printed, with a time estimate when a rate is known. */
export async function printPlan(
  file: string,
  o: { rate?: number; rateFrom?: string[]; json?: boolean },
  agents?: () => Promise<control.AgentStatus[]>,
): Promise<void> {
  const { text, dir } = readSpec(file);
  const spec = parseSweepSpec(text, { baseDir: dir, format: extname(file) === ".json" ? "json" : "yaml" });
  const fromAgents = agents ? rateOfAgents(await agents(), spec.model.id) : undefined;
  if (agents && !fromAgents) console.error(`plan: no connected agent has run ${spec.model.id} yet; no estimate from the agents`);
  const rates = [
    ...(fromAgents ? [fromAgents] : []),
    ...(o.rate ? [{ model: spec.model.id, workPerSecond: o.rate, source: "--rate" }] : []),
    ...(o.rateFrom ?? []).map((d) => {
      try {
        return rateOfRun(resolve(d));
      } catch (err) {
        throw new CliExit(EXIT.usage, `--rate-from ${(err as Error).message}`);
      }
    }),
  ];
  const plan = planSweep(spec, "plan");
  const p: PlanSummary = { ...planSummary(spec, rates, plan), memory: await workerMemory(spec, plan) };
  console.log(o.json ? JSON.stringify(p, null, 2) : describePlan(p, spec));
}

/**
 * Where the project's data lives for tests and benchmarks: the repository, the shared data folder
 * (DESIGN.md calls it `../shared` from the repository root; worktrees sit one level deeper, CI may
 * set FACTSWEEP_SHARED_DIR), the golden tiny models and their reference tensors, specs over them,
 * and the engine worker command.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { engine, sweep } from "@factsweep/proto";

/** The repository's root folder. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The shared data folder (golden/, data/), or undefined when it is not on this machine. */
export const SHARED_DIR: string | undefined = [
  process.env.FACTSWEEP_SHARED_DIR,
  join(REPO_ROOT, "../shared"),
  join(REPO_ROOT, "../../shared"),
  "/work/shared",
].find((p): p is string => !!p && existsSync(join(p, "golden")));

/** Path under the shared folder, or undefined when absent. */
export function sharedPath(...parts: string[]): string | undefined {
  if (!SHARED_DIR) return undefined;
  const p = join(SHARED_DIR, ...parts);
  return existsSync(p) ? p : undefined;
}

/** The golden folder of the shared data (a path that does not exist when the data is absent). */
export const GOLDEN_DIR = SHARED_DIR ? join(SHARED_DIR, "golden") : "/nonexistent/golden";

/** The golden folder: $GOLDEN_DIR, else the shared data's golden/; undefined when neither has mamba-tiny. */
export function goldenDir(): string | undefined {
  const candidates = [process.env.GOLDEN_DIR, GOLDEN_DIR];
  return candidates.find((c): c is string => !!c && existsSync(join(c, "mamba-tiny", "config.json")));
}

/** Reason to skip engine tests, or false. */
export function skipWithoutGolden(): string | false {
  return goldenDir() ? false : "golden models not found (set GOLDEN_DIR to the folder holding mamba-tiny/)";
}

/** How to start the engine worker (the node agent's `EngineCommand`). */
export interface WorkerCommand {
  file: string;
  args: string[];
  env: Record<string, string>;
}

/** A spec over the golden tiny Mamba with inline pre-tokenized prompts (noise corruption). */
export function goldenSpec(
  opts: { name?: string; prompts?: number; modelPath?: string; shardCells?: number; maxAttempts?: number; extra?: string } = {},
): string {
  const prompts = Array.from({ length: opts.prompts ?? 2 }, (_, i) => `    - { input_ids: [${11 + i}, 25, 37, ${40 + i}, 52, 61], subject: [1, 3] }`).join(
    "\n",
  );
  return [
    `name: ${opts.name ?? "golden test"}`,
    "kind: trace",
    "model:",
    "  id: mamba-tiny",
    `  path: ${opts.modelPath ?? join(GOLDEN_DIR, "mamba-tiny")}`,
    "dataset:",
    "  prompts:",
    prompts,
    "corruption: { kind: noise, samples: 2, seed: 3 }",
    "grid:",
    "  - { site: residual, window: 1 }",
    "layers: all",
    "tokens: all",
    `shard_cells: ${opts.shardCells ?? 12}`,
    `max_attempts: ${opts.maxAttempts ?? 3}`,
    opts.extra ?? "",
  ].join("\n");
}

/** A folder with a spec file, for CLI tests. */
export function tempSpec(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), "factsweep-spec-"));
  const f = join(dir, "spec.yaml");
  writeFileSync(f, text);
  return f;
}

/** Reads the tensors of a .safetensors file (I64 and F32 only; enough for the goldens). */
export function readSafetensors(path: string): Map<string, { shape: number[]; data: number[] }> {
  const buf = readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString("utf8")) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + headerLen;
  const out = new Map<string, { shape: number[]; data: number[] }>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const bytes = buf.subarray(base + t.data_offsets[0], base + t.data_offsets[1]);
    const data: number[] = [];
    if (t.dtype === "I64") for (let i = 0; i < bytes.length; i += 8) data.push(Number(bytes.readBigInt64LE(i)));
    else if (t.dtype === "F32") for (let i = 0; i < bytes.length; i += 4) data.push(bytes.readFloatLE(i));
    else continue;
    out.set(name, { shape: t.shape, data });
  }
  return out;
}

/** The engine worker command, with the Python that has torch. */
export async function engineCommand(): Promise<WorkerCommand> {
  const py = process.env.FACTSWEEP_PYTHON ?? (await execa("bash", [join(REPO_ROOT, "scripts", "find-python.sh")])).stdout.trim();
  return { file: py, args: ["-m", "engine"], env: { PYTHONPATH: REPO_ROOT } };
}

/**
 * A shard of golden prompt p0 of mamba-tiny with swap corruption: every residual cell (layer,
 * token). Its reference is `p0.trace.swap.layer.w1` of the golden file.
 */
export function goldenSwapShard(sweepId: string, shardId = `${sweepId}.0.0`): { shard: sweep.Shard; reference: number[][] } {
  const dir = goldenDir()!;
  const t = readSafetensors(join(dir, "mamba-tiny.golden.safetensors"));
  const ids = t.get("p0.input_ids")!.data;
  const swap = t.get("p0.swap.input_ids")!.data;
  const grid = t.get("p0.trace.swap.layer.w1")!;
  const [L, T] = grid.shape as [number, number];
  const cells: engine.Cell[] = [];
  const reference: number[][] = [];
  for (let l = 0; l < L; l++) {
    reference.push(grid.data.slice(l * T, (l + 1) * T));
    for (let tok = 0; tok < T; tok++) cells.push(engine.Cell.fromPartial({ site: engine.Site.SITE_RESIDUAL, layer: l, token: tok, window: 1 })); // as decoded: head undefined
  }
  const shard: sweep.Shard = {
    paramsJson: "",
    sweepId,
    shardId,
    kind: "trace",
    model: { modelId: "mamba-tiny", path: join(dir, "mamba-tiny"), dtype: "float32", modelType: "mamba", numLayers: L },
    prompt: {
      index: 0,
      promptKey: `${sweepId}.0`,
      text: "",
      subject: "",
      object: "",
      relation: "",
      inputIds: ids,
      subjectStart: 1,
      subjectEnd: 3,
      corruption: { kind: { $case: "swap", swap: { corruptedIds: swap } } },
      answerId: undefined,
    },
    cells,
    attempt: 1,
    units: cells.length,
  };
  return { shard, reference };
}

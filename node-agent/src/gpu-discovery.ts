/**
 * Which engine workers this host runs: one per visible GPU (from `nvidia-smi`, filtered by
 * `CUDA_VISIBLE_DEVICES` as CUDA itself filters), or N CPU workers in CPU mode.
 */
import { execa } from "execa";
import { GpuDiscoveryError } from "./errors.js";

/** One GPU as `nvidia-smi --query-gpu=index,uuid,memory.total` reports it. */
export interface GpuInfo {
  /** nvidia-smi's index (PCI order, which is what CUDA_VISIBLE_DEVICES indices refer to by default). */
  index: number;
  uuid: string;
  memoryBytes: number;
}

/** A place for one engine worker. */
export interface WorkerSlot {
  /** Name in logs, metrics and AgentHello.workers: "cuda:<nvidia-smi index>" or "cpu:<n>". */
  name: string;
  /** Device the engine loads models on: "cuda:0" (the worker sees only its own GPU) or "cpu". */
  device: "cuda:0" | "cpu";
  /** CUDA_VISIBLE_DEVICES of the worker process: its one GPU, or "" so a CPU worker sees none. */
  cudaVisibleDevices: string;
  /** Device memory (0 for CPU workers). */
  memoryBytes: number;
  /**
   * Cells per engine RunCells call on this worker (0: a whole shard in one call). Absent: the
   * device's default ({@link cellsPerCallOf}).
   */
  cellsPerCall?: number;
}

/**
 * Cells per RunCells call on a CPU worker: small enough that progress (heartbeats) and the cells
 * kept when a worker is lost stay fine-grained on a slow device.
 */
export const CPU_CELLS_PER_CALL = 512;

/**
 * The engine call size of a slot: its own `cellsPerCall`, else a whole shard per call on a GPU (the
 * engine sizes its micro-batches from GPU memory itself; slicing a shard only adds per-call
 * overhead) and {@link CPU_CELLS_PER_CALL} on the CPU. 0 means the whole shard.
 */
export function cellsPerCallOf(slot: WorkerSlot): number {
  return slot.cellsPerCall ?? (slot.device === "cpu" ? CPU_CELLS_PER_CALL : 0);
}

export interface DiscoveryOptions {
  /** CPU mode: `workers` CPU workers, no GPU lookup. */
  cpu?: boolean;
  /** Number of CPU workers (CPU mode, or when no GPU is visible). Default 1. */
  workers?: number;
  /** At most this many slots (the rest of the GPUs stay unused). */
  maxSlots?: number;
  /** Environment to read CUDA_VISIBLE_DEVICES from. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** nvidia-smi binary. Default "nvidia-smi" from PATH. */
  nvidiaSmi?: string;
  /** Called with a one-line explanation when GPU mode falls back to CPU. */
  log?: (line: string) => void;
}

export interface Discovery {
  mode: "gpu" | "cpu";
  slots: WorkerSlot[];
}

const MIB = 1024 * 1024;

/**
 * Parses `nvidia-smi --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits`
 * (lines like `0, GPU-bb7e459e-1e99-c3e6-8019-0bf47f8ea36c, 143771`, memory in MiB).
 * @throws GpuDiscoveryError naming the line that does not have that shape.
 */
export function parseNvidiaSmi(text: string): GpuInfo[] {
  const gpus: GpuInfo[] = [];
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  for (const [i, line] of lines.entries()) {
    const parts = line.split(",").map((p) => p.trim());
    const [index, uuid, mem] = parts;
    if (parts.length !== 3 || !/^\d+$/.test(index ?? "") || !/^\d+(\.\d+)?$/.test(mem ?? "") || !uuid) {
      throw new GpuDiscoveryError(
        `nvidia-smi output line ${i + 1} is ${JSON.stringify(line)}; expected "<index>, <uuid>, <memory.total MiB>" ` +
          `(from --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits); check the driver with \`nvidia-smi\`, or run the agent with --cpu`,
      );
    }
    gpus.push({ index: Number(index), uuid, memoryBytes: Math.round(Number(mem) * MIB) });
  }
  return gpus;
}

/**
 * Applies CUDA_VISIBLE_DEVICES to the GPUs nvidia-smi lists (nvidia-smi itself ignores it).
 * Unset: all GPUs. Empty: none. Entries are indices or GPU UUIDs (a unique prefix suffices, as in
 * CUDA); as in CUDA, a negative index ends the list (`-1` hides every GPU). Order is kept.
 * @throws GpuDiscoveryError for an entry that matches no GPU, matches several, or repeats.
 */
export function applyCudaVisibleDevices(gpus: GpuInfo[], value: string | undefined): GpuInfo[] {
  if (value === undefined) return gpus;
  const chosen: GpuInfo[] = [];
  const known = gpus.map((g) => `${g.index} (${g.uuid})`).join(", ") || "none";
  for (const raw of value.split(",")) {
    const entry = raw.trim();
    if (entry === "") continue;
    if (/^-\d+$/.test(entry)) break;
    let match: GpuInfo[];
    if (/^\d+$/.test(entry)) {
      match = gpus.filter((g) => g.index === Number(entry));
    } else {
      const prefix = entry.startsWith("GPU-") ? entry : `GPU-${entry}`;
      match = gpus.filter((g) => g.uuid.startsWith(prefix));
    }
    if (match.length !== 1) {
      throw new GpuDiscoveryError(
        `CUDA_VISIBLE_DEVICES entry ${JSON.stringify(entry)} (of ${JSON.stringify(value)}) ` +
          `${match.length === 0 ? "matches no GPU" : "matches several GPUs"}; expected a GPU index or UUID of: ${known}; ` +
          `fix CUDA_VISIBLE_DEVICES or unset it to use every GPU`,
      );
    }
    const gpu = match[0]!;
    if (chosen.includes(gpu)) {
      throw new GpuDiscoveryError(`CUDA_VISIBLE_DEVICES ${JSON.stringify(value)} names GPU ${gpu.index} twice; name each GPU once`);
    }
    chosen.push(gpu);
  }
  return chosen;
}

/** One worker per GPU; each worker sees only its GPU (as cuda:0). */
export function gpuSlots(gpus: GpuInfo[]): WorkerSlot[] {
  return gpus.map((g) => ({
    name: `cuda:${g.index}`,
    device: "cuda:0",
    cudaVisibleDevices: g.uuid,
    memoryBytes: g.memoryBytes,
    cellsPerCall: 0,
  }));
}

/** `n` CPU workers. */
export function cpuSlots(n: number, cellsPerCall = CPU_CELLS_PER_CALL): WorkerSlot[] {
  return Array.from({ length: n }, (_, i) => ({ name: `cpu:${i}`, device: "cpu" as const, cudaVisibleDevices: "", memoryBytes: 0, cellsPerCall }));
}

/**
 * Runs nvidia-smi. A missing binary, or one that fails (no driver), means no GPUs: the caller
 * falls back to CPU workers.
 */
export async function queryNvidiaSmi(bin = "nvidia-smi"): Promise<{ gpus: GpuInfo[]; why?: string }> {
  const r = await execa(bin, ["--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"], {
    reject: false,
    timeout: 30_000,
  });
  if (r.failed) {
    const code = (r.cause as NodeJS.ErrnoException | undefined)?.code;
    const firstLine =
      String(r.stderr || r.stdout || r.shortMessage)
        .trim()
        .split("\n")[0] ?? "";
    const why = code === "ENOENT" ? `${bin} not found` : `${bin} failed: ${firstLine}`;
    return { gpus: [], why };
  }
  return { gpus: parseNvidiaSmi(r.stdout) };
}

/**
 * Decides the worker slots of this host.
 * @throws GpuDiscoveryError when nvidia-smi output or CUDA_VISIBLE_DEVICES is malformed.
 */
export async function discoverSlots(opts: DiscoveryOptions = {}): Promise<Discovery> {
  const workers = opts.workers ?? 1;
  const cap = (slots: WorkerSlot[]) => (opts.maxSlots !== undefined ? slots.slice(0, opts.maxSlots) : slots);
  if (opts.cpu) return { mode: "cpu", slots: cap(cpuSlots(workers)) };
  const env = opts.env ?? process.env;
  const { gpus, why } = await queryNvidiaSmi(opts.nvidiaSmi);
  const visible = applyCudaVisibleDevices(gpus, env.CUDA_VISIBLE_DEVICES);
  if (visible.length === 0) {
    const reason = why ?? (gpus.length === 0 ? "nvidia-smi lists no GPU" : `CUDA_VISIBLE_DEVICES=${JSON.stringify(env.CUDA_VISIBLE_DEVICES)} hides every GPU`);
    opts.log?.(`no GPU visible (${reason}); running ${workers} CPU worker(s)`);
    return { mode: "cpu", slots: cap(cpuSlots(workers)) };
  }
  return { mode: "gpu", slots: cap(gpuSlots(visible)) };
}

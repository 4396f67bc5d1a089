/**
 * Helpers for the agent's tests: the real nats-server with the results stream, the real engine
 * worker command, the golden tiny models and their reference tensors. Not exported by index.ts.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { connect, nanos, type NatsConnection } from "@nats-io/transport-node";
import { engine, sweep } from "@factsweep/proto";
import { RESULTS_STREAM, RESULTS_SUBJECT_PREFIX, startNatsServer, type NatsServerHandle } from "@factsweep/shared";
import type { EngineCommand } from "./engine-supervisor.js";
import { createLogger, type Logger } from "./log.js";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The golden folder: $GOLDEN_DIR, else `../shared/golden` beside the checkout, else /work/shared/golden. */
export function goldenDir(): string | undefined {
  const candidates = [process.env.GOLDEN_DIR, join(REPO_ROOT, "..", "shared", "golden"), "/work/shared/golden"];
  return candidates.find((c): c is string => !!c && existsSync(join(c, "mamba-tiny", "config.json")));
}

/** Reason to skip engine tests, or false. */
export function skipWithoutGolden(): string | false {
  return goldenDir() ? false : "golden models not found (set GOLDEN_DIR to the folder holding mamba-tiny/)";
}

/** Reads the tensors of a .safetensors file (I64 and F32 only; enough for the goldens). */
export function readSafetensors(path: string): Map<string, { shape: number[]; data: number[] }> {
  const buf = readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
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
export async function engineCommand(): Promise<EngineCommand> {
  const py = process.env.FACTSWEEP_PYTHON ?? (await execa("bash", [join(REPO_ROOT, "scripts", "find-python.sh")])).stdout.trim();
  return { file: py, args: ["-m", "engine"], env: { PYTHONPATH: REPO_ROOT } };
}

/** A real nats-server -js with the results stream created as the coordinator creates it. */
export async function startResultsNats(): Promise<{ server: NatsServerHandle; nc: NatsConnection; jsm: JetStreamManager; stop(): Promise<void> }> {
  const server = await startNatsServer();
  const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: RESULTS_STREAM, subjects: [`${RESULTS_SUBJECT_PREFIX}.>`], duplicate_window: nanos(120_000) });
  return {
    server,
    nc,
    jsm,
    async stop() {
      await nc.close().catch(() => undefined);
      await server.stop();
    },
  };
}

/** Every ShardResult stored for a sweep, in stream order. */
export async function storedResults(jsm: JetStreamManager, sweepId: string): Promise<{ seq: number; msgId: string | undefined; result: sweep.ShardResult }[]> {
  const info = await jsm.streams.info(RESULTS_STREAM);
  const out: { seq: number; msgId: string | undefined; result: sweep.ShardResult }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(RESULTS_STREAM, { seq }).catch(() => null);
    if (!m || m.subject !== `${RESULTS_SUBJECT_PREFIX}.${sweepId}`) continue;
    out.push({ seq, msgId: m.header?.get("Nats-Msg-Id"), result: sweep.ShardResult.decode(m.data) });
  }
  return out;
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
    for (let tok = 0; tok < T; tok++) cells.push({ site: engine.Site.SITE_RESIDUAL, layer: l, token: tok, window: 1 });
  }
  const shard: sweep.Shard = {
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
  };
  return { shard, reference };
}

/** A logger that keeps lines (printed on failure by the caller if wanted). */
export function memoryLogger(prefix = "test"): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log = createLogger(prefix, { level: "debug", write: (l) => lines.push(l) });
  return Object.assign(log, { lines });
}

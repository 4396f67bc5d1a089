/**
 * Test-only helpers (not exported from index.ts): a real nats-server plus a coordinator on free
 * ports, gRPC clients for both services, and sweep specs over the golden tiny models.
 */
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { agent, control } from "@factsweep/proto";
import { startNatsServer, type NatsServerHandle } from "@factsweep/shared";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The shared data folder with golden/ (../shared from the repo root, or FACTSWEEP_SHARED_DIR). */
export const SHARED_DIR: string | undefined = [process.env.FACTSWEEP_SHARED_DIR, join(repoRoot, "../shared"), join(repoRoot, "../../shared"), "/work/shared"].find(
  (p): p is string => !!p && existsSync(join(p, "golden")),
);
export const GOLDEN_DIR = SHARED_DIR ? join(SHARED_DIR, "golden") : "/nonexistent/golden";
export const REPO_ROOT = repoRoot;

/** A spec over the golden tiny Mamba with inline pre-tokenized prompts (noise corruption). */
export function goldenSpec(opts: { name?: string; prompts?: number; modelPath?: string; shardCells?: number; maxAttempts?: number; extra?: string } = {}): string {
  const prompts = Array.from({ length: opts.prompts ?? 2 }, (_, i) => `    - { input_ids: [${11 + i}, 25, 37, ${40 + i}, 52, 61], subject: [1, 3] }`).join("\n");
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

/** A running nats-server and coordinator, with clients, torn down by `close`. */
export interface Harness {
  nats: NatsServerHandle;
  coord: Coordinator;
  addr: string;
  sweeps: control.SweepServiceClient;
  opts: CoordinatorOptions;
  /** Restart the coordinator over the same NATS (graceful, or `crash` without flushing). */
  restart(how?: "graceful" | "crash", samePort?: boolean): Promise<void>;
  close(): Promise<void>;
}

/** Starts nats-server and a coordinator whose model root is the golden folder. */
export async function startHarness(over: Partial<CoordinatorOptions> = {}): Promise<Harness> {
  const nats = await startNatsServer();
  const opts: CoordinatorOptions = {
    natsUrl: nats.url, grpcHost: "127.0.0.1", grpcPort: 0, httpHost: "127.0.0.1", httpPort: 0, modelRoots: [GOLDEN_DIR],
    leaseTtlMs: 2000, heartbeatMs: 300, retryBackoffMs: 50, log: process.env.FACTSWEEP_TEST_LOG ? (m) => console.error(`[coordinator] ${m}`) : () => undefined, ...over,
  };
  let coord = await Coordinator.start(opts);
  const h: Harness = {
    nats, coord, opts, addr: `127.0.0.1:${coord.grpcPort}`,
    sweeps: new control.SweepServiceClient(`127.0.0.1:${coord.grpcPort}`, grpc.credentials.createInsecure()),
    async restart(how = "graceful", samePort = false) {
      const port = coord.grpcPort;
      if (how === "crash") await coord.crash();
      else await coord.stop();
      h.sweeps.close();
      coord = await Coordinator.start({ ...opts, grpcPort: samePort ? port : 0 });
      h.coord = coord;
      h.addr = `127.0.0.1:${coord.grpcPort}`;
      h.sweeps = new control.SweepServiceClient(h.addr, grpc.credentials.createInsecure());
    },
    async close() {
      h.sweeps.close();
      await h.coord.stop();
      await nats.stop();
    },
  };
  return h;
}

/** Promise form of a unary SweepService call; rejects with the grpc ServiceError. */
export function call<Req, Res>(c: control.SweepServiceClient, m: (req: Req, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown, req: Req, md = new grpc.Metadata()): Promise<Res> {
  return new Promise((res, rej) => m.call(c, req, md, (e, r) => (e ? rej(e) : res(r))));
}

/** A folder with a spec file, for CLI tests. */
export function tempSpec(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), "factsweep-spec-"));
  const f = join(dir, "spec.yaml");
  writeFileSync(f, text);
  return f;
}

/** Opens an AgentService stream. */
export function agentStream(addr: string): grpc.ClientDuplexStream<agent.AgentMessage, agent.CoordinatorMessage> & { client: agent.AgentServiceClient } {
  const client = new agent.AgentServiceClient(addr, grpc.credentials.createInsecure());
  const s = client.connect() as grpc.ClientDuplexStream<agent.AgentMessage, agent.CoordinatorMessage> & { client: agent.AgentServiceClient };
  s.client = client;
  return s;
}

/** The value of a metric sample in Prometheus text whose labels include `labels`; undefined if absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[3] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[4]);
  }
  return undefined;
}

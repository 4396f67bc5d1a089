/**
 * A whole factsweep cluster on loopback for end-to-end tests: a real `nats-server -js`, the
 * coordinator and node agents as separate processes (the same entry points a user runs), and
 * `sweepctl` through its CLI. Nothing is mocked.
 */
import { readFileSync, readdirSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { EngineClient } from "@factsweep/node-agent";
import { RESULTS_STREAM, resultsSubject } from "@factsweep/shared";
import { freePort, startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { planSweep, parseSweepSpec, siteFromEnum } from "@factsweep/planning";
import { spawn } from "node:child_process";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const GOLDEN = resolve(process.env.GOLDEN_DIR ?? join(REPO, "../shared/golden"));
const COORDINATOR = join(REPO, "coordinator/dist/main.js");
const AGENT = join(REPO, "node-agent/dist/main.js");
const SWEEPCTL = join(REPO, "sweepctl/dist/cli.js");

type Child = ResultPromise<{ reject: false; all: true; buffer: false }>;

/** Resolves when `pattern` appears in the child's combined output; rejects if it exits first. */
function waitForLine(child: Child, pattern: RegExp, what: string, timeoutMs = 60_000): Promise<RegExpMatchArray> {
  return new Promise((res, rej) => {
    let seen = "";
    const timer = setTimeout(() => rej(new Error(`${what} not ready after ${timeoutMs} ms; output:\n${seen.slice(-4000)}`)), timeoutMs);
    const onData = (b: Buffer): void => {
      seen += b.toString();
      const m = pattern.exec(seen);
      if (m) {
        clearTimeout(timer);
        child.all?.off("data", onData);
        res(m);
      }
    };
    child.all?.on("data", onData);
    void child.then((r) => {
      clearTimeout(timer);
      rej(new Error(`${what} exited (${r.exitCode ?? r.signal}) before it was ready:\n${seen.slice(-4000)}`));
    });
  });
}

export interface AgentProc {
  id: string;
  child: Child;
  pid: number;
  log: string[];
}

export class Cluster {
  nats!: NatsServerHandle;
  coordinator!: Child;
  coordinatorLog: string[] = [];
  grpcPort = 0;
  httpPort = 0;
  agents: AgentProc[] = [];
  readonly dir = mkdtempSync(join(tmpdir(), "factsweep-e2e-"));

  constructor(readonly opts: { agents: number; leaseTtlMs?: number; modelRoots?: string[]; coordinatorArgs?: string[] }) {}

  get address(): string {
    return `127.0.0.1:${this.grpcPort}`;
  }

  async start(): Promise<this> {
    this.nats = await startNatsServer({ storeDir: join(this.dir, "jetstream") });
    this.grpcPort = await freePort();
    this.httpPort = await freePort();
    await this.startCoordinator();
    for (let i = 0; i < this.opts.agents; i++) await this.startAgent(`agent-${i + 1}`);
    return this;
  }

  /** Starts (or restarts, on the same ports and NATS state) the coordinator process. */
  async startCoordinator(): Promise<void> {
    const roots = this.opts.modelRoots ?? [GOLDEN, this.dir];
    const args = [
      COORDINATOR,
      "--grpc-host",
      "127.0.0.1",
      "--grpc-port",
      String(this.grpcPort),
      "--http-host",
      "127.0.0.1",
      "--http-port",
      String(this.httpPort),
      "--nats-url",
      this.nats.url,
      "--lease-ttl-ms",
      String(this.opts.leaseTtlMs ?? 3000),
      "--retry-backoff-ms",
      "200",
      ...roots.flatMap((r) => ["--model-root", r]),
      ...(this.opts.coordinatorArgs ?? []),
    ];
    this.coordinator = execa("node", args, { reject: false, all: true, buffer: false });
    this.coordinator.all?.on("data", (b: Buffer) => this.coordinatorLog.push(b.toString()));
    await waitForLine(this.coordinator, /ready: gRPC on/, "coordinator");
  }

  async startAgent(id: string, extra: string[] = []): Promise<AgentProc> {
    const child = execa(
      "node",
      [
        AGENT,
        "--coordinator",
        this.address,
        "--nats-url",
        this.nats.url,
        "--cpu",
        "--workers",
        "1",
        "--agent-id",
        id,
        "--http-port",
        "0",
        "--http-host",
        "127.0.0.1",
        "--batch-size",
        "16",
        ...extra,
      ],
      { reject: false, all: true, buffer: false },
    );
    const a: AgentProc = { id, child, pid: child.pid ?? 0, log: [] };
    child.all?.on("data", (b: Buffer) => a.log.push(b.toString()));
    this.agents.push(a);
    await waitForLine(child, /factsweep-agent ready/, `agent ${id}`);
    return a;
  }

  /** Runs `sweepctl --coordinator <this> ...args`; never throws on a non-zero exit. */
  async sweepctl(...args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
    const r = await execa("node", [SWEEPCTL, "--coordinator", this.address, ...args], { reject: false, timeout: 180_000 });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }

  /** Polls `sweepctl status --json` until `pred` holds. */
  async waitFor(sweepId: string, pred: (info: SweepStatus) => boolean, timeoutMs = 120_000): Promise<SweepStatus> {
    const end = Date.now() + timeoutMs;
    let last: SweepStatus | undefined;
    while (Date.now() < end) {
      const r = await this.sweepctl("status", sweepId, "--json");
      if (r.stdout.trim()) {
        try {
          last = JSON.parse(r.stdout) as SweepStatus;
          if (pred(last)) return last;
        } catch {
          /* the coordinator may be restarting */
        }
      }
      await new Promise((r) => setTimeout(r, 150));
    }
    throw new Error(`sweep ${sweepId} did not reach the expected state in ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
  }

  /** Result rows of a sweep as `sweepctl results --format jsonl` prints them. */
  async results(sweepId: string): Promise<ResultRowJson[]> {
    const r = await this.sweepctl("results", sweepId, "--format", "jsonl");
    if (r.exitCode !== 0) throw new Error(`sweepctl results exited ${r.exitCode}: ${r.stderr}`);
    return r.stdout
      .split("\n")
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as ResultRowJson);
  }

  /** Messages stored in the results stream for one sweep (one per shard when deduplication works). */
  async storedResults(sweepId: string): Promise<number> {
    const nc = await connect({ servers: this.nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      const info = await jsm.streams.info(RESULTS_STREAM, { subjects_filter: resultsSubject(sweepId) });
      return Number(info.state.subjects?.[resultsSubject(sweepId)] ?? 0);
    } finally {
      await nc.close();
    }
  }

  /**
   * Resolves once the results stream holds at least `atLeast` messages for the sweep, polled every
   * 20 ms over one connection that outlives nats-server restarts. A trigger for faults at a point
   * of a sweep's progress: `sweepctl status` starts a process per poll (~0.5 s here), slower than a
   * warm cluster finishes a small sweep, so a fault meant for mid-sweep could miss it.
   */
  async waitForStored(sweepId: string, atLeast: number, timeoutMs = 120_000): Promise<number> {
    this.watcher ??= await connect({ servers: this.nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const end = Date.now() + timeoutMs;
    let stored = 0;
    while (Date.now() < end) {
      try {
        const jsm = await jetstreamManager(this.watcher);
        const info = await jsm.streams.info(RESULTS_STREAM, { subjects_filter: resultsSubject(sweepId) });
        stored = Number(info.state.subjects?.[resultsSubject(sweepId)] ?? 0);
        if (stored >= atLeast) return stored;
      } catch {
        /* nats-server is restarting; the connection reconnects on its own */
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`sweep ${sweepId}: ${stored} results stored after ${timeoutMs} ms, ${atLeast} expected`);
  }

  /** Results stored for each sweep now (one poll of the results stream over the watcher connection). */
  async storedNow(...sweepIds: string[]): Promise<number[]> {
    this.watcher ??= await connect({ servers: this.nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const jsm = await jetstreamManager(this.watcher);
    return Promise.all(
      sweepIds.map(async (id) => {
        const info = await jsm.streams.info(RESULTS_STREAM, { subjects_filter: resultsSubject(id) });
        return Number(info.state.subjects?.[resultsSubject(id)] ?? 0);
      }),
    );
  }

  private watcher: Awaited<ReturnType<typeof connect>> | undefined;

  /** Process ids of the engine workers (Python children) of an agent. */
  workerPids(agent: AgentProc): number[] {
    const pids: number[] = [];
    for (const e of readdirSync("/proc")) {
      if (!/^\d+$/.test(e)) continue;
      try {
        const stat = readFileSync(`/proc/${e}/stat`, "utf8");
        const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
        const cmd = readFileSync(`/proc/${e}/cmdline`, "utf8");
        if (ppid === agent.pid && cmd.includes("engine")) pids.push(Number(e));
      } catch {
        /* the process ended meanwhile */
      }
    }
    return pids;
  }

  writeSpec(name: string, text: string): string {
    const p = join(this.dir, name);
    writeFileSync(p, text);
    return p;
  }

  async stop(): Promise<void> {
    for (const a of this.agents) a.child.kill("SIGKILL");
    this.coordinator?.kill("SIGKILL");
    await Promise.allSettled([...this.agents.map((a) => a.child), this.coordinator]);
    await this.watcher?.close().catch(() => undefined);
    await this.nats?.stop();
  }

  logs(): string {
    return [`--- coordinator\n${this.coordinatorLog.join("").slice(-6000)}`, ...this.agents.map((a) => `--- ${a.id}\n${a.log.join("").slice(-3000)}`)].join(
      "\n",
    );
  }
}

export interface SweepStatus {
  sweepId: string;
  state: string;
  counts: { plannedCells: number; doneCells: number; shardsTotal: number; shardsDone: number; shardsFailed: number; shardsLeased: number; retries: number };
  promptErrors: { promptIndex: number; message: string }[];
  failedShards: string[];
}

export interface ResultRowJson {
  sweep_id: string;
  prompt_index: number;
  site: string;
  /** Head of a per-head cell; "" (the export's empty column) for the whole site. */
  head?: number | "";
  layer: number;
  token: number;
  window: number;
  token_group?: string;
  p: number;
  p_clean: number;
  p_corrupt: number;
  ie: number;
}

/** A cell's identity; a per-head cell's carries its head, so it never collides with the whole site's. */
export const cellKey = (r: { prompt_index: number; site: string; head?: number | ""; layer: number; token: number; window: number }): string =>
  `${r.prompt_index}|${r.site}|${r.layer}|${r.token}|${r.window}${typeof r.head === "number" ? `|h${r.head}` : ""}`;

/**
 * The reference: the same planned cells computed by one engine worker alone, without coordinator,
 * agents or NATS. Returns p per cell key.
 */
/** How many shards the coordinator plans for a spec (the planner is the coordinator's own). */
export async function plannedShards(specPath: string): Promise<number> {
  const spec = parseSweepSpec(readFileSync(specPath, "utf8"), { baseDir: dirname(specPath) });
  return (await planSweep(spec, "count")).shards.length;
}

export async function engineReference(specPath: string): Promise<Map<string, number>> {
  const text = readFileSync(specPath, "utf8");
  const spec = parseSweepSpec(text, { baseDir: dirname(specPath) });
  const plan = await planSweep(spec, "reference");
  const py = (await execa("bash", [join(REPO, "scripts/find-python.sh")])).stdout.trim();
  const child = spawn(py, ["-m", "engine"], { cwd: REPO, env: { ...process.env, PYTHONPATH: REPO }, stdio: ["pipe", "pipe", "inherit"] });
  const engine = new EngineClient({ stdin: child.stdin, stdout: child.stdout });
  const out = new Map<string, number>();
  try {
    await engine.hello();
    const model = plan.shards[0]?.model;
    if (!model) throw new Error("the plan has no shards");
    await engine.loadModel({ modelId: "m", path: model.path, dtype: model.dtype || "float32", device: "cpu", allowPickle: false, cacheBudgetBytes: 0 });
    for (const shard of plan.shards) {
      const p = shard.prompt!;
      await engine.preparePromptSpec("m", p.promptKey, p);
      const res = await engine.runCells({ modelId: "m", promptKey: p.promptKey, cells: shard.cells, slowPath: false });
      shard.cells.forEach((c, i) => {
        out.set(cellKey({ prompt_index: p.index, site: siteFromEnum(c.site), head: c.head, layer: c.layer, token: c.token, window: c.window }), res.p[i]!);
      });
    }
    await engine.shutdown();
  } finally {
    child.kill();
  }
  return out;
}

/** A trace spec over pre-tokenized prompts on the golden Mamba, big enough that a sweep takes seconds. */
export function goldenMambaSpec(opts: { prompts?: number; corruption?: string; name?: string } = {}): string {
  const n = opts.prompts ?? 6;
  const noise = (opts.corruption ?? "").includes("noise");
  // Deterministic pseudo-random prompts of 12 tokens (vocab 1000), subject at tokens 2..5, a swap of the subject.
  let seed = 12345;
  const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % 1000);
  const prompts = Array.from({ length: n }, () => {
    const ids = Array.from({ length: 12 }, rnd);
    const corrupted = ids.map((v, i) => (i >= 2 && i < 5 ? (v + 500) % 1000 : v));
    const swap = noise ? "" : `, corrupted_ids: [${corrupted.join(", ")}]`;
    return `    - { input_ids: [${ids.join(", ")}], subject: [2, 5]${swap} }`;
  });
  return `name: ${opts.name ?? "e2e"}
kind: trace
model: { id: mamba-tiny, path: ${join(GOLDEN, "mamba-tiny")} }
dataset:
  prompts:
${prompts.join("\n")}
corruption: ${opts.corruption ?? "{ kind: swap }"}
grid:
  - { site: residual, window: 1 }
  - { site: mixer, window: 3 }
  - { site: ssm, window: 3 }
  - { site: gate, window: 3 }
layers: all
tokens: all
shard_cells: 24
max_attempts: 4
`;
}

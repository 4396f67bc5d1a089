/**
 * Starts one Python engine worker per slot (execa), performs the protocol handshake, forwards the
 * worker's stderr to the agent log with a `[worker <slot>]` prefix, and restarts a worker that
 * dies, with exponential backoff. Shards find their worker again through {@link EngineWorker.whenReady};
 * a restarted worker has a new `generation` and has lost its models and prompt cache.
 */
import { EventEmitter } from "node:events";
import { createInterface } from "node:readline";
import { execa, type ResultPromise } from "execa";
import { ENGINE_PROTOCOL_VERSION, engine } from "@factsweep/proto";
import { BusyWindow } from "./busy-window.js";
import { EngineClient, type EngineActivity } from "./engine-client.js";
import { EngineRequestError } from "./engine-errors.js";
import { EngineVersionMismatchError, WorkerLostError, WorkerStartError } from "./errors.js";
import type { WorkerSlot } from "./gpu-discovery.js";
import type { Logger } from "./log.js";
import type { AgentMetrics } from "./metrics.js";

/** How to start an engine worker: `file args... --device <slot device>`. */
export interface EngineCommand {
  file: string;
  args: string[];
  /** Extra environment (e.g. PYTHONPATH); CUDA_VISIBLE_DEVICES is set per slot. */
  env?: Record<string, string>;
  cwd?: string;
}

/** Options of {@link EngineSupervisor}. */
export interface SupervisorOptions {
  slots: WorkerSlot[];
  command: EngineCommand;
  metrics: AgentMetrics;
  log: Logger;
  /** Passed to the worker as --cache-budget-bytes (0 or absent: the engine's default). */
  cacheBudgetBytes?: number;
  /** First restart delay; doubles per consecutive failure up to `restartMaxMs`. Default 500 ms. */
  restartInitialMs?: number;
  /** Default 30 s. */
  restartMaxMs?: number;
  /** A worker that stayed up this long resets its backoff. Default 60 s. */
  stableAfterMs?: number;
  /** Hello must be answered within this. Default 120 s (torch import is slow on a loaded host). */
  handshakeTimeoutMs?: number;
  /** Engine protocol version sent in Hello; default ENGINE_PROTOCOL_VERSION (tests use another to see the refusal). */
  protocolVersion?: number;
  /** A fatal condition (engine of another protocol version): the agent must stop. */
  onFatal?: (err: Error) => void;
}

/** Lifecycle of one worker slot. */
export type WorkerState = "starting" | "ready" | "restarting" | "stopped" | "fatal";

type Child = ResultPromise<{ stdin: "pipe"; stdout: "pipe"; stderr: "pipe"; buffer: false; encoding: "buffer"; reject: false }>;

/** Keep this many stderr lines to explain a worker that failed to start. */
const STDERR_TAIL = 30;

/**
 * One engine worker slot: the current process (if any), its client, and what the agent knows the
 * process holds (models loaded, prompts cached). Everything process-bound is reset on restart.
 */
export class EngineWorker extends EventEmitter {
  state: WorkerState = "starting";
  /** Incremented on every (re)start; a shard compares it to notice that its worker was replaced. */
  generation = 0;
  client: EngineClient | undefined;
  hello: engine.HelloReply | undefined;
  /** model id -> what was loaded under it (path, dtype) and the engine's ModelInfo. */
  readonly models = new Map<string, { path: string; dtype: string; info: engine.ModelInfo }>();
  /** prompt keys cached in this process (best effort: the engine may evict by LRU), with bytes. */
  readonly cachedPrompts = new Map<string, number>();
  cacheBytes = 0;
  /**
   * The slot takes no further shard now: one runs on it and has not yet sent its last engine call.
   * Once that call is sent the next shard may start here (its requests queue behind it in the worker).
   */
  busy = false;
  /** When the worker had an engine request in flight (the busy-ratio gauge); kept across restarts. */
  readonly busyWindow = new BusyWindow();
  pid: number | undefined;
  private child: Child | undefined;
  private stderrTail: string[] = [];
  private readyWaiters: { resolve: (c: EngineClient) => void; reject: (e: Error) => void }[] = [];

  constructor(readonly slot: WorkerSlot) {
    super();
  }

  /** The slot name ("cuda:0", "cpu:1"). */
  get name(): string {
    return this.slot.name;
  }

  /** Resolves with the client once the worker is ready (now, or after a restart). */
  whenReady(signal?: AbortSignal): Promise<EngineClient> {
    // A client already closed means the process is dying: wait for its successor.
    if (this.state === "ready" && this.client && !this.client.closed) return Promise.resolve(this.client);
    if (this.state === "stopped" || this.state === "fatal") {
      return Promise.reject(new WorkerLostError(this.name, `worker ${this.name} is ${this.state}`));
    }
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      this.readyWaiters.push(waiter);
      signal?.addEventListener(
        "abort",
        () => {
          this.readyWaiters = this.readyWaiters.filter((w) => w !== waiter);
          reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
        },
        { once: true },
      );
    });
  }

  /** Last lines the worker wrote to stderr (for error messages). */
  get recentStderr(): string {
    return this.stderrTail.join("\n");
  }

  /** @internal */
  attach(child: Child, client: EngineClient): void {
    this.child = child;
    this.client = client;
    this.pid = child.pid;
    this.stderrTail = [];
  }

  /** @internal every request sent to or settled by the current process; emits `activity`. */
  noteActivity(e: EngineActivity): void {
    this.busyWindow.update(e.inFlight);
    this.emit("activity", e);
  }

  /** @internal */
  noteStderr(line: string): void {
    this.stderrTail.push(line);
    if (this.stderrTail.length > STDERR_TAIL) this.stderrTail.shift();
  }

  /** @internal */
  markReady(): void {
    this.state = "ready";
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.resolve(this.client!);
    this.emit("ready");
  }

  /** @internal */
  markLost(state: "restarting" | "stopped" | "fatal", err?: Error): void {
    this.state = state;
    this.generation++;
    this.client = undefined;
    this.hello = undefined;
    this.pid = undefined;
    this.models.clear();
    this.cachedPrompts.clear();
    this.cacheBytes = 0;
    if (state !== "restarting") {
      const waiters = this.readyWaiters;
      this.readyWaiters = [];
      for (const w of waiters) w.reject(err ?? new WorkerLostError(this.name, `worker ${this.name} is ${state}`));
    }
    this.emit("lost");
  }

  /** @internal the running child, for stop and fault injection */
  get process(): Child | undefined {
    return this.child;
  }

  /** Forces a restart of a stuck worker (e.g. a request that timed out): SIGKILL, then the usual restart. */
  kill(): void {
    this.child?.kill("SIGKILL");
  }
}

/**
 * Runs and restarts the engine workers of this agent.
 *
 * @example
 * const sup = new EngineSupervisor({ slots, command: { file: python, args: ["-m", "engine"], env: { PYTHONPATH: root } }, metrics, log });
 * await sup.start();            // every worker has answered Hello
 * const client = await sup.workers[0].whenReady();
 * await sup.stop();             // Shutdown, then SIGTERM/SIGKILL stragglers
 */
export class EngineSupervisor {
  readonly workers: EngineWorker[];
  private stopping = false;
  private readonly failures = new Map<EngineWorker, number>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly exits = new Map<EngineWorker, Promise<void>>();

  constructor(private readonly opts: SupervisorOptions) {
    this.workers = opts.slots.map((s) => new EngineWorker(s));
    opts.metrics.busyRatioSource = () => this.workers.map((w) => ({ worker: w.name, ratio: w.busyWindow.ratio() }));
  }

  /** Workers that are ready now. */
  get readyCount(): number {
    return this.workers.filter((w) => w.state === "ready").length;
  }

  /**
   * Starts every worker and waits for their handshakes. A worker that cannot start the first
   * time (interpreter missing, import error, wrong protocol) makes `start` throw: that is a
   * deployment error, not a crash to retry.
   */
  async start(): Promise<void> {
    await Promise.all(this.workers.map((w) => this.spawn(w, true)));
  }

  /** Shuts every worker down: Shutdown request, then SIGTERM after `graceMs`, then SIGKILL. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await Promise.all(
      this.workers.map(async (w) => {
        const child = w.process;
        const exited = this.exits.get(w);
        if (child && exited && w.client && !w.client.closed) {
          await w.client.shutdown({ timeoutMs: graceMs }).catch(() => undefined);
        }
        if (child && exited) {
          const term = setTimeout(() => child.kill("SIGTERM"), graceMs);
          const kill = setTimeout(() => child.kill("SIGKILL"), graceMs * 2);
          await exited;
          clearTimeout(term);
          clearTimeout(kill);
        }
        if (w.state !== "fatal") w.markLost("stopped");
      }),
    );
    this.opts.metrics.workersReady.set(0);
  }

  private updateReady(): void {
    this.opts.metrics.workersReady.set(this.readyCount);
  }

  private async spawn(w: EngineWorker, first: boolean): Promise<void> {
    const { command, log } = this.opts;
    const wlog = log.child(`[worker ${w.name}]`);
    const args = [...command.args, "--device", w.slot.device];
    if (this.opts.cacheBudgetBytes) args.push("--cache-budget-bytes", String(this.opts.cacheBudgetBytes));
    w.state = "starting";
    const child = execa(command.file, args, {
      cwd: command.cwd,
      env: { ...command.env, CUDA_VISIBLE_DEVICES: w.slot.cudaVisibleDevices },
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
      buffer: false,
      encoding: "buffer",
      reject: false,
      cleanup: true,
    }) as Child;
    const client = new EngineClient({
      stdin: child.stdin,
      stdout: child.stdout,
      name: `worker ${w.name}`,
      onStray: (info) => wlog.warn(`stray frame from worker (request ${info.requestId ?? "?"}): ${info.reason}`),
      onActivity: (e) => w.noteActivity(e),
    });
    w.attach(child, client);
    createInterface({ input: child.stderr }).on("line", (line) => {
      w.noteStderr(line);
      wlog.info(line);
    });
    const startedAt = Date.now();
    let spawnError: Error | undefined;
    child.on("error", (err) => {
      spawnError = err;
    });
    const exited = child.then((r) => {
      const how = r.signal ? `signal ${r.signal}` : `exit code ${String(r.exitCode)}`;
      client.close(`worker process ended (${how})`);
      return how;
    });
    this.exits.set(
      w,
      exited.then(() => undefined),
    );

    // Handshake: the worker must speak our protocol version.
    try {
      const version = this.opts.protocolVersion ?? ENGINE_PROTOCOL_VERSION;
      const body = await client.request({ $case: "hello", hello: { protocolVersion: version } }, { timeoutMs: this.opts.handshakeTimeoutMs ?? 120_000 });
      if (body.$case !== "hello") throw new Error(`worker answered Hello with ${body.$case}`);
      const hello = body.hello;
      if (hello.protocolVersion !== version) {
        throw new EngineVersionMismatchError(w.name, version, hello.protocolVersion);
      }
      w.hello = hello;
    } catch (err) {
      let fatal: Error;
      if (err instanceof EngineVersionMismatchError) {
        fatal = err;
      } else if (err instanceof EngineRequestError && err.code === "ERROR_CODE_VERSION_MISMATCH") {
        fatal = new EngineVersionMismatchError(w.name, this.opts.protocolVersion ?? ENGINE_PROTOCOL_VERSION, undefined, { cause: err });
        fatal.message += ` (worker said: ${err.message})`;
      } else {
        child.kill("SIGKILL");
        const how = await exited;
        const why = spawnError ? spawnError.message : (err as Error).message;
        fatal = new WorkerStartError(
          w.name,
          `engine worker ${w.name} did not complete its handshake (${why}; process ${how}) ` +
            `running \`${command.file} ${args.join(" ")}\`; last stderr lines:\n${w.recentStderr || "(none)"}`,
          { cause: err },
        );
        if (!first && !this.stopping) {
          // Already ran once: a transient failure (e.g. out of memory at import); keep trying.
          wlog.error(fatal.message);
          w.markLost("restarting");
          this.scheduleRestart(w);
          return;
        }
      }
      child.kill("SIGKILL");
      await exited;
      w.markLost("fatal", fatal);
      this.updateReady();
      if (fatal instanceof EngineVersionMismatchError) this.opts.onFatal?.(fatal);
      throw fatal;
    }
    wlog.info(
      `ready: pid ${String(child.pid)}, engine ${w.hello.engineVersion}, torch ${w.hello.torchVersion}, device ${w.hello.device}` +
        (w.slot.cudaVisibleDevices ? ` (CUDA_VISIBLE_DEVICES=${w.slot.cudaVisibleDevices})` : ""),
    );
    w.markReady();
    this.updateReady();

    void exited.then((how) => {
      if (this.stopping || w.state === "stopped" || w.state === "fatal") return;
      const upMs = Date.now() - startedAt;
      if (upMs >= (this.opts.stableAfterMs ?? 60_000)) this.failures.set(w, 0);
      wlog.error(`worker process died (${how}) after ${(upMs / 1000).toFixed(1)} s; last stderr lines:\n${w.recentStderr || "(none)"}`);
      w.markLost("restarting");
      this.updateReady();
      this.scheduleRestart(w);
    });
  }

  private scheduleRestart(w: EngineWorker): void {
    if (this.stopping) return;
    const n = this.failures.get(w) ?? 0;
    this.failures.set(w, n + 1);
    const initial = this.opts.restartInitialMs ?? 500;
    const max = this.opts.restartMaxMs ?? 30_000;
    const base = Math.min(max, initial * 2 ** n);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.opts.log.warn(`restarting worker ${w.name} in ${delay} ms (consecutive failure ${n + 1})`);
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.stopping) return;
      this.opts.metrics.workerRestarts.inc({ worker: w.name });
      this.spawn(w, false).catch((err: Error) => this.opts.log.error(`worker ${w.name}: ${err.message}`));
    }, delay);
    this.timers.add(t);
  }
}

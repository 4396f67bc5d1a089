/**
 * The node agent: engine workers (one per slot), the coordinator link (src/coordinator-link.ts:
 * stream, hello, heartbeats, outbox, reconnects), the leases it grants (credit, queue, the worker
 * each shard runs on, cancel, drain), shard results published to JetStream, metrics and health on HTTP.
 *
 * Faults: a worker that dies is restarted and its shard re-runs the remaining cells; a coordinator
 * that goes away is reconnected with exponential backoff and jitter while running shards continue
 * (their results go to JetStream regardless, and their done/failed messages are sent after the
 * reconnect); publishes retry until NATS is back.
 *
 * long-file: one class holds the lease lifecycle (credit, queue, the worker a shard runs on, the next
 * shard pipelined behind the last engine call, cancel, drain); split, each part would need the others' state.
 */
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import type { agent, sweep } from "@factsweep/proto";
import { createRegistry, startHttpServer, type HttpServerHandle } from "@factsweep/shared";
import { EngineSupervisor, type EngineCommand, type EngineWorker } from "./engine-supervisor.js";
import { CoordinatorLink } from "./coordinator-link.js";
import { AgentCovariances } from "./covariance-files.js";
import { ShardCancelledError, ShardError } from "./errors.js";
import type { WorkerSlot } from "./gpu-discovery.js";
import type { Logger } from "./log.js";
import { createAgentMetrics, type AgentMetrics } from "./metrics.js";
import { ResultPublisher, sleep } from "./result-publisher.js";
import { promptKeyOf, runShard } from "./shard-runner.js";

/** The engine worker's default --pack-below (engine/worker.py DEFAULT_PACK_BELOW): trace grids of fewer
 * cells it runs several in one pass. */
const PACK_BELOW = 512;

function isSmall(shard: sweep.Shard): boolean {
  return (shard.kind === "trace" || shard.kind === "") && shard.cells.length > 0 && shard.cells.length < PACK_BELOW;
}

/** Options of {@link Agent}. */
export interface AgentOptions {
  agentId: string;
  /** Coordinator address `host:port`. */
  coordinator: string;
  natsUrl: string;
  /** Contents of a NATS credentials (.creds) file. */
  natsCreds?: string;
  /** NATS user and password (a server config with users per role, deploy/nats/accounts.conf). */
  natsUser?: string;
  natsPass?: string;
  /** Agent token the coordinator requires (sent in the hello and as `authorization: Bearer`). */
  token?: string;
  /** mTLS to the coordinator: CA to verify it, and this agent's certificate and key. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  slots: WorkerSlot[];
  engineCommand: EngineCommand;
  /** 0 = a free port. */
  httpPort: number;
  httpHost?: string;
  /**
   * Cells per RunCells on every worker (0: a whole shard per call). Default: per worker device
   * (`cellsPerCallOf`: a whole shard on a GPU, 512 cells on the CPU).
   */
  batchSize?: number;
  /** Leases queued per worker beyond the running one (default 1): the next shard is already here when one ends. */
  prefetch?: number;
  cacheBudgetBytes?: number;
  /** On drain, running shards get this long to finish before they are handed back. Default 10 min. */
  drainTimeoutMs?: number;
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  /** Worker restart backoff (tests shorten it). */
  restartInitialMs?: number;
  log: Logger;
  metrics?: AgentMetrics;
  /** Folder of this process' ROME covariance files (fetched C, moments being uploaded); default a fresh one under the OS temp folder. */
  covarianceDir?: string;
}

/** A lease this agent holds: queued for a worker or running on one. */
interface Lease {
  leaseId: string;
  shard: sweep.Shard;
  worker: EngineWorker | undefined;
  cellsDone: number;
  abort: AbortController;
  /** Why it was aborted: "cancel" (coordinator's CancelLease: say nothing) or "handback". */
  abortKind?: "cancel" | "handback";
  startedAt: number;
  /** Its last engine call was sent: the worker took the next shard (whose requests queue behind it). */
  releasedWorker?: boolean;
}

/**
 * One node agent.
 *
 * @example
 * const a = new Agent({ agentId, coordinator: "127.0.0.1:7070", natsUrl, slots, engineCommand, httpPort: 0, log });
 * const { httpPort } = await a.start();
 * process.on("SIGTERM", () => a.drain("SIGTERM"));
 * process.exitCode = await a.finished;
 */
export class Agent {
  readonly metrics: AgentMetrics;
  readonly supervisor: EngineSupervisor;
  /** Resolves with the process exit code: 0 after a drain, 1 after a fatal error. */
  readonly finished: Promise<number>;
  private finish!: (code: number) => void;
  private readonly log: Logger;
  private readonly leases = new Map<string, Lease>(); // by shard id
  private readonly queue: Lease[] = [];
  private readonly link: CoordinatorLink;
  private draining = false;
  private drainPromise: Promise<void> | undefined;
  private stopped = false;
  private nc: Promise<NatsConnection> | undefined;
  private natsConnected = false;
  private publisher!: ResultPublisher;
  private covariances: AgentCovariances | undefined;
  private covarianceDir: string | undefined;
  private http: HttpServerHandle | undefined;
  private fatalError: Error | undefined;

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.log;
    this.metrics = opts.metrics ?? createAgentMetrics(createRegistry("node-agent"));
    this.supervisor = new EngineSupervisor({
      slots: opts.slots,
      command: opts.engineCommand,
      metrics: this.metrics,
      log: opts.log,
      cacheBudgetBytes: opts.cacheBudgetBytes,
      restartInitialMs: opts.restartInitialMs,
      onFatal: (err) => this.fail(err),
    });
    this.finished = new Promise((resolve) => (this.finish = resolve));
    for (const w of this.supervisor.workers) w.on("ready", () => this.pump());
    this.link = new CoordinatorLink({
      agentId: opts.agentId,
      coordinator: opts.coordinator,
      token: opts.token,
      tls: opts.tls,
      reconnectInitialMs: opts.reconnectInitialMs,
      reconnectMaxMs: opts.reconnectMaxMs,
      log: opts.log,
      handlers: {
        hello: () => ({
          workers: this.supervisor.workers.map((w) => ({ device: w.name, memoryBytes: w.slot.memoryBytes, ready: w.state === "ready" })),
          cachedPromptKeys: this.cachedPromptKeys(),
        }),
        heartbeat: () => ({
          leases: [...this.leases.values()].map((l) => ({ leaseId: l.leaseId, shardId: l.shard.shardId, cellsDone: l.cellsDone })),
          cachedPromptKeys: this.cachedPromptKeys(),
          cacheBytes: this.supervisor.workers.reduce((s, w) => s + w.cacheBytes, 0),
        }),
        welcomed: () => this.credit(this.capacity() - this.leases.size),
        lease: (grant) => this.onLease(grant),
        cancel: (c) => this.onCancel(c),
        drain: (reason) => void this.drain(reason),
        refused: (err) => this.fail(err),
      },
    });
  }

  /** True when it should receive work: a worker ready, NATS connected, a coordinator session, not draining. */
  get ready(): boolean {
    return this.supervisor.readyCount > 0 && this.natsConnected && this.link.connected && !this.draining && !this.fatalError;
  }

  /** Starts workers (throws if they cannot start), HTTP, NATS (in the background) and the coordinator link. */
  async start(): Promise<{ httpPort: number }> {
    this.http = await startHttpServer({
      port: this.opts.httpPort,
      host: this.opts.httpHost ?? "0.0.0.0",
      registry: this.metrics.registry,
      health: () => {
        if (this.fatalError) throw this.fatalError;
        return {
          agentId: this.opts.agentId,
          workersReady: this.supervisor.readyCount,
          workers: this.supervisor.workers.map((w) => ({ name: w.name, state: w.state, pid: w.pid ?? null, busy: w.busy })),
          natsConnected: this.natsConnected,
          coordinatorConnected: this.link.connected,
          leases: this.leases.size,
          draining: this.draining,
        };
      },
      ready: () => this.ready,
    });
    try {
      await this.supervisor.start();
    } catch (err) {
      await this.http.close();
      throw err;
    }
    this.nc = this.connectNats();
    // An unreachable server is retried forever; a refusal (bad credentials) ends the connect: fatal.
    this.nc.then(
      (nc) =>
        void nc.closed().then((err) => {
          if (!this.stopped) this.fail(new Error(`NATS connection to ${this.opts.natsUrl} closed for good${err ? `: ${err.message}` : ""}`, { cause: err }));
        }),
      (err: Error) => this.fail(new Error(`cannot connect to NATS ${this.opts.natsUrl}: ${err.message}; check --nats-url and --nats-creds`, { cause: err })),
    );
    this.publisher = new ResultPublisher(this.nc, { metrics: this.metrics, log: this.log });
    this.covarianceDir = this.opts.covarianceDir ?? join(tmpdir(), `factsweep-agent-cov-${process.pid}-${randomBytes(3).toString("hex")}`);
    this.covariances = new AgentCovariances(this.nc, this.covarianceDir, this.metrics.covariances);
    this.link.start();
    return { httpPort: this.http.port };
  }

  private async connectNats(): Promise<NatsConnection> {
    const nc = await connect({
      servers: this.opts.natsUrl,
      name: `factsweep-agent ${this.opts.agentId}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      waitOnFirstConnect: true,
      authenticator: this.opts.natsCreds ? credsAuthenticator(new TextEncoder().encode(this.opts.natsCreds)) : undefined,
      ...(this.opts.natsUser ? { user: this.opts.natsUser, pass: this.opts.natsPass ?? "" } : {}),
    });
    this.natsConnected = true;
    this.log.info(`connected to NATS ${this.opts.natsUrl}`);
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === "disconnect") {
          this.natsConnected = false;
          this.log.warn(`NATS connection lost; reconnecting (publishes wait and retry)`);
        } else if (s.type === "reconnect") {
          this.natsConnected = true;
          this.log.info(`NATS reconnected`);
        }
      }
    })();
    return nc;
  }

  /** Grants the coordinator `slots` more leases, unless draining or stopped. */
  private credit(slots: number): void {
    if (!this.draining && !this.stopped && slots > 0) this.link.send({ body: { $case: "credit", credit: { slots } } });
  }

  /**
   * Reports a lease failed (waits in the outbox while the coordinator is away); `handedBack`: given
   * back unrun or unfinished (drain, shutdown), which costs the shard no attempt.
   */
  private failed(leaseId: string, shardId: string, error: string, retryable: boolean, handedBack = false): void {
    this.link.send({ body: { $case: "failed", failed: { leaseId, shardId, error, retryable, handedBack } } });
  }

  /** Leases this agent holds at most: one running per worker plus `prefetch` queued per worker. */
  private capacity(): number {
    return this.opts.slots.length * (1 + Math.max(0, this.opts.prefetch ?? 1));
  }

  private cachedPromptKeys(): string[] {
    const keys = new Set<string>();
    for (const w of this.supervisor.workers) for (const k of w.cachedPrompts.keys()) keys.add(k);
    return [...keys];
  }

  // ---- leases -----------------------------------------------------------------------------------

  private onLease(grant: agent.LeaseGrant): void {
    const shard = grant.shard;
    if (!shard) {
      this.log.error(`lease ${grant.leaseId} carries no shard; ignored`);
      return;
    }
    const existing = this.leases.get(shard.shardId);
    if (existing) {
      // Re-granted after a reconnect while still running here: keep running under the new lease.
      this.log.info(`shard ${shard.shardId} re-leased as ${grant.leaseId} while running; continuing under the new lease`);
      existing.leaseId = grant.leaseId;
      // The coordinator spent a credit on it, but no new slot is taken: give that credit back.
      this.credit(1);
      return;
    }
    if (this.draining) {
      this.failed(grant.leaseId, shard.shardId, `agent ${this.opts.agentId} is draining`, true, true);
      return;
    }
    const lease: Lease = { leaseId: grant.leaseId, shard, worker: undefined, cellsDone: 0, abort: new AbortController(), startedAt: Date.now() };
    this.leases.set(shard.shardId, lease);
    this.queue.push(lease);
    this.pump();
  }

  private onCancel(c: agent.CancelLease): void {
    const lease = [...this.leases.values()].find((l) => l.leaseId === c.leaseId);
    if (!lease) return;
    this.log.info(`lease ${c.leaseId} (shard ${lease.shard.shardId}) cancelled by the coordinator: ${c.reason}`);
    const qi = this.queue.indexOf(lease);
    if (qi >= 0) {
      this.queue.splice(qi, 1);
      this.leases.delete(lease.shard.shardId);
      this.credit(1);
      return;
    }
    lease.abortKind = "cancel";
    lease.abort.abort(`cancelled by the coordinator: ${c.reason}`);
  }

  /**
   * Starts queued leases on free workers; a worker that holds the prompt or the model is preferred.
   * A worker takes at most one shard behind the one finishing its last call: a shard is released at
   * once when its one call is sent (whole-shard calls on a GPU), so without this bound the first
   * free worker took every queued lease and a second worker found none to prepare behind its grid
   * (measured: 270 of 504 grids with the next prepare behind them on 2 GPUs, 506 of 510 on one).
   */
  private pump(): void {
    while (this.queue.length > 0) {
      const held = new Map<EngineWorker, number>();
      const big = new Set<EngineWorker>();
      for (const l of this.leases.values()) {
        if (!l.worker) continue;
        held.set(l.worker, (held.get(l.worker) ?? 0) + 1);
        if (!isSmall(l.shard)) big.add(l.worker);
      }
      // Small trace grids (under the worker's --pack-below, 512 cells) may stack up to 1 + prefetch on
      // a worker, which packs those that arrive together into one pass (engine/worker.py, issue 14).
      const small = isSmall(this.queue[0]!.shard);
      const limit = (w: EngineWorker) => (small && !big.has(w) ? Math.max(2, 1 + (this.opts.prefetch ?? 1)) : 2);
      const free = this.supervisor.workers.filter((w) => !w.busy && (held.get(w) ?? 0) < limit(w) && w.state !== "fatal" && w.state !== "stopped");
      if (free.length === 0) return;
      const lease = this.queue.shift()!;
      const key = promptKeyOf(lease.shard);
      const modelId = lease.shard.model?.modelId ?? "";
      // A worker still finishing a shard's last call (free, but not idle) comes after an idle one.
      const score = (w: EngineWorker) =>
        (w.cachedPrompts.has(key) ? 8 : 0) + (w.models.has(modelId) ? 4 : 0) + (w.state === "ready" ? 2 : 0) + (w.client?.inFlight ? 0 : 1);
      const worker = free.sort((a, b) => score(b) - score(a))[0]!;
      void this.runLease(lease, worker);
    }
  }

  private async runLease(lease: Lease, worker: EngineWorker): Promise<void> {
    lease.worker = worker;
    worker.busy = true;
    const shardId = lease.shard.shardId;
    const t0 = Date.now();
    let outcome = "done";
    try {
      const out = await runShard({
        shard: lease.shard,
        worker,
        publisher: this.publisher.forLease(() => lease.leaseId),
        covariances: this.covariances,
        agentId: this.opts.agentId,
        metrics: this.metrics,
        log: this.log,
        batchSize: this.opts.batchSize,
        onLastCall: () => this.releaseWorker(lease, worker),
        signal: lease.abort.signal,
        onProgress: (n) => (lease.cellsDone = n),
      });
      this.log.info(
        `shard ${shardId} done: ${out.result.cells.length} cells on ${worker.name}, published seq ${out.published.seq}${out.published.duplicate ? " (duplicate)" : ""}`,
      );
      this.link.send({ body: { $case: "done", done: { leaseId: lease.leaseId, shardId, publishedSeq: out.published.seq } } });
    } catch (err) {
      if (err instanceof ShardCancelledError) {
        outcome = "cancelled";
        if (lease.abortKind === "handback") {
          this.failed(lease.leaseId, shardId, `handed back by agent ${this.opts.agentId}: ${err.reason}`, true, true);
        }
      } else {
        outcome = "failed";
        const retryable = err instanceof ShardError ? err.retryable : true;
        this.log.error(`shard ${shardId} failed (${retryable ? "retryable" : "not retryable"}): ${(err as Error).message}`);
        this.failed(lease.leaseId, shardId, (err as Error).message, retryable);
      }
    } finally {
      this.metrics.shardDuration.observe({ outcome }, (Date.now() - t0) / 1000);
      if (!lease.releasedWorker) worker.busy = false;
      this.leases.delete(shardId);
      this.credit(1);
      this.pump();
      this.leaseEnded?.();
    }
  }

  /**
   * The lease's last engine call is on its way to the worker: the next queued shard starts on it now,
   * so its PreparePrompt (and model load) reach the worker before that call's answer and the engine
   * goes from one shard to the next without waiting for the agent (publishing overlaps the next grid).
   */
  private releaseWorker(lease: Lease, worker: EngineWorker): void {
    if (lease.releasedWorker) return;
    lease.releasedWorker = true;
    worker.busy = false;
    this.pump();
  }

  private leaseEnded: (() => void) | undefined;

  // ---- drain and stop ---------------------------------------------------------------------------

  /**
   * Graceful drain: take no more work, hand back queued leases, let running shards finish (up to
   * the drain timeout, then hand them back), shut the workers down, close the links. Resolves
   * `finished` with 0. A second call with `force` hands running shards back at once.
   */
  drain(reason: string, force = false): Promise<void> {
    if (force) this.handBackRunning(`${reason} (forced)`);
    if (this.drainPromise) return this.drainPromise;
    this.draining = true;
    this.log.info(`draining (${reason}): ${this.leases.size} lease(s) held`);
    this.drainPromise = (async () => {
      for (const lease of this.queue.splice(0)) {
        this.leases.delete(lease.shard.shardId);
        this.failed(lease.leaseId, lease.shard.shardId, `agent ${this.opts.agentId} draining: ${reason}`, true, true);
      }
      const timer = setTimeout(
        () => this.handBackRunning(`drain timeout after ${this.opts.drainTimeoutMs ?? 600_000} ms`),
        this.opts.drainTimeoutMs ?? 600_000,
      );
      while (this.leases.size > 0) await new Promise<void>((r) => (this.leaseEnded = r));
      clearTimeout(timer);
      await this.stop();
      this.finish(this.fatalError ? 1 : 0);
    })();
    return this.drainPromise;
  }

  private handBackRunning(reason: string): void {
    for (const lease of this.leases.values()) {
      if (!lease.abort.signal.aborted) {
        lease.abortKind = "handback";
        lease.abort.abort(reason);
      }
    }
  }

  /** Closes everything (workers get Shutdown). Messages still in the outbox are lost; results are in JetStream. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.link.stop();
    // Leases still held are handed back now, while the stream is open (no attempt spent); their
    // runs then end without a further report.
    for (const l of this.leases.values()) {
      if (!l.abort.signal.aborted) {
        l.abortKind = "cancel";
        this.failed(l.leaseId, l.shard.shardId, `agent ${this.opts.agentId} stopping`, true, true);
      }
      l.abort.abort("agent stopping");
    }
    // Let the done/failed of the last shards reach the coordinator before the stream closes.
    await this.link.close();
    await this.supervisor.stop();
    if (this.nc) {
      const nc = await Promise.race([this.nc.catch(() => undefined), sleep(0).then(() => undefined)]);
      if (nc) await nc.drain().catch(() => nc.close());
      else void this.nc.then((c) => c.close()).catch(() => undefined);
    }
    await this.http?.close();
    // A folder of its own (not --cov-dir): the copies of C go with the process.
    if (this.covarianceDir && !this.opts.covarianceDir) rmSync(this.covarianceDir, { recursive: true, force: true });
    this.log.info(`stopped`);
  }

  private fail(err: Error): void {
    if (this.fatalError) return;
    this.fatalError = err;
    this.log.error(`fatal: ${err.message}`);
    void this.stop().finally(() => this.finish(1));
  }
}

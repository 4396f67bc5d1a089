/**
 * The node agent: engine workers (one per slot), a long-lived AgentService.Connect stream to the
 * coordinator (hello, credit, heartbeats; leases, cancels, drain), shards run on workers and their
 * results published to JetStream, Prometheus metrics and health on HTTP.
 *
 * Faults: a worker that dies is restarted and its shard re-runs the remaining cells; a coordinator
 * that goes away is reconnected with exponential backoff and jitter while running shards continue
 * (their results go to JetStream regardless, and their done/failed messages are sent after the
 * reconnect); publishes retry until NATS is back.
 */
import { hostname } from "node:os";
import { credentials, Metadata, status as grpcStatus, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { agent, AGENT_PROTOCOL_VERSION, type sweep } from "@factsweep/proto";
import { createRegistry, startHttpServer, type HttpServerHandle } from "@factsweep/shared";
import { EngineSupervisor, type EngineCommand, type EngineWorker } from "./engine-supervisor.js";
import { CoordinatorRefusedError, ShardCancelledError, ShardError } from "./errors.js";
import type { WorkerSlot } from "./gpu-discovery.js";
import type { Logger } from "./log.js";
import { createAgentMetrics, type AgentMetrics } from "./metrics.js";
import { ResultPublisher, sleep } from "./result-publisher.js";
import { runShard } from "./shard-runner.js";

/** Options of {@link Agent}. */
export interface AgentOptions {
  agentId: string;
  /** Coordinator address `host:port`. */
  coordinator: string;
  natsUrl: string;
  /** Contents of a NATS credentials (.creds) file. */
  natsCreds?: string;
  /** Agent token the coordinator requires (sent in the hello and as `authorization: Bearer`). */
  token?: string;
  /** mTLS to the coordinator: CA to verify it, and this agent's certificate and key. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  slots: WorkerSlot[];
  engineCommand: EngineCommand;
  /** 0 = a free port. */
  httpPort: number;
  httpHost?: string;
  /** Cells per RunCells. Default 64. */
  batchSize?: number;
  cacheBudgetBytes?: number;
  /** On drain, running shards get this long to finish before they are handed back. Default 10 min. */
  drainTimeoutMs?: number;
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  /** Worker restart backoff (tests shorten it). */
  restartInitialMs?: number;
  log: Logger;
  metrics?: AgentMetrics;
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
}

type Stream = ClientDuplexStream<agent.AgentMessage, agent.CoordinatorMessage>;

/** Codes with which the coordinator refuses an agent for good: reconnecting would not help. */
const REFUSALS = new Set([grpcStatus.FAILED_PRECONDITION, grpcStatus.UNAUTHENTICATED, grpcStatus.PERMISSION_DENIED, grpcStatus.INVALID_ARGUMENT]);

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
  private outbox: agent.AgentMessage[] = [];
  private stream: Stream | undefined;
  private welcomed = false;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private draining = false;
  private drainPromise: Promise<void> | undefined;
  private stopped = false;
  private readonly stopController = new AbortController();
  private nc: Promise<NatsConnection> | undefined;
  private natsConnected = false;
  private publisher!: ResultPublisher;
  private http: HttpServerHandle | undefined;
  private fatalError: Error | undefined;
  private client: agent.AgentServiceClient | undefined;

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
  }

  /** True when it should receive work: a worker ready, NATS connected, a coordinator session, not draining. */
  get ready(): boolean {
    return this.supervisor.readyCount > 0 && this.natsConnected && this.welcomed && !this.draining && !this.fatalError;
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
          coordinatorConnected: this.welcomed,
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
    this.publisher = new ResultPublisher(this.nc, { metrics: this.metrics, log: this.log });
    void this.connectLoop();
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

  // ---- coordinator link -------------------------------------------------------------------------

  private makeClient(): agent.AgentServiceClient {
    const tls = this.opts.tls;
    const creds = tls ? credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null) : credentials.createInsecure();
    return new agent.AgentServiceClient(this.opts.coordinator, creds, {
      // Notice a coordinator host that vanished without closing the connection.
      "grpc.keepalive_time_ms": 10_000,
      "grpc.keepalive_timeout_ms": 5_000,
      "grpc.keepalive_permit_without_calls": 1,
    });
  }

  private async connectLoop(): Promise<void> {
    this.client = this.makeClient();
    let failures = 0;
    while (!this.stopped) {
      let welcomed = false;
      try {
        welcomed = await this.session();
      } catch (err) {
        if (err instanceof CoordinatorRefusedError) {
          this.fail(err);
          return;
        }
        this.log.warn(`coordinator link: ${(err as Error).message}`);
      }
      if (this.stopped) return;
      failures = welcomed ? 1 : failures + 1;
      const base = Math.min(this.opts.reconnectMaxMs ?? 15_000, (this.opts.reconnectInitialMs ?? 250) * 2 ** (failures - 1));
      const delay = Math.round(Math.random() * base); // full jitter: agents do not reconnect in lockstep
      this.log.info(`reconnecting to coordinator ${this.opts.coordinator} in ${delay} ms (attempt ${failures})`);
      await sleep(delay, this.stopController.signal);
    }
  }

  /** One stream session; resolves (true if it got a Welcome) when the stream ends. */
  private session(): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const md = new Metadata();
      if (this.opts.token) md.set("authorization", `Bearer ${this.opts.token}`);
      const call = this.client!.connect(md);
      this.stream = call;
      let welcomed = false;
      let settled = false;
      const end = (err?: ServiceError) => {
        if (settled) return;
        settled = true;
        if (this.stream === call) this.stream = undefined;
        this.welcomed = false;
        if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
        this.heartbeatTimer = undefined;
        if (err && REFUSALS.has(err.code)) {
          reject(new CoordinatorRefusedError(this.opts.agentId, `coordinator ${this.opts.coordinator} refused agent ${this.opts.agentId}: ${err.details || err.message}`, { cause: err }));
        } else if (err) {
          reject(Object.assign(new Error(`stream to ${this.opts.coordinator} ended: ${grpcStatus[err.code] ?? err.code} ${err.details || err.message}`), { welcomed }));
        } else {
          resolve(welcomed);
        }
      };
      call.on("data", (msg: agent.CoordinatorMessage) => {
        const body = msg.body;
        if (!body) return;
        switch (body.$case) {
          case "welcome":
            welcomed = true;
            this.onWelcome(call, body.welcome);
            break;
          case "lease":
            this.onLease(body.lease);
            break;
          case "cancel":
            this.onCancel(body.cancel);
            break;
          case "drain":
            this.log.info(`coordinator asked to drain: ${body.drain.reason || "(no reason)"}`);
            void this.drain(`coordinator: ${body.drain.reason}`);
            break;
        }
      });
      call.on("error", (err: ServiceError) => end(err));
      call.on("end", () => end());
      call.on("status", () => undefined);
      call.write({
        body: {
          $case: "hello",
          hello: {
            protocolVersion: AGENT_PROTOCOL_VERSION,
            agentId: this.opts.agentId,
            hostname: hostname(),
            workers: this.supervisor.workers.map((w) => ({ device: w.name, memoryBytes: w.slot.memoryBytes, ready: w.state === "ready" })),
            cachedPromptKeys: this.cachedPromptKeys(),
            token: this.opts.token ?? "",
          },
        },
      });
    }).then(
      (welcomed) => welcomed as boolean,
      (err: Error & { welcomed?: boolean }) => {
        if (err instanceof CoordinatorRefusedError) throw err;
        this.log.warn(err.message);
        return err.welcomed ?? false;
      },
    );
  }

  private onWelcome(call: Stream, w: agent.Welcome): void {
    this.welcomed = true;
    this.log.info(`connected to coordinator ${this.opts.coordinator} (session ${w.sessionId}, lease TTL ${w.leaseTtlMs} ms, heartbeat ${w.heartbeatIntervalMs} ms)`);
    const every = w.heartbeatIntervalMs > 0 ? w.heartbeatIntervalMs : 5_000;
    this.heartbeatTimer = setInterval(() => this.sendHeartbeat(), every);
    // Tell the new session at once which leases are still running here (after a reconnect).
    this.sendHeartbeat();
    const outbox = this.outbox;
    this.outbox = [];
    for (const m of outbox) call.write(m);
    const free = this.opts.slots.length - this.leases.size;
    if (!this.draining && free > 0) this.send({ body: { $case: "credit", credit: { slots: free } } });
  }

  /** Sends on the live session; done/failed wait in the outbox while there is none. */
  private send(msg: agent.AgentMessage): void {
    const s = this.stream;
    if (s && this.welcomed && !s.writableEnded) {
      s.write(msg);
      return;
    }
    if (msg.body?.$case === "done" || msg.body?.$case === "failed") this.outbox.push(msg);
  }

  private sendHeartbeat(): void {
    this.send({
      body: {
        $case: "heartbeat",
        heartbeat: {
          leases: [...this.leases.values()].map((l) => ({ leaseId: l.leaseId, shardId: l.shard.shardId, cellsDone: l.cellsDone })),
          cachedPromptKeys: this.cachedPromptKeys(),
          cacheBytes: this.supervisor.workers.reduce((s, w) => s + w.cacheBytes, 0),
        },
      },
    });
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
      return;
    }
    if (this.draining) {
      this.send({ body: { $case: "failed", failed: { leaseId: grant.leaseId, shardId: shard.shardId, error: `agent ${this.opts.agentId} is draining`, retryable: true } } });
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
      if (!this.draining) this.send({ body: { $case: "credit", credit: { slots: 1 } } });
      return;
    }
    lease.abortKind = "cancel";
    lease.abort.abort(`cancelled by the coordinator: ${c.reason}`);
  }

  /** Starts queued leases on free workers; a worker that holds the prompt or the model is preferred. */
  private pump(): void {
    while (this.queue.length > 0) {
      const free = this.supervisor.workers.filter((w) => !w.busy && w.state !== "fatal" && w.state !== "stopped");
      if (free.length === 0) return;
      const lease = this.queue.shift()!;
      const key = lease.shard.prompt?.promptKey ?? "";
      const modelId = lease.shard.model?.modelId ?? "";
      const score = (w: EngineWorker) => (w.cachedPrompts.has(key) ? 4 : 0) + (w.models.has(modelId) ? 2 : 0) + (w.state === "ready" ? 1 : 0);
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
        publisher: this.publisher,
        agentId: this.opts.agentId,
        metrics: this.metrics,
        log: this.log,
        batchSize: this.opts.batchSize,
        signal: lease.abort.signal,
        onProgress: (n) => (lease.cellsDone = n),
      });
      this.log.info(`shard ${shardId} done: ${out.result.cells.length} cells on ${worker.name}, published seq ${out.published.seq}${out.published.duplicate ? " (duplicate)" : ""}`);
      this.send({ body: { $case: "done", done: { leaseId: lease.leaseId, shardId, publishedSeq: out.published.seq } } });
    } catch (err) {
      if (err instanceof ShardCancelledError) {
        outcome = "cancelled";
        if (lease.abortKind === "handback") {
          this.send({ body: { $case: "failed", failed: { leaseId: lease.leaseId, shardId, error: `handed back by agent ${this.opts.agentId}: ${err.reason}`, retryable: true } } });
        }
      } else {
        outcome = "failed";
        const retryable = err instanceof ShardError ? err.retryable : true;
        this.log.error(`shard ${shardId} failed (${retryable ? "retryable" : "not retryable"}): ${(err as Error).message}`);
        this.send({ body: { $case: "failed", failed: { leaseId: lease.leaseId, shardId, error: (err as Error).message, retryable } } });
      }
    } finally {
      this.metrics.shardDuration.observe({ outcome }, (Date.now() - t0) / 1000);
      worker.busy = false;
      this.leases.delete(shardId);
      if (!this.draining && !this.stopped) this.send({ body: { $case: "credit", credit: { slots: 1 } } });
      this.pump();
      this.leaseEnded?.();
    }
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
        this.send({ body: { $case: "failed", failed: { leaseId: lease.leaseId, shardId: lease.shard.shardId, error: `agent ${this.opts.agentId} draining: ${reason}`, retryable: true } } });
      }
      const timer = setTimeout(() => this.handBackRunning(`drain timeout after ${this.opts.drainTimeoutMs ?? 600_000} ms`), this.opts.drainTimeoutMs ?? 600_000);
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
    this.stopController.abort();
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    for (const l of this.leases.values()) l.abort.abort("agent stopping");
    // Let the done/failed of the last shards reach the coordinator before the stream closes.
    const s = this.stream;
    if (s && !s.writableEnded) {
      s.end();
      await Promise.race([new Promise((r) => s.once("status", r)), sleep(2_000)]);
    }
    this.client?.close();
    await this.supervisor.stop();
    if (this.nc) {
      const nc = await Promise.race([this.nc, sleep(0).then(() => undefined)]);
      if (nc) await nc.drain().catch(() => nc.close());
      else void this.nc.then((c) => c.close()).catch(() => undefined);
    }
    await this.http?.close();
    this.log.info(`stopped`);
  }

  private fail(err: Error): void {
    if (this.fatalError) return;
    this.fatalError = err;
    this.log.error(`fatal: ${err.message}`);
    void this.stop().finally(() => this.finish(1));
  }
}

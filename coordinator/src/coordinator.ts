/**
 * The coordinator process: connects NATS, opens the state store, starts the gRPC server (AgentService,
 * SweepService, grpc.health.v1; TLS and token auth), HTTP (/metrics, /healthz, /readyz), the
 * results consumer and the scheduler, and stops them again. The sweeps themselves (launch,
 * progress, aggregation, persistence, events) are `sweeps.ts`; the public sweep methods here
 * hand over to it. On start every sweep and shard is loaded from JetStream KV and carried on:
 * leases held by agents that do not reconnect within a TTL expire and are re-leased.
 */
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import { collectDefaultMetrics, type Registry } from "prom-client";
import { agent, control } from "@factsweep/proto";
import { createRegistry, startHttpServer, type HttpServerHandle } from "@factsweep/shared";
import { planLimits, type ModelTrace, type PlanLimits } from "@factsweep/planning";
import { createAgentService } from "./agent-service.js";
import { createSweepService, type SweepApi } from "./sweep-service.js";
import { Health } from "./health-service.js";
import { LeaseTable } from "./lease-table.js";
import { CoordinatorMetrics } from "./metrics.js";
import { Covariances, openCovarianceStore } from "./covariances.js";
import { normalizeRoots } from "./model-roots.js";
import { ResultsConsumer } from "./results-consumer.js";
import { natsLimits, type NatsLimits } from "./nats-limits.js";
import { connectNats, type NatsConnectOptions } from "./nats-connection.js";
import { Scheduler } from "./scheduler.js";
import { StateStore } from "./state-store.js";
import { Sweeps } from "./sweeps.js";
import { StaleCoordinatorError } from "./errors.js";

/** Default longest time one lease may be held (heartbeats renew its TTL, not this). */
export const DEFAULT_MAX_LEASE_MS = 3_600_000;

/** TLS files for the gRPC server; with `ca`, clients must present a certificate it signed (mTLS). */
export interface TlsFiles {
  cert: string;
  key: string;
  ca?: string;
}

/** Options of {@link Coordinator.start}. */
export interface CoordinatorOptions extends NatsConnectOptions {
  /** Default 127.0.0.1 (this host only); main.ts refuses other addresses without TLS and tokens. */
  grpcHost?: string;
  /** 0: any free port (read `grpcPort` after start). */
  grpcPort?: number;
  /** Default 127.0.0.1. */
  httpHost?: string;
  /** 0: any free port; -1: no HTTP server. */
  httpPort?: number;
  modelRoots: string[];
  /** Folders dataset files and corpora must lie in; default the model roots. */
  dataRoots?: string[];
  /** Caps of one sweep; unset ones keep DEFAULT_PLAN_LIMITS (planning/src/limits.ts). */
  limits?: Partial<PlanLimits>;
  leaseTtlMs?: number;
  heartbeatMs?: number;
  /** Sets both userToken and agentToken where those are not given (compatibility). */
  token?: string;
  /** Required of sweepctl on SweepService; unset: SweepService is open (loopback use). Never "". */
  userToken?: string;
  /** Required of node agents on AgentService; unset: AgentService is open (loopback use). Never "". */
  agentToken?: string;
  tls?: TlsFiles;
  /** mTLS only (tls.ca): an agent's id must be its client certificate's CN or a DNS name of its subjectAltName. */
  agentIdFromCertificate?: boolean;
  /** Backoff base for retried shards; default 1000 ms. */
  retryBackoffMs?: number;
  /** A shard reported done whose result is not counted within this is leased again; default 3 lease TTLs. */
  uncountedTimeoutMs?: number;
  /** Replicas and limits of the results streams and KV buckets; unset ones keep DEFAULT_NATS_LIMITS (nats-limits.ts). */
  natsLimits?: Partial<NatsLimits>;
  /** Finished sweeps kept in memory (most recently used); older ones are loaded from the KV when asked for. Default 8. */
  keepFinished?: number;
  /** How often a running sweep's new results are appended to its snapshot (Sweeps' snapshotMs). */
  snapshotMs?: number;
  /** Longest one lease may be held, heartbeats or not, before it is revoked and re-queued; 0: no limit. Default 1 hour. */
  maxLeaseMs?: number;
  /** A running sweep left waiting for a grant gains one priority level per this many ms (0: never). Default 300,000. */
  priorityAgingMs?: number;
  log?: (msg: string) => void;
}

/** A running coordinator. Events: `sweep` (sweepId) after anything about a sweep changed. */
export class Coordinator extends EventEmitter implements SweepApi {
  grpcPort = 0;
  httpPort = 0;
  readonly registry: Registry = createRegistry("coordinator", { defaultMetrics: false });
  readonly metrics: CoordinatorMetrics;
  readonly leaseTtlMs: number;
  readonly heartbeatMs: number;
  private readonly table: LeaseTable;
  private readonly log: (m: string) => void;
  private readonly health = new Health(() => this.isReady(), ["factsweep.agent.v1.AgentService", "factsweep.control.v1.SweepService"]);
  private nc!: NatsConnection;
  private store!: StateStore;
  private scheduler!: Scheduler;
  private sweeps!: Sweeps;
  private consumer!: ResultsConsumer;
  private server!: grpc.Server;
  private http: HttpServerHandle | undefined;
  private ready = false;
  private stopping = false;
  private fenced = false;

  private constructor(private readonly opts: CoordinatorOptions) {
    super();
    this.setMaxListeners(0);
    this.log = opts.log ?? ((m) => console.error(`[coordinator] ${m}`));
    this.leaseTtlMs = opts.leaseTtlMs ?? 15_000;
    this.heartbeatMs = opts.heartbeatMs ?? Math.max(100, Math.floor(this.leaseTtlMs / 3));
    this.table = new LeaseTable({
      leaseTtlMs: this.leaseTtlMs,
      backoffBaseMs: opts.retryBackoffMs ?? 1000,
      uncountedTimeoutMs: opts.uncountedTimeoutMs,
      maxLeaseMs: opts.maxLeaseMs ?? DEFAULT_MAX_LEASE_MS,
      priorityAgingMs: opts.priorityAgingMs,
    });
    // Process metrics prefixed, as the Grafana dashboards read them (factsweep_coordinator_process_*, _nodejs_*).
    collectDefaultMetrics({ register: this.registry, prefix: "factsweep_coordinator_" });
    this.metrics = new CoordinatorMetrics(this.registry, {
      shardsInFlight: () => this.table.inFlight(),
      queueDepth: () => this.table.queueDepth(),
      agentsConnected: () => this.scheduler?.agents().length ?? 0,
      sweeps: () => this.sweeps?.gauges() ?? [],
    });
  }

  /** Connects to NATS, loads the state, starts consuming results and serving gRPC and HTTP. */
  static async start(opts: CoordinatorOptions): Promise<Coordinator> {
    for (const k of ["token", "userToken", "agentToken"] as const) {
      if (opts[k] === "") throw new Error(`${k} is empty: give a token, or leave it unset to serve without one on loopback only`);
    }
    if (opts.agentIdFromCertificate && !opts.tls?.ca) throw new Error("agentIdFromCertificate needs mTLS: set tls.ca (and tls.cert, tls.key)");
    const c = new Coordinator(opts);
    await c.init();
    return c;
  }

  private async init(): Promise<void> {
    const o = this.opts;
    const limits = natsLimits(o.natsLimits);
    this.nc = await connectNats(o);
    this.store = await StateStore.open(this.nc, {
      limits,
      log: this.log,
      onWriteError: (k, e) => {
        this.log(`state write of ${k} failed: ${(e as Error).message}`);
        // Fenced off by a newer coordinator: stop claiming readiness so traffic goes to the new one.
        if (e instanceof StaleCoordinatorError) this.fenced = true;
        this.health.refresh();
      },
    });
    this.scheduler = new Scheduler({ store: this.store, table: this.table, metrics: this.metrics, log: this.log });
    const covariances = new Covariances(await openCovarianceStore(this.nc, limits.replicas, limits.covMaxBytes, this.log), {
      release: (ids, error) => this.scheduler.release(ids, error),
      counter: this.metrics.covariances,
      log: this.log,
    });
    this.sweeps = new Sweeps({
      covariances,
      store: this.store,
      table: this.table,
      scheduler: this.scheduler,
      metrics: this.metrics,
      roots: normalizeRoots(o.modelRoots),
      dataRoots: normalizeRoots(o.dataRoots && o.dataRoots.length > 0 ? o.dataRoots : o.modelRoots),
      limits: planLimits(o.limits),
      keepFinished: o.keepFinished,
      snapshotMs: o.snapshotMs,
      isReady: () => this.isReady(),
      publish: (subject, data) => this.nc.publish(subject, data),
      log: this.log,
    });
    this.scheduler.on("shards", (id: string) => this.sweeps.shardsChanged(id));
    this.scheduler.promptOf = (sweepId, index) => this.sweeps.promptOf(sweepId, index);
    this.scheduler.modelOf = (sweepId) => this.sweeps.modelOf(sweepId);
    this.sweeps.on("sweep", (id: string) => this.emit("sweep", id));
    void this.nc.closed().then(() => this.health.refresh());

    // gRPC first (agents and CLI get UNAVAILABLE until ready), then state, then results.
    this.server = new grpc.Server({
      "grpc.keepalive_time_ms": 10_000,
      "grpc.keepalive_permit_without_calls": 1,
      "grpc.http2.min_ping_interval_without_data_ms": 5_000,
    } as grpc.ServerOptions);
    this.server.addService(
      agent.AgentServiceService,
      createAgentService({
        scheduler: this.scheduler,
        leaseTtlMs: this.leaseTtlMs,
        heartbeatMs: this.heartbeatMs,
        token: o.agentToken ?? o.token,
        agentIdFromCertificate: o.agentIdFromCertificate,
        isReady: () => this.ready,
        log: this.log,
      }),
    );
    this.server.addService(control.SweepServiceService, createSweepService(this, { token: o.userToken ?? o.token }));
    this.health.addToServer(this.server);
    this.grpcPort = await new Promise<number>((res, rej) =>
      this.server.bindAsync(`${o.grpcHost ?? "127.0.0.1"}:${o.grpcPort ?? 7070}`, serverCredentials(o.tls), (err, port) => (err ? rej(err) : res(port))),
    );
    if ((o.httpPort ?? 9464) >= 0) {
      this.http = await startHttpServer({
        host: o.httpHost ?? "127.0.0.1",
        port: o.httpPort ?? 9464,
        registry: this.registry,
        ready: () => this.isReady(),
        health: () => {
          if (this.nc.isClosed()) throw new Error("NATS connection closed");
          return {
            epoch: this.store?.epoch,
            sweeps: this.sweeps.size,
            agents: this.scheduler?.agents().length ?? 0,
            pendingStateWrites: this.store?.pendingWrites() ?? 0,
          };
        },
      });
      this.httpPort = this.http.port;
    }

    await this.sweeps.load();
    this.consumer = new ResultsConsumer(this.nc, {
      sink: this.sweeps,
      onConsumed: (dup) => this.metrics.resultsConsumed.inc({ duplicate: String(dup) }),
      onRejected: (reason) => this.metrics.resultsRejected.inc({ reason }),
      limits,
      log: this.log,
    });
    await this.consumer.start();
    this.scheduler.start();
    this.ready = true;
    this.health.refresh();
    this.log(
      `ready: gRPC on ${this.grpcPort}${this.http ? `, HTTP on ${this.http.port}` : ""}, NATS ${o.natsUrl}, epoch ${this.store.epoch}, ${this.sweeps.size} sweep(s) loaded`,
    );
  }

  /** Ready: state loaded, NATS connected, not shutting down. */
  isReady(): boolean {
    return this.ready && !this.stopping && !this.fenced && !this.nc.isClosed();
  }

  // ---- the sweep API (SweepService, sweepctl local, tests): see sweeps.ts -----------------

  /** Parses, checks and plans a spec, persists the sweep and its shards, and starts it. */
  launch(req: control.LaunchRequest): Promise<control.SweepInfo> {
    return this.sweeps.launch(req);
  }

  /** The sweep's current SweepInfo. */
  info(sweepId: string): control.SweepInfo {
    return this.sweeps.info(sweepId);
  }

  get(sweepId: string): control.SweepInfo {
    return this.sweeps.info(sweepId);
  }

  list(): control.SweepInfo[] {
    return this.sweeps.list();
  }

  /** Calls `cb` with the SweepInfo now and on every change; returns an unsubscribe function. */
  watch(sweepId: string, cb: (info: control.SweepInfo) => void): () => void {
    return this.sweeps.watch(sweepId, cb);
  }

  /** Cancels a running sweep: no more grants, leases revoked. Finished sweeps are left as they are. */
  cancel(sweepId: string): control.SweepInfo {
    return this.sweeps.cancel(sweepId);
  }

  /** Resumes a cancelled or failed sweep: failed shards are re-queued with a fresh attempt budget. */
  resume(sweepId: string): control.SweepInfo {
    return this.sweeps.resume(sweepId);
  }

  /** Removes a finished, failed or cancelled sweep: record, shard records and stored results (not a running one). */
  delete(sweepId: string): Promise<control.DeleteReply> {
    return this.sweeps.delete(sweepId);
  }

  /** Loads a finished sweep that was let go from memory (results, report and resume need it held). */
  open(sweepId: string): Promise<void> {
    return this.sweeps.open(sweepId);
  }

  /** Every aggregated cell of the sweep as result rows, produced lazily. */
  results(sweepId: string): Iterable<control.ResultRow> {
    return this.sweeps.results(sweepId);
  }

  /** The tracing report's view of a sweep (heatmaps of mean IE/AIE by token group × layer). */
  traceView(sweepId: string): ModelTrace {
    return this.sweeps.traceView(sweepId);
  }

  /** What `sweepctl report` draws for a sweep: the trace view, or a kind's aggregate summary. */
  report(sweepId: string): control.ReportData {
    return this.sweeps.report(sweepId);
  }

  /** The aggregator's summary (IE/AIE by token group) as JSON. */
  summary(sweepId: string): unknown {
    return this.sweeps.summary(sweepId);
  }

  /** Connected agents. */
  agents(): control.AgentStatus[] {
    return this.scheduler.agentStatuses();
  }

  /** Ask an agent to finish its leases and take no more. */
  drainAgent(agentId: string, reason = "drain requested"): void {
    this.scheduler.drain(agentId, reason);
  }

  // ---- stopping -------------------------------------------------------------------------

  /**
   * Graceful stop: refuse new work, stop granting, flush results and state, close servers and
   * NATS. Agents keep their leases; a restarted coordinator picks them up when they reconnect.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.halt();
    await this.consumer?.stop();
    await this.store?.flush().catch(() => undefined);
    this.store?.close();
    await new Promise<void>((res) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        res();
      }, 2000);
      this.server.tryShutdown(() => {
        clearTimeout(t);
        res();
      });
    });
    await this.closeConnections();
  }

  /** Test hook: abrupt stop without flushing (what SIGKILL would do, minus the process). */
  async crash(): Promise<void> {
    this.halt();
    void this.consumer?.stop();
    this.store?.close();
    this.server.forceShutdown();
    await this.closeConnections();
  }

  /** No more readiness and no more grants. */
  private halt(): void {
    this.stopping = true;
    this.health.close();
    this.scheduler?.stop();
  }

  private async closeConnections(): Promise<void> {
    await this.http?.close();
    await this.nc?.close().catch(() => undefined);
  }
}

/** gRPC server credentials: insecure, TLS, or mTLS when a CA for client certificates is given. */
function serverCredentials(tls: TlsFiles | undefined): grpc.ServerCredentials {
  return tls
    ? grpc.ServerCredentials.createSsl(
        tls.ca ? readFileSync(tls.ca) : null,
        [{ cert_chain: readFileSync(tls.cert), private_key: readFileSync(tls.key) }],
        tls.ca !== undefined,
      )
    : grpc.ServerCredentials.createInsecure();
}

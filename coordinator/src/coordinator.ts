/**
 * The coordinator process: sweeps (launch, progress, cancel, resume, results), the scheduler and
 * its agents, the results consumer, the state store, and the gRPC and HTTP servers around them.
 * On start it loads every sweep and shard from JetStream KV and carries on: leases held by agents
 * that do not reconnect within a TTL expire and are re-leased.
 */
import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { connect, credsAuthenticator, type NatsConnection, type ConnectionOptions } from "@nats-io/transport-node";
import { collectDefaultMetrics, type Registry } from "prom-client";
import { agent, control, sweep } from "@factsweep/proto";
import { createRegistry, EVENTS_SUBJECT_PREFIX, startHttpServer, type HttpServerHandle } from "@factsweep/shared";
import { KindAggregator, parseSweepSpec, shardUnits, type SweepSpec } from "@factsweep/planning";
import { createAgentService } from "./agent-service.js";
import { createSweepService } from "./sweep-service.js";
import { createHealthService, HealthService } from "./health-service.js";
import { LeaseTable } from "./lease-table.js";
import { CoordinatorMetrics } from "./metrics.js";
import { confineModelPath, isInsideRoots, normalizeRoots } from "./model-roots.js";
import { ResultsConsumer } from "./results-consumer.js";
import { Scheduler } from "./scheduler.js";
import { StateStore, type ShardRecord, type SweepRecord } from "./state-store.js";
import { newAggregator, plan, resultRows, type Aggregator } from "./sweep-runtime.js";
import { modelTrace, type ModelTrace } from "@factsweep/planning";
import { InvalidSpecError, ModelNotFoundError, ModelPathDeniedError, StaleCoordinatorError, SweepExistsError, SweepNotFoundError, UnavailableError } from "./errors.js";

/** TLS files for the gRPC server; with `ca`, clients must present a certificate it signed (mTLS). */
export interface TlsFiles {
  cert: string;
  key: string;
  ca?: string;
}

/** Options of {@link Coordinator.start}. */
export interface CoordinatorOptions {
  natsUrl: string;
  /** NATS credentials: a .creds file, or user/password, or a token. */
  natsCreds?: string;
  natsUser?: string;
  natsPass?: string;
  natsToken?: string;
  grpcHost?: string;
  /** 0: any free port (read `grpcPort` after start). */
  grpcPort?: number;
  httpHost?: string;
  /** 0: any free port; -1: no HTTP server. */
  httpPort?: number;
  modelRoots: string[];
  leaseTtlMs?: number;
  heartbeatMs?: number;
  /** API token required of the CLI and the agents. */
  token?: string;
  tls?: TlsFiles;
  /** Backoff base for retried shards; default 1000 ms. */
  retryBackoffMs?: number;
  log?: (msg: string) => void;
}

interface LiveSweep {
  rec: SweepRecord;
  spec: SweepSpec;
  agg: Aggregator;
  prompts: sweep.PromptSpec[];
  /** (time, done cells) samples for cells/s and ETA. */
  samples: { t: number; cells: number }[];
  lastEventMs: number;
  lastEventState: string;
  /** Results aggregated in memory, not yet durable (first adds, to store) and every shard id seen since the last persist. */
  unpersisted: Map<string, sweep.ShardResult | undefined>;
}

const SWEEP_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** A running coordinator. */
export class Coordinator extends EventEmitter {
  grpcPort = 0;
  httpPort = 0;
  readonly registry: Registry = createRegistry("coordinator", { defaultMetrics: false });
  readonly metrics: CoordinatorMetrics;
  private readonly sweeps = new Map<string, LiveSweep>();
  private readonly roots: string[];
  private readonly log: (m: string) => void;
  private nc!: NatsConnection;
  private store!: StateStore;
  private scheduler!: Scheduler;
  private consumer!: ResultsConsumer;
  private server!: grpc.Server;
  private http: HttpServerHandle | undefined;
  private ready = false;
  private stopping = false;
  private fenced = false;
  readonly leaseTtlMs: number;
  readonly heartbeatMs: number;
  private table: LeaseTable;

  private constructor(private readonly opts: CoordinatorOptions) {
    super();
    this.setMaxListeners(0);
    this.log = opts.log ?? ((m) => console.error(`[coordinator] ${m}`));
    this.roots = normalizeRoots(opts.modelRoots);
    this.leaseTtlMs = opts.leaseTtlMs ?? 15_000;
    this.heartbeatMs = opts.heartbeatMs ?? Math.max(100, Math.floor(this.leaseTtlMs / 3));
    this.table = new LeaseTable({ leaseTtlMs: this.leaseTtlMs, backoffBaseMs: opts.retryBackoffMs ?? 1000 });
    // Process metrics prefixed, as the Grafana dashboards read them (factsweep_coordinator_process_*, _nodejs_*).
    collectDefaultMetrics({ register: this.registry, prefix: "factsweep_coordinator_" });
    this.metrics = new CoordinatorMetrics(this.registry, {
      shardsInFlight: () => this.table.inFlight(),
      queueDepth: () => this.table.queueDepth(),
      agentsConnected: () => this.scheduler?.agents().length ?? 0,
      sweeps: () => [...this.sweeps.values()].map((s) => ({ sweepId: s.rec.sweepId, active: s.rec.state === "running", plannedCells: s.rec.plannedCells, doneCells: this.table.counts(s.rec.sweepId).doneCells })),
    });
  }

  /** Connects to NATS, loads the state, starts consuming results and serving gRPC and HTTP. */
  static async start(opts: CoordinatorOptions): Promise<Coordinator> {
    const c = new Coordinator(opts);
    await c.init();
    return c;
  }

  private async init(): Promise<void> {
    const o = this.opts;
    const natsOpts: ConnectionOptions = { servers: o.natsUrl, name: "factsweep-coordinator", maxReconnectAttempts: -1, reconnectTimeWait: 250, waitOnFirstConnect: true };
    if (o.natsCreds) natsOpts.authenticator = credsAuthenticator(readFileSync(o.natsCreds));
    if (o.natsUser) Object.assign(natsOpts, { user: o.natsUser, pass: o.natsPass ?? "" });
    if (o.natsToken) natsOpts.token = o.natsToken;
    this.nc = await connect(natsOpts);
    this.store = await StateStore.open(this.nc, {
      onWriteError: (k, e) => {
        this.log(`state write of ${k} failed: ${(e as Error).message}`);
        // Fenced off by a newer coordinator: stop claiming readiness so traffic goes to the new one.
        if (e instanceof StaleCoordinatorError) this.fenced = true;
      },
    });
    this.scheduler = new Scheduler({ store: this.store, table: this.table, metrics: this.metrics, log: this.log });
    this.scheduler.on("shards", (id: string) => this.onShardsChanged(id));

    // gRPC first (agents and CLI get UNAVAILABLE until ready), then state, then results.
    this.server = new grpc.Server({ "grpc.keepalive_time_ms": 10_000, "grpc.keepalive_permit_without_calls": 1, "grpc.http2.min_ping_interval_without_data_ms": 5_000 } as grpc.ServerOptions);
    this.server.addService(agent.AgentServiceService, createAgentService({
      scheduler: this.scheduler, leaseTtlMs: this.leaseTtlMs, heartbeatMs: this.heartbeatMs, token: o.token, isReady: () => this.ready, log: this.log,
    }));
    this.server.addService(control.SweepServiceService, createSweepService(this, { token: o.token }));
    this.server.addService(HealthService, createHealthService(() => this.isReady(), ["factsweep.agent.v1.AgentService", "factsweep.control.v1.SweepService"]));
    const creds = o.tls
      ? grpc.ServerCredentials.createSsl(o.tls.ca ? readFileSync(o.tls.ca) : null, [{ cert_chain: readFileSync(o.tls.cert), private_key: readFileSync(o.tls.key) }], o.tls.ca !== undefined)
      : grpc.ServerCredentials.createInsecure();
    this.grpcPort = await new Promise<number>((res, rej) => this.server.bindAsync(`${o.grpcHost ?? "0.0.0.0"}:${o.grpcPort ?? 7070}`, creds, (err, port) => (err ? rej(err) : res(port))));
    if ((o.httpPort ?? 9464) >= 0) {
      this.http = await startHttpServer({
        host: o.httpHost ?? "0.0.0.0", port: o.httpPort ?? 9464, registry: this.registry, ready: () => this.isReady(),
        health: () => {
          if (this.nc.isClosed()) throw new Error("NATS connection closed");
          return { epoch: this.store?.epoch, sweeps: this.sweeps.size, agents: this.scheduler?.agents().length ?? 0, pendingStateWrites: this.store?.pendingWrites() ?? 0 };
        },
      });
      this.httpPort = this.http.port;
    }

    await this.loadState();
    this.consumer = new ResultsConsumer(this.nc, {
      sink: { add: (r) => this.addResult(r), persist: (ids) => this.persistAggregates(ids) },
      onConsumed: (dup) => this.metrics.resultsConsumed.inc({ duplicate: String(dup) }),
      log: this.log,
    });
    await this.consumer.start();
    this.scheduler.start();
    this.ready = true;
    this.log(`ready: gRPC on ${this.grpcPort}${this.http ? `, HTTP on ${this.http.port}` : ""}, NATS ${o.natsUrl}, epoch ${this.store.epoch}, ${this.sweeps.size} sweep(s) loaded`);
  }

  /** Ready: state loaded, NATS connected, not shutting down. */
  isReady(): boolean {
    return this.ready && !this.stopping && !this.fenced && !this.nc.isClosed();
  }

  private async loadState(): Promise<void> {
    const { sweeps, shards } = await this.store.loadAll();
    for (const rec of sweeps) {
      let spec: SweepSpec;
      try {
        spec = parseSweepSpec(rec.spec, { baseDir: rec.specDir });
      } catch (err) {
        this.log(`sweep ${rec.sweepId}: stored spec no longer parses (${(err as Error).message}); skipped`);
        continue;
      }
      const prompts = rec.prompts.map((p) => sweep.PromptSpec.fromJSON(p));
      // The aggregate is the fold of the stored results: rebuild it.
      const agg = newAggregator(spec, rec.sweepId, prompts);
      for (const bytes of await this.store.loadResults(rec.sweepId)) agg.add(sweep.ShardResult.decode(bytes));
      this.sweeps.set(rec.sweepId, { rec, spec, agg, prompts, samples: [], unpersisted: new Map(), lastEventMs: 0, lastEventState: "" });
      this.table.setSweep(rec.sweepId, rec.state === "running", rec.maxAttempts);
    }
    const known = shards.filter((s) => this.sweeps.has(s.sweepId));
    this.scheduler.addShards(known, false);
    // A coordinator that died during a launch may have persisted fewer shards than planned:
    // planning is deterministic, so re-plan and add the missing ones.
    for (const s of this.sweeps.values()) {
      const have = new Set(known.filter((r) => r.sweepId === s.rec.sweepId).map((r) => r.shardId));
      if (have.size >= s.rec.shardCount) continue;
      try {
        const missing = plan(s.spec, s.rec.sweepId).shards.filter((sh) => !have.has(sh.shardId));
        this.log(`sweep ${s.rec.sweepId}: ${have.size}/${s.rec.shardCount} shards were persisted before a crash; re-planned ${missing.length}`);
        this.scheduler.addShards(missing.map((sh) => this.shardRecord(s.rec.sweepId, sh)), true);
      } catch (err) {
        this.log(`sweep ${s.rec.sweepId}: cannot re-plan its missing shards: ${(err as Error).message}`);
      }
    }
    for (const id of this.sweeps.keys()) this.onShardsChanged(id);
  }

  // ---- results --------------------------------------------------------------------------

  private addResult(r: sweep.ShardResult): "added" | "duplicate" | "unknown" {
    const s = this.sweeps.get(r.sweepId);
    if (!s) return "unknown";
    let added: boolean;
    try {
      added = s.agg.add(r);
    } catch (err) {
      // A result that does not fit its sweep (unknown prompt, token outside it): reported, never aggregated.
      this.log(`result of shard ${r.shardId} rejected: ${(err as Error).message}`);
      return "unknown";
    }
    if (added) s.unpersisted.set(r.shardId, r);
    else if (!s.unpersisted.has(r.shardId)) s.unpersisted.set(r.shardId, undefined);
    if (added) {
      // Experiment kinds publish no cells; count the shard's planned units as its progress does.
      const cells = r.cells.length || (this.table.get(r.shardId)?.cells ?? 0);
      this.metrics.cells.inc({ status: "done" }, cells);
      this.metrics.shards.inc({ status: "done" });
    }
    return added ? "added" : "duplicate";
  }

  /** Stores first, then marks the shards consumed: a shard record never claims a result the KV lacks. */
  private async persistAggregates(ids: Set<string>): Promise<void> {
    for (const id of ids) {
      const s = this.sweeps.get(id);
      if (!s) continue;
      const batch = [...s.unpersisted];
      await Promise.all(batch.map(([shardId, r]) => (r ? this.store.saveResult(shardId, sweep.ShardResult.encode(r).finish()) : undefined)));
      for (const [shardId, r] of batch) {
        if (s.unpersisted.get(shardId) === r) s.unpersisted.delete(shardId);
        this.scheduler.resultConsumed(shardId);
      }
    }
  }

  private onShardsChanged(sweepId: string): void {
    const s = this.sweeps.get(sweepId);
    if (!s) return;
    const c = this.table.counts(sweepId);
    const now = Date.now();
    s.samples.push({ t: now, cells: c.doneCells });
    while (s.samples.length > 2 && now - s.samples[0]!.t > 30_000) s.samples.shift();
    const rec = s.rec;
    rec.doneCells = c.doneCells;
    if (rec.state === "running" && c.pending === 0 && c.leased === 0) {
      rec.state = c.failed > 0 || c.total === 0 ? "failed" : "done";
      rec.finishedMs = now;
      this.table.setSweep(sweepId, false, rec.maxAttempts);
      this.log(`sweep ${sweepId} ${rec.state}: ${c.done}/${c.total} shards done, ${c.failed} failed`);
    }
    this.store.saveSweep(rec);
    this.emit("sweep", sweepId);
    this.publishProgress(s);
  }

  /** Best-effort progress on core NATS (`factsweep.events.<sweep>`, SweepInfo JSON), at most once a second per sweep and on every end. */
  private publishProgress(s: LiveSweep): void {
    const now = Date.now();
    const terminal = s.rec.state !== "running";
    if (!terminal && now - s.lastEventMs < 1000) return;
    if (terminal && s.lastEventState === s.rec.state) return;
    s.lastEventMs = now;
    s.lastEventState = s.rec.state;
    try {
      this.nc.publish(`${EVENTS_SUBJECT_PREFIX}.${s.rec.sweepId}`, JSON.stringify(control.SweepInfo.toJSON(this.info(s.rec.sweepId))));
    } catch {
      // best effort: a closed or reconnecting connection drops the event
    }
  }

  // ---- the sweep API (used by SweepService) -------------------------------------------

  private requireReady(): void {
    if (!this.isReady()) throw new UnavailableError("coordinator is not ready (starting, shutting down, or NATS unreachable); retry shortly");
  }

  private live(sweepId: string): LiveSweep {
    const s = this.sweeps.get(sweepId);
    if (!s) throw new SweepNotFoundError(sweepId);
    return s;
  }

  /** Parses, checks and plans a spec, persists the sweep and its shards, and starts it. */
  async launch(req: control.LaunchRequest): Promise<control.SweepInfo> {
    this.requireReady();
    const specDir = req.specDir || process.cwd();
    const spec = parseSweepSpec(req.spec, { baseDir: specDir });
    const sweepId = req.sweepId || `${spec.name.toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "sweep"}-${randomBytes(3).toString("hex")}`;
    if (!SWEEP_ID.test(sweepId)) {
      throw new InvalidSpecError("sweep_id", `sweep_id: expected 1-64 letters, digits, '_' or '-' starting with a letter or digit, got ${JSON.stringify(sweepId)}`);
    }
    if (this.sweeps.has(sweepId) || (await this.store.sweepExists(sweepId))) {
      throw new SweepExistsError(sweepId);
    }
    spec.model.path = confineModelPath(spec.model.path, this.roots);
    if (spec.model.tokenizer && !isInsideRoots(spec.model.tokenizer, this.roots)) throw new ModelPathDeniedError(spec.model.tokenizer, this.roots);
    let p;
    try {
      p = plan(spec, sweepId);
    } catch (err) {
      const e = err as Error;
      if (e.name === "ModelConfigError") throw new ModelNotFoundError(spec.model.path, e.message, { cause: err });
      if (e.name === "DatasetError" || e.name === "TokenizerError") throw new InvalidSpecError("dataset", e.message, { cause: err });
      throw err;
    }
    const now = Date.now();
    const rec: SweepRecord = {
      sweepId, name: spec.name, kind: spec.kind, spec: req.spec, specDir, model: sweep.ModelRef.toJSON(p.model),
      prompts: p.prompts.map((x) => sweep.PromptSpec.toJSON(x)), promptErrors: p.promptErrors,
      state: p.shards.length === 0 ? "failed" : "running", plannedCells: p.plannedCells, shardCount: p.shards.length,
      maxAttempts: spec.max_attempts, doneCells: 0, retries: 0, createdMs: now, finishedMs: p.shards.length === 0 ? now : 0,
    };
    const agg = newAggregator(spec, sweepId, p.prompts); // before anything is persisted
    await this.store.createSweep(rec);
    const live: LiveSweep = { rec, spec, agg, prompts: p.prompts, samples: [{ t: now, cells: 0 }], unpersisted: new Map(), lastEventMs: 0, lastEventState: "" };
    this.sweeps.set(sweepId, live);
    this.table.setSweep(sweepId, rec.state === "running", rec.maxAttempts);
    this.scheduler.addShards(p.shards.map((sh) => this.shardRecord(sweepId, sh)), true);
    await this.store.flush(); // the sweep is durable before the caller learns its id
    this.log(`sweep ${sweepId} launched: ${p.prompts.length} prompts (${p.promptErrors.length} with errors), ${p.shards.length} shards, ${p.plannedCells} cells`);
    this.emit("sweep", sweepId);
    return this.info(sweepId);
  }

  private shardRecord(sweepId: string, sh: sweep.Shard): ShardRecord {
    return {
      ...LeaseTable.pending(sh.shardId, sweepId, sh.prompt?.promptKey ?? `${sweepId}/${sh.prompt?.index ?? 0}`, shardUnits(sh)),
      shard: Buffer.from(sweep.Shard.encode(sh).finish()).toString("base64"),
    };
  }

  /** The sweep's current SweepInfo. */
  info(sweepId: string): control.SweepInfo {
    const s = this.live(sweepId);
    const c = this.table.counts(sweepId);
    const retries = this.table.shardsOf(sweepId).reduce((n, e) => n + Math.max(0, e.attempts - 1), 0);
    const first = s.samples[0];
    const last = s.samples[s.samples.length - 1];
    const dt = first && last ? (last.t - first.t) / 1000 : 0;
    const rate = first && last && dt > 0 ? (last.cells - first.cells) / dt : 0;
    const remaining = s.rec.plannedCells - c.doneCells;
    return {
      sweepId, state: s.rec.state, name: s.rec.name, kind: s.rec.kind,
      counts: {
        plannedCells: s.rec.plannedCells, doneCells: c.doneCells, shardsTotal: c.total, shardsDone: c.done, shardsLeased: c.leased,
        shardsPending: c.pending, shardsFailed: c.failed, retries,
      },
      cellsPerSecond: rate, etaSeconds: s.rec.state === "running" && rate > 0 ? remaining / rate : 0,
      createdMs: s.rec.createdMs, finishedMs: s.rec.finishedMs,
      promptErrors: s.rec.promptErrors.map((e) => ({ promptIndex: e.index, message: e.message })),
      failedShards: c.failedShards.map((id) => `${id}: ${this.table.get(id)?.lastError ?? ""}`),
    };
  }

  get(sweepId: string): control.SweepInfo {
    return this.info(sweepId);
  }

  list(): control.SweepInfo[] {
    return [...this.sweeps.keys()].map((id) => this.info(id)).sort((a, b) => a.createdMs - b.createdMs);
  }

  /** Calls `cb` with the SweepInfo now and on every change; returns an unsubscribe function. */
  watch(sweepId: string, cb: (info: control.SweepInfo) => void): () => void {
    this.live(sweepId);
    const on = (id: string) => {
      if (id === sweepId) cb(this.info(sweepId));
    };
    this.on("sweep", on);
    cb(this.info(sweepId));
    return () => this.off("sweep", on);
  }

  /** Cancels a running sweep: no more grants, leases revoked. Finished sweeps are left as they are. */
  cancel(sweepId: string): control.SweepInfo {
    this.requireReady();
    const s = this.live(sweepId);
    if (s.rec.state === "running") {
      s.rec.state = "cancelled";
      s.rec.finishedMs = Date.now();
      this.scheduler.cancelSweep(sweepId);
      this.store.saveSweep(s.rec);
      this.emit("sweep", sweepId);
    }
    return this.info(sweepId);
  }

  /** Resumes a cancelled or failed sweep: failed shards are re-queued with a fresh attempt budget. */
  resume(sweepId: string): control.SweepInfo {
    this.requireReady();
    const s = this.live(sweepId);
    if (s.rec.state !== "done") {
      const c = this.table.counts(sweepId);
      if (c.total === 0) return this.info(sweepId);
      s.rec.state = "running";
      s.rec.finishedMs = 0;
      this.scheduler.resumeSweep(sweepId, s.rec.maxAttempts);
      this.onShardsChanged(sweepId);
    }
    return this.info(sweepId);
  }

  /** Every aggregated cell of the sweep as result rows, produced lazily. */
  results(sweepId: string): Iterable<control.ResultRow> {
    const s = this.live(sweepId);
    return resultRows(s.agg);
  }

  /** The tracing report's view of a sweep (heatmaps of mean IE/AIE by token group × layer). */
  traceView(sweepId: string): ModelTrace {
    const s = this.live(sweepId);
    const model = sweep.ModelRef.fromJSON(s.rec.model);
    if (s.agg instanceof KindAggregator) throw new InvalidSpecError("kind", `sweep ${sweepId} is kind ${s.spec.kind}, not trace; its aggregate is summary()`);
    return modelTrace(s.agg, {
      label: `${s.spec.model.id} (${s.spec.corruption.kind})`, modelType: model.modelType, sweepId, corruption: s.spec.corruption.kind,
      promptErrors: s.rec.promptErrors,
    });
  }

  /** What `sweepctl report` draws for a sweep: the trace view, or a kind's aggregate summary. */
  report(sweepId: string): control.ReportData {
    const s = this.live(sweepId);
    return s.agg instanceof KindAggregator
      ? { sweepId, kind: s.spec.kind, traceJson: "", aggregateJson: JSON.stringify(s.agg.summary()) }
      : { sweepId, kind: "trace", traceJson: JSON.stringify(this.traceView(sweepId)), aggregateJson: "" };
  }

  /** The aggregator's summary (IE/AIE by token group) as JSON. */
  summary(sweepId: string): unknown {
    return this.live(sweepId).agg.summary();
  }

  /** Connected agents. */
  agents(): control.AgentStatus[] {
    const byId = new Map(this.table.agentList().map((a) => [a.agentId, a]));
    return this.scheduler.agents().map((s) => {
      const a = byId.get(s.agentId);
      return { agentId: s.agentId, hostname: s.hostname, workers: s.workers, leases: a?.leases ?? 0, cachedPrompts: a?.cachedPrompts ?? 0, lastSeenMs: s.lastSeenMs, shardsDone: a?.shardsDone ?? 0 };
    });
  }

  /** Ask an agent to finish its leases and take no more. */
  drainAgent(agentId: string, reason = "drain requested"): void {
    this.scheduler.drain(agentId, reason);
  }

  /**
   * Graceful stop: refuse new work, stop granting, flush results and state, close servers and
   * NATS. Agents keep their leases; a restarted coordinator picks them up when they reconnect.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.scheduler?.stop();
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
    await this.http?.close();
    await this.nc?.close().catch(() => undefined);
  }

  /** Test hook: abrupt stop without flushing (what SIGKILL would do, minus the process). */
  async crash(): Promise<void> {
    this.stopping = true;
    this.scheduler?.stop();
    void this.consumer?.stop();
    this.store?.close();
    this.server.forceShutdown();
    await this.http?.close();
    await this.nc?.close().catch(() => undefined);
  }
}


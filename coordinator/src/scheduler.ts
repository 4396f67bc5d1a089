/**
 * The scheduler drives the lease table: it knows the agents' live streams, sends them lease
 * grants and revocations, expires leases on a timer, and persists what a restart must know: a
 * shard record when a shard leaves the plan's "pending, no failed attempt" (a failure, backoff,
 * hold, cancel, resume), and each sweep's open leases as one lease journal per sweep, written on
 * the timer — not a record write per grant, done and counted result (coordinator/README.md, "Shard state").
 * Decisions (who gets what, when a shard is retried or failed) are the lease table's; this class
 * is the wiring between it, the agents and the state store.
 */
import { EventEmitter } from "node:events";
import { sweep, type agent, type control } from "@factsweep/proto";
import type { AgentSession, AgentStreams } from "./agent-service.js";
import { LeaseTable, type Changes, type ShardEntry } from "./lease-table.js";
import type { JournalLease, ShardRecord, StateStore } from "./state-store.js";
import type { CoordinatorMetrics } from "./metrics.js";
import { AgentConnectedError } from "./errors.js";
import { ShardBodies, shardOf } from "./shard-bodies.js";

/** Options of {@link Scheduler}. */
export interface SchedulerOptions {
  store: StateStore;
  table: LeaseTable;
  metrics?: CoordinatorMetrics;
  /** How often leases are checked for expiry and pending shards granted; default 200 ms. */
  tickMs?: number;
  log?: (msg: string) => void;
}

/**
 * Events: `shards` (sweepId) after a sweep's shards changed state.
 */
export class Scheduler extends EventEmitter implements AgentStreams {
  readonly table: LeaseTable;
  private readonly store: StateStore;
  private readonly metrics: CoordinatorMetrics | undefined;
  private readonly sessions = new Map<string, AgentSession>();
  /** Each shard's protobuf (base64), sent in its lease grants. */
  private readonly bodies = new ShardBodies();
  private timer: NodeJS.Timeout | undefined;
  private readonly tickMs: number;
  private readonly log: (msg: string) => void;
  private scheduled = false;

  constructor(opts: SchedulerOptions) {
    super();
    this.store = opts.store;
    this.table = opts.table;
    this.metrics = opts.metrics;
    this.tickMs = opts.tickMs ?? 200;
    this.log = opts.log ?? (() => undefined);
  }

  /** Starts the expiry/grant timer. */
  start(): void {
    this.timer ??= setInterval(() => this.tick(), this.tickMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /**
   * The full prompt of a granted shard: shard bodies hold only the prompt's index and key (each
   * prompt is stored once per sweep, in its record); unset or unknown: the body's prompt as stored.
   */
  promptOf: ((sweepId: string, index: number) => sweep.PromptSpec | undefined) | undefined;

  /** A sweep's model, which planned bodies leave out (held once per sweep); put back into every grant and planned shard. */
  modelOf: ((sweepId: string) => sweep.ModelRef | undefined) | undefined;

  /** Drops a sweep's shards and their bodies from memory (they stay in the state store). */
  forgetSweep(sweepId: string): void {
    this.bodies.forget(sweepId);
    this.table.forgetSweep(sweepId);
  }

  /** Adds shards (new or loaded) to the table; `persist` writes new ones to the store. */
  addShards(records: (ShardEntry & { shard: string | Uint8Array })[], persist: boolean): void {
    for (const r of records) {
      if (r.shard.length > 0) this.bodies.set(r.sweepId, r.shardId, r.shard);
      this.table.restore(r); // the table keeps its own copy of the entry fields only
      if (persist) this.store.saveShard({ ...r, shard: typeof r.shard === "string" ? r.shard : Buffer.from(r.shard).toString("base64") });
    }
    this.kick();
  }

  /** Connected agent sessions. */
  agents(): AgentSession[] {
    return [...this.sessions.values()];
  }

  /** Forwards and engine seconds each agent's counted results reported, per model (its measured speed). */
  private readonly rates = new Map<string, Map<string, { forwards: number; seconds: number }>>();

  /** A counted result of `agentId` on `model`: `forwards` corrupted forwards in `engineSeconds` of one worker's engine time. */
  recordRate(agentId: string, model: string, forwards: number, engineSeconds: number): void {
    if (!(engineSeconds > 0) || !(forwards > 0)) return;
    let byModel = this.rates.get(agentId);
    if (!byModel) this.rates.set(agentId, (byModel = new Map()));
    const r = byModel.get(model) ?? { forwards: 0, seconds: 0 };
    byModel.set(model, { forwards: r.forwards + forwards, seconds: r.seconds + engineSeconds });
  }

  /** Connected agents with their leases, cache, work done and measured rates (the Agents RPC). */
  agentStatuses(): control.AgentStatus[] {
    const byId = new Map(this.table.agentList().map((a) => [a.agentId, a]));
    return this.agents().map((s) => {
      const a = byId.get(s.agentId);
      return {
        agentId: s.agentId,
        hostname: s.hostname,
        workers: s.workers,
        leases: a?.leases ?? 0,
        cachedPrompts: a?.cachedPrompts ?? 0,
        lastSeenMs: s.lastSeenMs,
        shardsDone: a?.shardsDone ?? 0,
        rates: [...(this.rates.get(s.agentId) ?? new Map<string, { forwards: number; seconds: number }>())].map(([model, r]) => ({
          model,
          forwards: r.forwards,
          engineSeconds: r.seconds,
        })),
      };
    });
  }

  // ---- agent stream events --------------------------------------------------------------

  /**
   * A (re)connected agent. While a stream of the same agent id is alive (it sent something within
   * a lease TTL), the new one is refused with AgentConnectedError (ALREADY_EXISTS): a second
   * client with the token must not take over a working agent's leases. A previous stream silent
   * for longer (a half-open connection of an agent that restarted) is closed, its leases kept.
   */
  attach(session: AgentSession, cachedPromptKeys: string[]): void {
    const prev = this.sessions.get(session.agentId);
    if (prev && prev !== session) {
      const silentMs = Date.now() - prev.lastSeenMs;
      if (silentMs < this.table.leaseTtlMs) {
        this.log(`agent ${session.agentId}: a second connection refused (session ${prev.sessionId} is alive, seen ${silentMs} ms ago)`);
        throw new AgentConnectedError(session.agentId, prev.sessionId);
      }
      prev.close(`replaced by a newer session ${session.sessionId} of agent ${session.agentId}`);
    }
    this.sessions.set(session.agentId, session);
    this.table.connectAgent(session.agentId, cachedPromptKeys, session.workers);
    this.log(`agent ${session.agentId} connected (session ${session.sessionId}, ${session.workers} workers)`);
  }

  /** The agent's stream ended: its leases are re-queued (or failed when attempts are spent). */
  detach(session: AgentSession, reason: string): void {
    if (this.sessions.get(session.agentId) !== session) return; // an older, replaced stream
    this.sessions.delete(session.agentId);
    this.apply(this.table.disconnectAgent(session.agentId, reason));
    this.log(`agent ${session.agentId} disconnected: ${reason}`);
  }

  credit(session: AgentSession, slots: number): void {
    session.lastSeenMs = Date.now();
    const refused = this.table.addCredit(session.agentId, slots);
    if (refused > 0) this.log(`agent ${session.agentId}: ${refused} credit slot(s) beyond its cap refused (${session.workers} workers)`);
    this.kick();
  }

  heartbeat(session: AgentSession, hb: agent.Heartbeat): void {
    session.lastSeenMs = Date.now();
    this.table.renew(
      session.agentId,
      hb.leases.map((l) => l.leaseId),
    );
    this.table.setCache(session.agentId, hb.cachedPromptKeys);
  }

  done(session: AgentSession, d: agent.ShardDone): void {
    session.lastSeenMs = Date.now();
    const ch = this.table.complete(session.agentId, d.leaseId, d.shardId);
    if (ch.ignored > 0) {
      this.metrics?.leaseReportsIgnored.inc({ report: "done" });
      this.log(`agent ${session.agentId}: done for lease ${d.leaseId} (shard ${d.shardId}) it does not hold; ignored`);
    }
    this.apply(ch, false);
    this.kick();
  }

  failed(session: AgentSession, f: agent.ShardFailed): void {
    session.lastSeenMs = Date.now();
    if (f.handedBack) this.log(`shard ${f.shardId} handed back by agent ${session.agentId}: ${f.error}`);
    else this.log(`shard ${f.shardId} failed on agent ${session.agentId} (${f.retryable ? "retryable" : "not retryable"}): ${f.error}`);
    const ch = f.handedBack
      ? this.table.handBack(session.agentId, f.leaseId, f.shardId, f.error)
      : this.table.fail(session.agentId, f.leaseId, f.shardId, f.error, f.retryable);
    if (ch.ignored > 0) {
      this.metrics?.leaseReportsIgnored.inc({ report: "failed" });
      this.log(`agent ${session.agentId}: failed for lease ${f.leaseId} (shard ${f.shardId}) it does not hold; ignored`);
    }
    this.apply(ch);
    this.kick();
  }

  /** Stop granting to the agent and ask it to finish its leases and leave. */
  drain(agentId: string, reason: string): void {
    this.table.drainAgent(agentId);
    this.sessions.get(agentId)?.send({ body: { $case: "drain", drain: { reason } } });
  }

  // ---- sweep-level ----------------------------------------------------------------------

  /** The results consumer aggregated a shard's result. */
  resultConsumed(shardId: string): void {
    this.apply(this.table.resultConsumed(shardId), false); // counted: the stored result says so, no record needed
  }

  /** The planned shard (as granted, attempt 0) by id, or undefined when no sweep here planned it. */
  plannedShard(shardId: string): sweep.Shard | undefined {
    const sweepId = this.table.get(shardId)?.sweepId;
    const body = sweepId === undefined ? undefined : this.bodies.get(sweepId, shardId);
    return body ? shardOf(body, sweepId!, shardId, this.modelOf?.(sweepId!)) : undefined;
  }

  /** Held shards become grantable (or fail with `error`); see LeaseTable.release. */
  release(shardIds: Iterable<string>, error?: string): void {
    this.apply(this.table.release(shardIds, error));
    this.kick();
  }

  /** Pending shards wait until `release`; see LeaseTable.hold. */
  hold(shardIds: Iterable<string>): void {
    this.apply(this.table.hold(shardIds));
  }

  cancelSweep(sweepId: string): void {
    this.apply(this.table.cancelSweep(sweepId));
  }

  resumeSweep(sweepId: string, maxAttempts: number): void {
    this.table.setSweep(sweepId, true, maxAttempts);
    this.apply(this.table.resumeSweep(sweepId));
    this.kick();
  }

  /**
   * Grants soon (coalesced), e.g. after credit arrived. Expiry waits for the timer's tick: it walks
   * every lease, and running it on each kick (every done and credit) took 4% of the coordinator's
   * CPU at 1,000 agents with nothing to expire (bench/coordinator-load).
   */
  kick(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.grant();
    });
  }

  /** Expires leases, grants pending shards, sends the grants, persists the changes. */
  tick(): void {
    this.apply(this.table.expire());
    this.grant();
  }

  /**
   * Writes the lease journal of each (sweep, agent) just granted to: the leases the agent holds
   * there, and those it reported done whose result is not counted yet. A restart restores them (a
   * fresh TTL for the agent, its result accepted). A lease that ended otherwise has a newer shard
   * record (failure, hand back, cancel) or a stored result, which win over the journal; a grant not
   * yet in a journal at a crash is re-queued: a re-run, never a double count (README "Shard state").
   */
  private writeJournals(grants: { agentId: string; sweepId: string }[]): void {
    const done = new Set<string>();
    for (const { agentId, sweepId } of grants) {
      const key = `${sweepId}\n${agentId}`;
      if (done.has(key)) continue;
      done.add(key);
      const leases: JournalLease[] = this.table
        .openLeasesOf(agentId)
        .filter((e) => e.sweepId === sweepId)
        .map((e) => [e.shardId, e.state === "done" ? "d" : "l", e.attempts, e.leaseId, e.agentId, e.leasedMs ?? 0, e.doneMs ?? 0]);
      this.store.saveLeases(sweepId, agentId, leases);
    }
  }

  /** Grants pending shards, sends the grants, persists the changes. */
  private grant(): void {
    const grants = this.table.schedule();
    for (const g of grants) {
      const session = this.sessions.get(g.agentId);
      const sweepId = this.table.get(g.shardId)?.sweepId;
      const body = sweepId === undefined ? undefined : this.bodies.get(sweepId, g.shardId);
      if (!session || !body) continue; // cannot happen: only connected agents get credit
      const shard = shardOf(body, sweepId!, g.shardId, this.modelOf?.(sweepId!));
      const prompt = shard.prompt && this.promptOf?.(shard.sweepId, shard.prompt.index);
      if (prompt) shard.prompt = prompt;
      shard.attempt = g.attempt;
      session.send({ body: { $case: "lease", lease: { leaseId: g.leaseId, shard, ttlMs: g.ttlMs } } });
    }
    const entries = this.table.entriesOf(grants);
    this.writeJournals(entries); // a grant is journalled per agent, not recorded per shard
    for (const id of new Set(entries.map((e) => e.sweepId))) this.emit("shards", id);
  }

  /** Sends revocations, counts, and persists the changes as shard records when `record` (a failure, hold, cancel, resume; not a done or a counted result). */
  private apply(ch: Changes, record = true): void {
    for (const r of ch.revoked) {
      this.sessions.get(r.agentId)?.send({ body: { $case: "cancel", cancel: { leaseId: r.leaseId, reason: r.reason } } });
    }
    if (this.metrics) {
      this.metrics.leaseExpirations.inc(ch.expirations + ch.overdue);
      this.metrics.shardsUncounted.inc(ch.uncounted);
      this.metrics.retries.inc(ch.retries);
      this.metrics.shards.inc({ status: "retried" }, ch.retries);
      this.metrics.shards.inc({ status: "failed" }, ch.newlyFailed);
      const failedCells = ch.changed.filter((e) => e.state === "failed").reduce((n, e) => n + e.cells, 0);
      if (ch.newlyFailed > 0) this.metrics.cells.inc({ status: "failed" }, failedCells);
    }
    if (record) this.persist(ch.changed);
    if (ch.overdue > 0) this.log(`${ch.overdue} lease(s) held past the maximum lease time revoked and re-queued`);
    if (ch.uncounted > 0) this.log(`${ch.uncounted} shard(s) reported done without a counted result re-queued`);
    for (const id of new Set(ch.changed.map((e) => e.sweepId))) this.emit("shards", id);
  }

  private persist(entries: ShardEntry[]): void {
    const now = Date.now();
    for (const e of entries) {
      const body = this.bodies.get(e.sweepId, e.shardId);
      this.store.saveShard({ ...e, shard: body ? Buffer.from(body).toString("base64") : "", savedMs: now });
    }
  }
}

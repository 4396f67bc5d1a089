// long-file: a sweep's lifecycle (launch, results check and aggregation, persistence, resume, reports) shares one live-state map; the result content checks are in result-check.ts.
/**
 * Every sweep's live state: launch (parse, confine paths, plan, persist), info with cells/s and ETA,
 * watch, cancel, resume, results and reports, the aggregation of consumed results and their
 * persistence, the restart from KV, and the best-effort progress events. The process around it
 * (NATS, servers, health) is `coordinator.ts`; the shards' scheduling is the scheduler's.
 */
import { EventEmitter } from "node:events";
import { control, sweep } from "@factsweep/proto";
import { EVENTS_SUBJECT_PREFIX, resultsSubject } from "@factsweep/shared";
import {
  isFromTrace,
  isTraceFolder,
  KindAggregator,
  modelTrace,
  parseSweepSpec,
  ProgressRate,
  shardUnits,
  validateSweepId,
  type ModelTrace,
  type PlanLimits,
  type SweepSpec,
  type TraceEvidence,
} from "@factsweep/planning";
import type { Covariances } from "./covariances.js";
import { HELD_MS, type LeaseTable } from "./lease-table.js";
import type { CoordinatorMetrics } from "./metrics.js";
import { confineSweepSpec } from "./model-roots.js";
import type { AddOutcome, ResultSink } from "./results-consumer.js";
import { checkResultContent, type Rejection } from "./result-check.js";
import type { Scheduler } from "./scheduler.js";
import { isKvKey, type JournalLease, type ShardRecord, type StateStore, type SweepRecord } from "./state-store.js";
import { shardOf } from "./shard-bodies.js";
import { SEGMENT_MAX_BYTES, type SnapshotManifest } from "./snapshots.js";
import {
  addStored,
  newAggregator,
  newSweepId,
  plan,
  plannedShard,
  resultRows,
  shardRecord,
  traceEvidence,
  type Aggregator,
  type PlannedShard,
} from "./sweep-runtime.js";
import {
  InvalidSpecError,
  ModelNotFoundError,
  StaleCoordinatorError,
  SweepExistsError,
  SweepNotFoundError,
  SweepStateError,
  UnavailableError,
} from "./errors.js";

interface LiveSweep {
  rec: SweepRecord;
  spec: SweepSpec;
  /** The sweep's prompts, held once: shard bodies carry only the index (see sweep-runtime.ts shardRecord). */
  prompts: sweep.PromptSpec[];
  /** Its model, held once: planned shard bodies leave it out (sweep-runtime.ts plannedShard). */
  model: sweep.ModelRef;
  agg: Aggregator;
  /** Cells/s over the last 30 s and the ETA (planning's ProgressRate: 0 when no result arrives; time not running not counted). */
  progress: ProgressRate;
  lastEventMs: number;
  lastEventState: string;
  /** Results aggregated in memory, not yet durable (first adds, to store) and every shard id seen since the last persist. */
  unpersisted: Map<string, sweep.ShardResult | undefined>;
  /** When the record was last written, and the pending write of a running sweep's progress (at most one a second). */
  lastSaveMs: number;
  lastSavedState?: string;
  saveTimer?: NodeJS.Timeout;
  snap: SnapState;
}

/**
 * A sweep's aggregate snapshot (snapshots.ts): the manifest stored last, the stored results not in
 * a segment yet (whole persist batches only, so every result of the sweep stored at or below `seq`
 * is in a segment or here) and the highest aggregates-stream sequence among both.
 */
interface SnapState {
  manifest: SnapshotManifest | undefined;
  delta: Uint8Array[];
  deltaBytes: number;
  seq: number;
  lastMs: number;
  /** Delay before retrying a failed append (0 after a success). */
  retryMs: number;
}

/**
 * The planned shards as the table takes them: a stored record where there is one (taken out of
 * `records`, so what is left there was not planned), else the planned entry unless `keep` says
 * no. A trace plan's shards are made as this walks them, so only a batch is alive at once.
 */
function* planned(
  sweepId: string,
  shards: Iterable<sweep.Shard>,
  records: Map<string, ShardRecord>,
  keep?: (sh: sweep.Shard) => boolean,
): Generator<ShardRecord | PlannedShard> {
  for (const sh of shards) {
    const r = records.get(sh.shardId);
    if (r) records.delete(sh.shardId);
    if (r) yield r;
    else if (!keep || keep(sh)) yield plannedShard(sweepId, sh);
  }
}

/** Why two prompt lists differ (the first difference), or "" if they are the same. */
function promptsDiffer(a: sweep.PromptSpec[], b: sweep.PromptSpec[]): string {
  if (a.length !== b.length) return `${a.length} prompts, ${b.length} stored`;
  for (let i = 0; i < a.length; i++) {
    if (Buffer.compare(sweep.PromptSpec.encode(a[i]!).finish(), sweep.PromptSpec.encode(b[i]!).finish()) !== 0) return `prompt ${a[i]!.index} differs`;
  }
  return "";
}

/** A running sweep's snapshot is appended to at least this often while results arrive (and at its end, and at every SEGMENT_MAX_BYTES of results). */
export const DEFAULT_SNAPSHOT_MS = 5000;

/**
 * A running sweep's record is rewritten for its progress (doneCells) at most this often: the record
 * holds every prompt, and encoding it on every grant, done and counted result took 12% of the
 * coordinator's CPU at 1,000 agents (bench/coordinator-load). State changes are written at once.
 */
const PROGRESS_SAVE_MS = 1000;

/** What {@link Sweeps} works with. */
export interface SweepsDeps {
  store: StateStore;
  table: LeaseTable;
  scheduler: Scheduler;
  metrics: CoordinatorMetrics;
  /** Normalized model roots (see model-roots.ts). */
  roots: string[];
  /** Normalized data roots (dataset and corpus paths); default the model roots. */
  dataRoots?: string[];
  /** Caps of one sweep (spec size, cells, shards, tokens, files); default DEFAULT_PLAN_LIMITS. */
  limits?: PlanLimits;
  /** Whether the coordinator takes requests that change state. */
  isReady: () => boolean;
  /** Finished (done, failed, cancelled) sweeps kept in memory, most recently used; older ones are loaded on demand. Default 8. */
  keepFinished?: number;
  /** How often a running sweep's new results are appended to its snapshot; default DEFAULT_SNAPSHOT_MS. */
  snapshotMs?: number;
  /** ROME covariances once per cluster (edit sweeps); absent: each engine worker computes its own. */
  covariances?: Covariances;
  /** Publishes a core NATS message (best effort: may throw while disconnected). */
  publish: (subject: string, data: string) => void;
  log: (msg: string) => void;
}

/** Cells per second over the last window, and the seconds left at that rate (0 when not running or not yet known). */
function rateAndEta(s: LiveSweep, doneCells: number): { rate: number; eta: number } {
  return s.progress.at(Date.now(), doneCells, s.rec.plannedCells);
}

/**
 * The sweeps of one coordinator. Events: `sweep` (sweepId) after anything about a sweep changed.
 * It is the results consumer's sink (`add`, `persist`) and the scheduler's listener (`shardsChanged`).
 */
export class Sweeps extends EventEmitter implements ResultSink {
  /** Sweeps held in memory; insertion order is the order of use (a finished one is re-inserted when used). */
  private readonly live = new Map<string, LiveSweep>();
  /** Finished sweeps not held in memory: their last SweepInfo (the record's `summary`); `open` loads one. */
  private readonly finished = new Map<string, control.SweepInfo>();
  private readonly opening = new Map<string, Promise<void>>();
  /** Snapshot appends running, per sweep (one at a time; delete waits for it). */
  private readonly snapping = new Map<string, Promise<void>>();

  constructor(private readonly d: SweepsDeps) {
    super();
    this.setMaxListeners(0);
  }

  /** Number of sweeps known (held in memory or finished and stored). */
  get size(): number {
    return this.live.size + this.finished.size;
  }

  /** Number of sweeps held in memory. */
  get resident(): number {
    return this.live.size;
  }

  /** Per-sweep values of the metrics' gauges. */
  gauges(): { sweepId: string; active: boolean; plannedCells: number; doneCells: number }[] {
    return [...this.live.values()].map((s) => ({
      sweepId: s.rec.sweepId,
      active: s.rec.state === "running",
      plannedCells: s.rec.plannedCells,
      doneCells: this.d.table.counts(s.rec.sweepId).doneCells,
    }));
  }

  private hold(rec: SweepRecord, spec: SweepSpec, agg: Aggregator, prompts: sweep.PromptSpec[], snap?: SnapState): void {
    const progress = new ProgressRate();
    if (rec.state === "running") progress.start(Date.now(), rec.doneCells); // launch, or a restart: the rate counts from now
    snap ??= { manifest: undefined, delta: [], deltaBytes: 0, seq: 0, lastMs: Date.now(), retryMs: 0 };
    this.live.set(rec.sweepId, {
      rec,
      spec,
      prompts,
      model: sweep.ModelRef.fromJSON(rec.model),
      agg,
      progress,
      unpersisted: new Map(),
      lastEventMs: 0,
      lastEventState: "",
      lastSaveMs: 0,
      snap,
    });
    this.d.table.setSweep(rec.sweepId, rec.state === "running", rec.maxAttempts, { priority: spec.priority, weight: spec.weight });
  }

  /** The model of a sweep held here (granted and planned shards carry it; stored bodies do not). */
  modelOf(sweepId: string): sweep.ModelRef | undefined {
    return this.live.get(sweepId)?.model;
  }

  /** The full prompt of a sweep held here (granted shards carry it; stored shards only its index). */
  promptOf(sweepId: string, index: number): sweep.PromptSpec | undefined {
    return this.live.get(sweepId)?.prompts[index];
  }

  /**
   * Holds a stored sweep: parses its spec and rebuilds its aggregate from its snapshot and the
   * results stored after the sequence it covers (all stored results if it has none or it is unusable).
   */
  private async revive(rec: SweepRecord): Promise<boolean> {
    let spec: SweepSpec;
    try {
      spec = parseSweepSpec(rec.spec, { baseDir: rec.specDir, limits: this.d.limits });
    } catch (err) {
      this.d.log(`sweep ${rec.sweepId}: stored spec no longer parses (${(err as Error).message}); skipped`);
      return false;
    }
    let prompts: sweep.PromptSpec[];
    try {
      // Decoded once; a record whose prompts are chunked does not keep their JSON beside them.
      prompts = (await this.d.store.loadPrompts(rec)).map((p) => sweep.PromptSpec.fromJSON(p));
    } catch (err) {
      this.d.log(`${(err as Error).message}; skipped`);
      return false;
    }
    // The aggregate is the fold of the stored results (idempotent by shard id): snapshot, then its tail.
    let agg = newAggregator(spec, rec.sweepId, prompts, rec.traceLayers);
    const snap: SnapState = { manifest: undefined, delta: [], deltaBytes: 0, seq: 0, lastMs: Date.now(), retryMs: 0 };
    let tail: { value: Uint8Array; seq: number }[] | undefined;
    const t0 = Date.now();
    try {
      const stored = await this.d.store.loadSnapshot(rec.sweepId);
      if (stored) {
        for (const bytes of stored.results) addStored(agg, bytes);
        snap.manifest = stored.manifest;
        snap.seq = stored.manifest.seq;
        tail = await this.d.store.loadResultsAfter(rec.sweepId, stored.manifest.seq);
        this.d.log(
          `sweep ${rec.sweepId}: ${stored.results.length} result(s) from its snapshot (to sequence ${stored.manifest.seq}), ${tail.length} stored after it (read and folded in ${Date.now() - t0} ms)`,
        );
      }
    } catch (err) {
      // Unusable snapshot: every stored result is still in the aggregates bucket; a new snapshot replaces it.
      this.d.log(`sweep ${rec.sweepId}: ${(err as Error).message}; reading every stored result instead`);
      agg = newAggregator(spec, rec.sweepId, prompts, rec.traceLayers);
      snap.manifest = undefined;
      snap.seq = 0;
      tail = undefined;
    }
    // Without a snapshot everything stored is the tail: the first append makes one of it.
    for (const e of tail ?? (await this.d.store.loadResults(rec.sweepId))) {
      if (addStored(agg, e.value)) {
        snap.delta.push(e.value);
        snap.deltaBytes += e.value.length + 4;
      }
      snap.seq = Math.max(snap.seq, e.seq);
    }
    this.hold(rec, spec, agg, prompts, snap);
    if (snap.delta.length > 0) void this.snapshot(this.live.get(rec.sweepId)!);
    return true;
  }

  /**
   * Loads the running sweeps (and finished ones stored before summaries existed) with their shards
   * and results; other finished sweeps are listed from their summary and loaded by `open`.
   */
  async load(): Promise<void> {
    const held = (rec: SweepRecord) => rec.state === "running" || rec.summary === undefined;
    const t0 = Date.now();
    const { sweeps, shards } = await this.d.store.loadAll(held);
    this.d.log(`restart: ${sweeps.length} sweep record(s), ${shards.length} shard record(s) read in ${Date.now() - t0} ms`);
    for (const rec of sweeps) {
      if (held(rec)) await this.revive(rec);
      else this.finished.set(rec.sweepId, control.SweepInfo.fromJSON(rec.summary));
    }
    const bySweep = new Map<string, ShardRecord[]>();
    for (const r of shards) {
      let l = bySweep.get(r.sweepId);
      if (!l) bySweep.set(r.sweepId, (l = []));
      l.push(r);
    }
    for (const s of this.live.values()) await this.restoreShards(s, bySweep.get(s.rec.sweepId) ?? []);
    for (const id of this.live.keys()) this.shardsChanged(id);
    this.retireFinished();
  }

  /**
   * A held sweep's shards to the scheduler (restart, `open`): the plan (deterministic from the
   * sweep record's spec; the prompts must come out as stored), overlaid with the sweep's shard
   * records (failed attempts, backoff, failed; or one per shard, as older coordinators and edit
   * sweeps with pruned covariance shards wrote them), then with its lease journal where that is
   * newer, and every shard whose result is in the aggregate counted (the stored result is the
   * authority: no record says so).
   */
  private async restoreShards(s: LiveSweep, records: ShardRecord[]): Promise<void> {
    const id = s.rec.sweepId;
    const t0 = Date.now();
    // Every agent's journal: a shard granted again (to another agent) is in both; the newest grant holds.
    const journal = new Map<string, JournalLease>();
    for (const l of await this.d.store.loadLeases(id)) if ((journal.get(l[0])?.[5] ?? -1) < l[5]) journal.set(l[0], l);
    let source: Iterable<ShardRecord | PlannedShard> = records;
    let addCounted = 0;
    let addCells = 0;
    const unplanned = new Map(records.map((r) => [r.shardId, r]));
    if (records.length < s.rec.shardCount) {
      try {
        const p = plan(s.spec, id, s.rec.traceLayers ? { traceLayers: s.rec.traceLayers } : {});
        const changed = promptsDiffer(p.prompts, s.prompts);
        if (changed) throw new Error(`re-planning gives other prompts than the sweep record's (${changed}): its dataset or tokenizer changed since launch`);
        // A shard counted already needs no entry, body or scheduling: only its place in the counts
        // (not an edit sweep's: its covariance tracking reads every shard).
        const uncounted = (sh: sweep.Shard): boolean => {
          if (!s.agg.has(sh.shardId)) return true;
          addCounted++;
          addCells += shardUnits(sh);
          return false;
        };
        source = planned(id, p.shards, unplanned, s.spec.kind === "edit" ? undefined : uncounted);
      } catch (err) {
        // Without the plan only the recorded shards are known: the sweep cannot finish as planned.
        this.d.log(
          `sweep ${id}: cannot re-plan its ${s.rec.shardCount} shards (${(err as Error).message}); its stored results are kept and it is marked failed: restore its spec's files and resume it`,
        );
        if (s.rec.state === "running") {
          s.rec.state = "failed";
          s.rec.finishedMs = Date.now();
          this.d.table.setSweep(id, false, s.rec.maxAttempts);
        }
        unplanned.clear();
      }
    } else unplanned.clear();
    let counted = 0;
    let n = 0;
    let batch: (ShardRecord | PlannedShard)[] = [];
    const edits: (ShardRecord | PlannedShard)[] = [];
    const flush = () => {
      this.d.scheduler.addShards(batch, false);
      if (s.spec.kind === "edit") edits.push(...batch);
      n += batch.length;
      batch = [];
    };
    // In batches, as the plan is walked: the planned objects go as their shards join the table.
    for (const r of source) {
      const l = journal.get(r.shardId);
      // The journal's lease is newer than the record (a grant after the failure the record holds).
      if (l && Math.max(l[5], l[6]) >= ("savedMs" in r ? (r.savedMs ?? 0) : 0) && r.state !== "failed") {
        r.state = l[1] === "d" ? "done" : "leased";
        r.attempts = l[2];
        r.leaseId = l[3];
        r.agentId = l[4];
        r.leasedMs = l[5];
        if (l[6] > 0) r.doneMs = l[6];
        r.resultConsumed = false;
      }
      if (s.agg.has(r.shardId) && !(r.state === "done" && r.resultConsumed)) {
        r.state = "done";
        r.resultConsumed = true;
        r.lastError = "";
        counted++;
      }
      batch.push(r);
      if (batch.length >= 8192) flush();
    }
    flush();
    this.d.table.addCounted(id, addCounted, addCells);
    counted += addCounted;
    n += addCounted;
    for (const r of unplanned.keys()) this.d.log(`shard ${r}: stored but not planned; ignored`);
    this.trackCovariances(edits);
    this.d.log(
      `sweep ${id}: ${n} shard(s) restored in ${Date.now() - t0} ms (${records.length} record(s), ${journal.size} open lease(s), ${counted} counted from stored results)`,
    );
  }

  /**
   * Holds a finished sweep that was let go from memory again (its record, shards and results from
   * the KV), so results, report and resume can serve it; a no-op for a held or unknown sweep.
   */
  async open(sweepId: string): Promise<void> {
    const s = this.live.get(sweepId);
    if (s) {
      this.live.delete(sweepId); // most recently used
      this.live.set(sweepId, s);
      return;
    }
    if (!this.finished.has(sweepId)) return;
    let p = this.opening.get(sweepId);
    if (!p) {
      p = (async () => {
        await this.snapping.get(sweepId); // its last append, if still running, is in the snapshot read next
        const rec = await this.d.store.loadSweep(sweepId);
        if (!rec || !this.finished.has(sweepId)) return; // deleted meanwhile
        if (!(await this.revive(rec))) return;
        this.finished.delete(sweepId);
        await this.restoreShards(this.live.get(sweepId)!, await this.d.store.loadShards(sweepId));
        this.d.log(`sweep ${sweepId} loaded from the store on demand`);
        this.retireFinished(sweepId);
      })().finally(() => this.opening.delete(sweepId));
      this.opening.set(sweepId, p);
    }
    await p;
  }

  /**
   * Lets the least recently used finished sweeps beyond `keepFinished` go from memory: their
   * SweepInfo is written into their record (`summary`) and kept; shards, prompts and aggregate go.
   */
  private retireFinished(keep?: string): void {
    const cap = this.d.keepFinished ?? 8;
    const done = [...this.live.values()].filter((s) => s.rec.state !== "running");
    for (const s of done.slice(0, Math.max(0, done.length - cap))) {
      const id = s.rec.sweepId;
      if (id === keep || s.unpersisted.size > 0) continue;
      const info = this.info(id);
      s.rec.summary = control.SweepInfo.toJSON(info);
      this.d.store.saveSweep(s.rec);
      this.d.scheduler.forgetSweep(id);
      this.live.delete(id);
      this.finished.set(id, info);
    }
  }

  /**
   * Deletes a finished, failed or cancelled sweep: its record, shard records and aggregated results
   * leave the KV and memory. A running sweep is refused (cancel it first).
   */
  async delete(sweepId: string): Promise<control.DeleteReply> {
    this.requireReady();
    const s = this.live.get(sweepId);
    const state = s?.rec.state ?? this.finished.get(sweepId)?.state;
    if (state === undefined && !(await this.d.store.sweepExists(sweepId))) throw new SweepNotFoundError(sweepId);
    if (state === "running") throw new SweepStateError(sweepId, `sweep ${sweepId} is running; cancel it first (sweepctl cancel ${sweepId}), then delete it`);
    if (s) this.d.scheduler.forgetSweep(sweepId);
    this.live.delete(sweepId);
    this.finished.delete(sweepId);
    await this.snapping.get(sweepId); // no segment written after the purge
    const removed = await this.d.store.deleteSweep(sweepId);
    this.d.log(`sweep ${sweepId} deleted: ${removed.shards} shard record(s), ${removed.results} stored result(s)`);
    return { sweepId, shardsRemoved: removed.shards, resultsRemoved: removed.results };
  }

  // ---- results --------------------------------------------------------------------------

  /**
   * Checks a consumed result and aggregates it (idempotent by shard id). Ids are checked before
   * anything is looked up or written under them; a result is taken only for a planned shard of a
   * sweep held here, from the agent holding its current lease (lease_id), with its planned content (see
   * result-check.ts). A result of a shard already aggregated is a duplicate, whoever sent it.
   */
  add(r: sweep.ShardResult, subject?: string): AddOutcome {
    // A late copy for a finished sweep let go from memory: it ended with every shard counted once.
    if (this.finished.has(r.sweepId) && (subject === undefined || subject === resultsSubject(r.sweepId))) return "duplicate";
    const refused = this.refusal(r, subject);
    if (refused) return refused;
    const s = this.live.get(r.sweepId)!;
    let added: boolean;
    try {
      added = s.agg.add(r);
    } catch (err) {
      // A result that does not fit its sweep (unknown prompt, token outside it): refused, never aggregated.
      return { reason: "invalid_result", detail: `shard ${r.shardId}: ${(err as Error).message}` };
    }
    if (added) {
      s.unpersisted.set(r.shardId, r);
      this.d.table.resultFrom(r.shardId, r.leaseId); // checked above: the shard's current lease
    } else if (!s.unpersisted.has(r.shardId)) s.unpersisted.set(r.shardId, undefined);
    if (added && s.spec.kind === "edit" && this.d.covariances) {
      const planned = this.d.scheduler.plannedShard(r.shardId);
      if (planned) this.d.covariances.partDone(planned); // a covariance shard's part is stored: C may be complete
    }
    if (added) {
      // Experiment kinds publish no cells; count the shard's planned units as its progress does.
      const cells = r.cells.length || (this.d.table.get(r.shardId)?.cells ?? 0);
      this.d.metrics.cells.inc({ status: "done" }, cells);
      this.d.metrics.shards.inc({ status: "done" });
      // The agent's measured speed on this model (sweepctl plan --agents estimates from it).
      if (r.cells.length > 0) {
        const perCell = s.spec.corruption.kind === "noise" ? s.spec.corruption.samples : 1;
        this.d.scheduler.recordRate(r.agentId, s.spec.model.id, r.cells.length * perCell, r.engineSeconds);
      }
    }
    return added ? "added" : "duplicate";
  }

  /** Why a result may not be aggregated (duplicates pass: they are recognised and ignored), or undefined. */
  private refusal(r: sweep.ShardResult, subject: string | undefined): Rejection | undefined {
    let validId = isKvKey(r.sweepId);
    try {
      validateSweepId(r.sweepId);
    } catch {
      validId = false;
    }
    if (!validId || !isKvKey(r.shardId) || !r.shardId.startsWith(`${r.sweepId}.`)) {
      return { reason: "invalid_id", detail: `sweep id ${JSON.stringify(r.sweepId.slice(0, 100))}, shard id ${JSON.stringify(r.shardId.slice(0, 100))}` };
    }
    if (subject !== undefined && subject !== resultsSubject(r.sweepId)) {
      return { reason: "subject_mismatch", detail: `result of sweep ${r.sweepId} published on ${subject}` };
    }
    const s = this.live.get(r.sweepId);
    if (!s) return { reason: "unknown_sweep", detail: `result of shard ${r.shardId} for unknown sweep ${r.sweepId}` };
    // A duplicate (ignored by the aggregator): only a planned shard's result was ever aggregated (a
    // shard a restart found counted has no entry or body in memory).
    if (s.agg.has(r.shardId)) return undefined;
    const entry = this.d.table.get(r.shardId);
    const planned = entry?.sweepId === r.sweepId ? this.d.scheduler.plannedShard(r.shardId) : undefined;
    if (!planned) return { reason: "unplanned_shard", detail: `sweep ${r.sweepId} planned no shard ${r.shardId}` };
    if (!this.d.table.holdsLease(r.shardId, r.agentId, r.leaseId)) {
      const why = r.leaseId
        ? `lease ${JSON.stringify(r.leaseId.slice(0, 100))} is not its current lease`
        : "lease_id is empty (an agent older than this coordinator?)";
      return {
        reason: "not_lease_holder",
        detail: `shard ${r.shardId}: agent ${JSON.stringify(r.agentId.slice(0, 100))}, ${why} (current lease ${entry!.leaseId || "none"} of ${entry!.agentId || "no agent"}, ${entry!.state})`,
      };
    }
    return checkResultContent(planned, r);
  }

  /**
   * Stores the results, then marks the shards consumed, before the consumer acks: an acked result
   * is stored, and a restart counts a shard from its stored result alone.
   */
  async persist(ids: Set<string>): Promise<void> {
    for (const id of ids) {
      const s = this.live.get(id);
      if (!s) continue;
      const batch = [...s.unpersisted];
      const encoded: Uint8Array[] = [];
      for (const [, r] of batch) if (r) encoded.push(sweep.ShardResult.encode(r).finish());
      // One batch, a few KV requests (StateStore.saveResults); once stored it joins the snapshot's delta (see SnapState).
      if (encoded.length > 0) {
        const seq = await this.d.store.saveResults(id, encoded);
        for (const bytes of encoded) {
          s.snap.delta.push(bytes);
          s.snap.deltaBytes += bytes.length + 4;
        }
        s.snap.seq = Math.max(s.snap.seq, seq);
      }
      // Stored: counted for good (a restart counts it from the stored result; no shard record is written).
      for (const [shardId, r] of batch) {
        if (s.unpersisted.get(shardId) === r) s.unpersisted.delete(shardId);
        this.d.scheduler.resultConsumed(shardId);
      }
      const snapDue =
        s.snap.deltaBytes >= SEGMENT_MAX_BYTES || Date.now() - s.snap.lastMs >= (this.d.snapshotMs ?? DEFAULT_SNAPSHOT_MS) || s.rec.state !== "running";
      if (s.snap.delta.length > 0 && snapDue) void this.snapshot(s);
    }
  }

  /**
   * Appends a sweep's stored results not yet in its snapshot (one append at a time per sweep; a
   * failed one keeps them for the next). Never rejects: the results stay in the aggregates bucket,
   * the tail a restart reads, so a missed snapshot costs restart time, not results.
   */
  private snapshot(s: LiveSweep): Promise<void> {
    const sweepId = s.rec.sweepId;
    const running = this.snapping.get(sweepId);
    if (running) return running;
    const snap = s.snap;
    const p = (async () => {
      while (snap.delta.length > 0) {
        const delta = snap.delta;
        const seq = snap.seq; // taken with the delta: it covers exactly what the segments will hold
        snap.delta = [];
        snap.deltaBytes = 0;
        try {
          const t0 = Date.now();
          snap.manifest = await this.d.store.appendSnapshot(sweepId, snap.manifest, delta, seq);
          snap.lastMs = Date.now();
          snap.retryMs = 0;
          if (delta.length >= 10_000)
            this.d.log(`sweep ${sweepId}: ${delta.length} result(s) appended to its snapshot in ${snap.lastMs - t0} ms (to sequence ${seq})`);
        } catch (err) {
          snap.delta = delta.concat(snap.delta);
          snap.deltaBytes = snap.delta.reduce((n, b) => n + b.length + 4, 0);
          if (err instanceof StaleCoordinatorError) return; // fenced off: the newer coordinator snapshots
          // Retried on a timer too: a sweep with no further results (finished, or all read at a restart) has no next persist.
          snap.retryMs = Math.min(30_000, Math.max(1000, snap.retryMs * 2));
          this.d.log(`sweep ${sweepId}: snapshot append of ${delta.length} result(s) failed (${(err as Error).message}); retrying in ${snap.retryMs} ms`);
          setTimeout(() => {
            if (this.live.get(sweepId) === s && s.snap.delta.length > 0) void this.snapshot(s);
          }, snap.retryMs).unref();
          return;
        }
        if (snap.deltaBytes < SEGMENT_MAX_BYTES) return;
      }
    })().finally(() => this.snapping.delete(sweepId));
    this.snapping.set(sweepId, p);
    return p;
  }

  /** A sweep's shards changed state: progress sample, end of the sweep, record written, events. */
  shardsChanged(sweepId: string): void {
    const s = this.live.get(sweepId);
    if (!s) return;
    const c = this.d.table.counts(sweepId);
    const now = Date.now();
    s.progress.sample(now, c.doneCells);
    const rec = s.rec;
    rec.doneCells = c.doneCells;
    if (c.failed > 0 && s.spec.kind === "edit" && this.d.covariances) {
      for (const id of c.failedShards) {
        const planned = this.d.scheduler.plannedShard(id);
        if (planned) this.d.covariances.partFailed(planned, this.d.table.get(id)?.lastError ?? "failed");
      }
    }
    if (rec.state === "running" && c.pending === 0 && c.leased === 0) {
      rec.state = c.failed > 0 || c.total === 0 ? "failed" : "done";
      rec.finishedMs = now;
      s.progress.stop();
      this.d.table.setSweep(sweepId, false, rec.maxAttempts);
      this.d.log(`sweep ${sweepId} ${rec.state}: ${c.done}/${c.total} shards done, ${c.failed} failed`);
    }
    if (rec.state === "running") this.savedSoon(s);
    else this.saved(s);
    this.publishProgress(s);
    if (rec.state !== "running") this.retireFinished(sweepId);
  }

  /** Writes the sweep's record and tells watchers. */
  private saved(s: LiveSweep): void {
    if (s.saveTimer) clearTimeout(s.saveTimer);
    s.saveTimer = undefined;
    s.lastSaveMs = Date.now();
    s.lastSavedState = s.rec.state;
    this.d.store.saveSweep(s.rec);
    this.emit("sweep", s.rec.sweepId);
  }

  /** Progress of a running sweep: watchers told now, its record written at most every PROGRESS_SAVE_MS. */
  private savedSoon(s: LiveSweep): void {
    const wait = s.lastSaveMs + PROGRESS_SAVE_MS - Date.now();
    if (wait <= 0 || s.lastSavedState !== s.rec.state) return this.saved(s);
    this.emit("sweep", s.rec.sweepId);
    s.saveTimer ??= setTimeout(() => {
      s.saveTimer = undefined;
      if (this.live.get(s.rec.sweepId) === s) this.saved(s);
    }, wait);
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
      this.d.publish(`${EVENTS_SUBJECT_PREFIX}.${s.rec.sweepId}`, JSON.stringify(control.SweepInfo.toJSON(this.info(s.rec.sweepId))));
    } catch {
      // best effort: a closed or reconnecting connection drops the event
    }
  }

  // ---- the sweep API (SweepService) -----------------------------------------------------

  private requireReady(): void {
    if (!this.d.isReady()) throw new UnavailableError("coordinator is not ready (starting, shutting down, or NATS unreachable); retry shortly");
  }

  private sweep(sweepId: string): LiveSweep {
    const s = this.live.get(sweepId);
    if (s) return s;
    if (this.finished.has(sweepId)) {
      throw new SweepStateError(
        sweepId,
        `sweep ${sweepId} is finished and not held in memory; open(${JSON.stringify(sweepId)}) loads it (the SweepService does so)`,
      );
    }
    throw new SweepNotFoundError(sweepId);
  }

  /** Parses, checks and plans a spec, persists the sweep and its shards, and starts it. */
  async launch(req: control.LaunchRequest): Promise<control.SweepInfo> {
    this.requireReady();
    const specDir = req.specDir || process.cwd();
    const spec = parseSweepSpec(req.spec, { baseDir: specDir, limits: this.d.limits });
    const sweepId = req.sweepId || newSweepId(spec.name);
    try {
      validateSweepId(sweepId);
    } catch (err) {
      throw new InvalidSpecError("sweep_id", (err as Error).message, { cause: err });
    }
    if (this.live.has(sweepId) || this.finished.has(sweepId) || (await this.d.store.sweepExists(sweepId))) {
      throw new SweepExistsError(sweepId);
    }
    confineSweepSpec(spec, this.d.roots, this.d.dataRoots ?? this.d.roots); // every path, real paths, regular files only
    const traceEvidence = await this.traceOf(spec);
    let p;
    try {
      p = plan(spec, sweepId, traceEvidence ? { traceEvidence } : {});
    } catch (err) {
      const e = err as Error;
      if (e.name === "ModelConfigError") throw new ModelNotFoundError(spec.model.path, e.message, { cause: err });
      if (e.name === "DatasetError" || e.name === "TokenizerError") throw new InvalidSpecError("dataset", e.message, { cause: err });
      throw err;
    }
    const now = Date.now();
    const rec: SweepRecord = {
      sweepId,
      name: spec.name,
      kind: spec.kind,
      spec: req.spec,
      specDir,
      model: sweep.ModelRef.toJSON(p.model),
      prompts: p.prompts.map((x) => sweep.PromptSpec.toJSON(x)),
      promptErrors: p.promptErrors,
      state: p.shards.length === 0 ? "failed" : "running",
      plannedCells: p.plannedCells,
      shardCount: p.shards.length,
      maxAttempts: spec.max_attempts,
      doneCells: 0,
      retries: 0,
      createdMs: now,
      finishedMs: p.shards.length === 0 ? now : 0,
      ...(p.traceLayers ? { traceLayers: p.traceLayers } : {}),
    };
    let held = new Set<string>();
    if (spec.kind === "edit" && this.d.covariances) {
      // C already stored: no covariance shards; edits whose C is missing wait for it.
      ({ shards: p.shards, held } = await this.d.covariances.prepare([...p.shards])); // an edit's plan is an array: a copy
      rec.plannedCells = rec.shardCount = p.shards.length;
    }
    const agg = newAggregator(spec, sweepId, p.prompts, p.traceLayers); // before anything is persisted
    // Durable once the sweep record is: its shards are the plan, which a restart makes again from
    // the spec (no record per shard: a 1M-shard launch wrote 1M records, 74-178 s). Only an edit
    // sweep whose covariance shards were pruned (or held) differs from its plan: its shards are recorded.
    const pruned = spec.kind === "edit" && this.d.covariances !== undefined;
    const shardCount = p.shards.length;
    await this.d.store.createSweep(rec);
    if (pruned) {
      const records = Array.from(p.shards, (sh) => ({ ...shardRecord(sweepId, sh), ...(held.has(sh.shardId) ? { notBeforeMs: HELD_MS } : {}) }));
      let written = true;
      try {
        await this.d.store.createShards(records);
      } catch (err) {
        written = false; // NATS away: the background writer retries until it is back
        this.d.log(`sweep ${sweepId}: writing its ${records.length} shard records failed (${(err as Error).message}); retrying in the background`);
      }
      this.hold(rec, spec, agg, p.prompts);
      this.d.scheduler.addShards(records, !written);
      if (held.size > 0) this.trackCovariances(records);
      if (!written) await this.d.store.flush();
    } else {
      this.hold(rec, spec, agg, p.prompts);
      let batch: (ShardRecord | PlannedShard)[] = [];
      // Small batches: a batch's planned entries and bodies die young. At 8,192 they outlived the
      // young generation, and with bodies under 64 bytes (kept in the heap) a 1M launch peaked at
      // 1,150 MB RSS instead of ~750 (bench/coordinator-load/run.mjs --runs 10x1000000).
      for (const r of planned(sweepId, p.shards, new Map())) {
        batch.push(r);
        if (batch.length >= 1024) {
          this.d.scheduler.addShards(batch, false);
          batch = [];
        }
      }
      this.d.scheduler.addShards(batch, false);
    }
    this.d.log(`sweep ${sweepId} launched: ${p.prompts.length} prompts (${p.promptErrors.length} with errors), ${shardCount} shards, ${p.plannedCells} cells`);
    this.emit("sweep", sweepId);
    return this.info(sweepId);
  }

  /** The trace sweep an edit's `layers: { from_trace: <id> }` names, as planning reads it (a run folder path is read by planning). */
  private async traceOf(spec: SweepSpec): Promise<TraceEvidence | undefined> {
    const l = spec.layers;
    if (spec.kind !== "edit" || !isFromTrace(l) || isTraceFolder(l.from_trace)) return undefined;
    const id = l.from_trace;
    await this.open(id);
    const held = this.live.get(id);
    if (!held)
      throw new InvalidSpecError(
        "layers.from_trace",
        `layers.from_trace: no sweep "${id}" on this coordinator; give the id of a finished trace sweep (sweepctl status lists them) or the path of its run folder (with a "/")`,
      );
    return traceEvidence(held);
  }

  /** Held edit shards wait for their ROME covariance (merged as soon as its parts are stored). */
  private trackCovariances(records: (ShardRecord | PlannedShard)[]): void {
    if (!this.d.covariances || records.length === 0) return;
    this.d.covariances.track(
      records.map((r) => ({
        entry: r,
        shard: shardOf(typeof r.shard === "string" ? Buffer.from(r.shard, "base64") : r.shard, r.sweepId, r.shardId, this.live.get(r.sweepId)?.model),
      })),
    );
  }

  /** The sweep's current SweepInfo. */
  info(sweepId: string): control.SweepInfo {
    const summary = this.finished.get(sweepId);
    if (summary) return summary;
    const s = this.sweep(sweepId);
    const { table } = this.d;
    const c = table.counts(sweepId);
    const retries = c.retries; // kept by the lease table (a scan of the sweep here was 9% of the coordinator's CPU at 1M shards, one Get a second)
    const { rate, eta } = rateAndEta(s, c.doneCells);
    return {
      sweepId,
      state: s.rec.state,
      name: s.rec.name,
      kind: s.rec.kind,
      counts: {
        plannedCells: s.rec.plannedCells,
        doneCells: c.doneCells,
        shardsTotal: c.total,
        shardsDone: c.done,
        shardsLeased: c.leased,
        shardsPending: c.pending,
        shardsFailed: c.failed,
        retries,
      },
      cellsPerSecond: rate,
      etaSeconds: eta,
      createdMs: s.rec.createdMs,
      finishedMs: s.rec.finishedMs,
      promptErrors: s.rec.promptErrors.map((e) => ({ promptIndex: e.index, message: e.message })),
      failedShards: c.failedShards.map((id) => `${id}: ${table.get(id)?.lastError ?? ""}`),
      ...table.shareOf(sweepId),
      leaseShare: table.leaseShare(sweepId),
    };
  }

  /** Every sweep's SweepInfo, oldest first. */
  list(): control.SweepInfo[] {
    return [...[...this.live.keys()].map((id) => this.info(id)), ...this.finished.values()].sort((a, b) => a.createdMs - b.createdMs);
  }

  /** Calls `cb` with the SweepInfo now and on every change; returns an unsubscribe function. */
  watch(sweepId: string, cb: (info: control.SweepInfo) => void): () => void {
    if (!this.finished.has(sweepId)) this.sweep(sweepId);
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
    if (this.finished.has(sweepId)) return this.info(sweepId);
    const s = this.sweep(sweepId);
    if (s.rec.state === "running") {
      s.rec.state = "cancelled";
      s.rec.finishedMs = Date.now();
      s.progress.stop();
      this.d.scheduler.cancelSweep(sweepId);
      this.saved(s);
      this.retireFinished(sweepId);
    }
    return this.info(sweepId);
  }

  /**
   * Resumes a cancelled or failed sweep, or a running one stuck on shards reported done whose
   * results were never counted: those and the failed shards are re-queued with a fresh budget.
   */
  resume(sweepId: string): control.SweepInfo {
    this.requireReady();
    const s = this.sweep(sweepId);
    if (s.rec.state !== "done") {
      const c = this.d.table.counts(sweepId);
      if (c.total === 0) return this.info(sweepId);
      if (s.rec.state !== "running") s.progress.start(Date.now(), c.doneCells); // the time it was stopped is not counted
      s.rec.state = "running";
      s.rec.finishedMs = 0;
      this.d.scheduler.resumeSweep(sweepId, s.rec.maxAttempts);
      if (s.spec.kind === "edit" && this.d.covariances) {
        // Edits wait for their C again (a failed covariance shard failed them): held before any grant.
        const shards = this.d.table.shardsOf(sweepId).flatMap((entry) => {
          const shard = this.d.scheduler.plannedShard(entry.shardId);
          return shard ? [{ entry, shard }] : [];
        });
        this.d.covariances.resumed(shards, (ids) => this.d.scheduler.hold(ids));
      }
      this.shardsChanged(sweepId);
    }
    return this.info(sweepId);
  }

  /** Every aggregated cell of the sweep as result rows, produced lazily (a sweep may have millions). */
  results(sweepId: string): Iterable<control.ResultRow> {
    return resultRows(this.sweep(sweepId).agg);
  }

  /** The tracing report's view of a sweep (heatmaps of mean IE/AIE by token group × layer). */
  traceView(sweepId: string): ModelTrace {
    const s = this.sweep(sweepId);
    const model = sweep.ModelRef.fromJSON(s.rec.model);
    if (s.agg instanceof KindAggregator) throw new InvalidSpecError("kind", `sweep ${sweepId} is kind ${s.spec.kind}, not trace; its aggregate is summary()`);
    return modelTrace(s.agg, {
      label: `${s.spec.model.id} (${s.spec.corruption.kind})`,
      modelType: model.modelType,
      sweepId,
      corruption: s.spec.corruption.kind,
      promptErrors: s.rec.promptErrors,
    });
  }

  /** What `sweepctl report` draws for a sweep: the trace view, or a kind's aggregate summary. */
  report(sweepId: string): control.ReportData {
    const s = this.sweep(sweepId);
    return s.agg instanceof KindAggregator
      ? { sweepId, kind: s.spec.kind, traceJson: "", aggregateJson: JSON.stringify(s.agg.summary()) }
      : { sweepId, kind: "trace", traceJson: JSON.stringify(this.traceView(sweepId)), aggregateJson: "" };
  }

  /** The aggregator's summary (IE/AIE by token group) as JSON. */
  summary(sweepId: string): unknown {
    return this.sweep(sweepId).agg.summary();
  }
}

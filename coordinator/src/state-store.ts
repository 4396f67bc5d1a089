// long-file: the KV records, their coalescing CAS writer and the fencing by epoch belong together; loading and deleting a sweep use the same revision map.
/**
 * Durable sweep and shard state in JetStream KV, so a restarted coordinator carries on exactly.
 *
 * Every record is written with a revision check (CAS): the store remembers the revision it last
 * wrote or read per key and writes with `update(key, value, revision)`. Writes are coalesced per
 * key (only the newest value is written) and retried while NATS is unreachable, so the caller's
 * in-memory state stays the authority and the KV converges to it. Each coordinator claims an
 * epoch at start; a conflicting write from a newer epoch means another coordinator took over
 * (fencing: this one stops writing), one from our own or an older epoch (a write whose reply was
 * lost in a NATS restart, or a dead predecessor) is adopted.
 */
import type { KV } from "@nats-io/kv";
import { DeliverPolicy, JetStreamApiError, JetStreamApiCodes, jetstream, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { AGGREGATES_BUCKET, SHARDS_BUCKET, SNAPSHOTS_BUCKET, SWEEPS_BUCKET } from "@factsweep/shared";
import type { TraceLayers } from "@factsweep/planning";
import { StaleCoordinatorError, SweepExistsError } from "./errors.js";
import type { ShardEntry } from "./lease-table.js";
import { DEFAULT_NATS_LIMITS, ensureBucket, type NatsLimits } from "./nats-limits.js";
import {
  batchKey,
  manifestKey,
  packSegments,
  parseManifest,
  segmentKey,
  SnapshotError,
  unpackBatches,
  unpackSegment,
  type SnapshotManifest,
} from "./snapshots.js";

/** Terminal and non-terminal states of a sweep. */
export type SweepState = "running" | "done" | "failed" | "cancelled";

/** The persisted sweep: its spec, prompts, state, counts and timestamps. */
export interface SweepRecord {
  sweepId: string;
  name: string;
  kind: string;
  /** Spec text as launched, and the folder its relative paths resolved against. */
  spec: string;
  specDir: string;
  /** sweep.ModelRef as proto JSON. */
  model: unknown;
  /** sweep.PromptSpec[] as proto JSON. In memory always; in the KV only in records written before
   * `promptChunks` existed (a record holding them all capped a sweep at a few thousand prompts). */
  prompts: unknown[];
  /** How many chunks the prompts are stored in beside the record (`promptsKey`), and how many prompts. */
  promptChunks?: number;
  promptCount?: number;
  promptErrors: { index: number; message: string }[];
  state: SweepState;
  plannedCells: number;
  shardCount: number;
  maxAttempts: number;
  /** Last counts written (the live ones come from the shard records). */
  doneCells: number;
  retries: number;
  createdMs: number;
  finishedMs: number;
  /**
   * control.SweepInfo (proto JSON) of a finished sweep, written when it leaves memory: a restarted
   * coordinator lists it from this alone and loads its shards and results only when asked.
   */
  summary?: unknown;
  /** An edit sweep's `layers: { from_trace }` as resolved at launch (planning's TraceLayers): re-plans and the aggregate read it, not the trace. */
  traceLayers?: TraceLayers;
}

/**
 * The persisted shard: its scheduling entry plus the shard itself (sweep.Shard, base64 protobuf).
 * Written only when a restart must know more than the plan says (a failed attempt, backoff, failed,
 * held; every shard of an edit sweep whose covariance shards were pruned): see README "Shard state".
 */
export interface ShardRecord extends ShardEntry {
  shard: string;
  /** When it was written (a lease journal written later wins over it). */
  savedMs?: number;
}

/**
 * One open lease in an agent's lease journal of a sweep: [shard id, "l" leased | "d" done by the
 * agent and not yet counted, attempts, lease id, agent id, granted ms, done ms].
 */
export type JournalLease = [string, "l" | "d", number, string, string, number, number];

/**
 * The key of an agent's lease journal of a sweep: `<sweep>.L.<agent id, base64url>` (shard records
 * are `<sweep>.<prompt>.<part>`, numbers; the agent id may hold characters a key may not).
 */
export const journalKey = (sweepId: string, agentId: string): string => `${sweepId}.L.${Buffer.from(agentId).toString("base64url") || "_"}`;

/** Whether a key of the shards bucket is a lease journal's. */
const isJournalKey = (key: string): boolean => key.split(".")[1] === "L";

/** The key of chunk `k` of a sweep's prompts in the shards bucket: `<sweep>.P.<k>` (deleted with the sweep's keys). */
export const promptsKey = (sweepId: string, k: number): string => `${sweepId}.P.${k}`;
const isPromptsKey = (key: string): boolean => key.split(".")[1] === "P";

/** JSON bytes of prompts a chunk holds at most: well under NATS' default 1 MiB max_payload. */
export const PROMPT_CHUNK_BYTES = 256 * 1024;

/** Splits prompts (proto JSON) into chunks of at most `maxBytes` of JSON each (a larger prompt alone). */
export function chunkPrompts(prompts: unknown[], maxBytes = PROMPT_CHUNK_BYTES): unknown[][] {
  const chunks: unknown[][] = [];
  let cur: unknown[] = [];
  let bytes = 0;
  for (const p of prompts) {
    const n = Buffer.byteLength(JSON.stringify(p)) + 1;
    if (cur.length > 0 && bytes + n > maxBytes) {
      chunks.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(p);
    bytes += n;
  }
  if (cur.length > 0) chunks.push(cur);
  return chunks;
}

/** A sweep's stored prompts are incomplete (a launch that died between its record and its prompts, or a removed key). */
export class PromptsMissingError extends Error {
  constructor(sweepId: string, detail: string) {
    super(`sweep ${sweepId}: its stored prompts are incomplete (${detail}); delete it (sweepctl delete ${sweepId}) and launch it again`);
    this.name = "PromptsMissingError";
  }
}

/** The record as stored: with chunked prompts, without them (they are in memory for the live sweep). */
function withoutPrompts(rec: SweepRecord): SweepRecord {
  return rec.promptChunks === undefined ? rec : { ...rec, prompts: [] };
}

interface Envelope<T> {
  epoch: number;
  data: T;
}

/**
 * Whether a string is a usable key here: NATS KV's key characters, no empty token (no leading,
 * trailing or double dot), bounded length. Shard ids `<sweep>.<prompt>.<part>` are; anything
 * taken from a message is checked with this before it reaches a KV call.
 */
export function isKvKey(key: string): boolean {
  return key.length > 0 && key.length <= 256 && /^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$/.test(key);
}

/** A key refused by {@link isKvKey}. */
export class InvalidKeyError extends Error {
  constructor(readonly key: string) {
    super(`not a valid KV key: ${JSON.stringify(key.slice(0, 100))}`);
    this.name = "InvalidKeyError";
  }
}

const EPOCH_KEY = "_coordinator_epoch";
const ENC = new TextEncoder();

/** Options of {@link StateStore.open}. */
export interface StateStoreOptions {
  /** Called when a background write keeps failing (NATS down) or this coordinator is fenced off. */
  onWriteError?: (key: string, err: unknown) => void;
  /** Retry delay for failed background writes; default 250 ms (doubling to 5 s). */
  retryMs?: number;
  /** Background writes in flight at most; default 128. */
  maxInFlight?: number;
  /** Replicas and byte limit of the buckets; default DEFAULT_NATS_LIMITS. */
  limits?: NatsLimits;
  /** Where bucket updates (limits brought in line) are reported. */
  log?: (msg: string) => void;
}

/** One key's coalescing writer: the newest pending value and whether a write is running. */
interface KeyWriter {
  pending: Uint8Array | undefined;
  running: Promise<void> | undefined;
}

/** Sweep and shard records (CAS updates) and aggregated results in JetStream KV. */
export class StateStore {
  readonly epoch: number;
  private readonly revisions = new Map<string, number>();
  private readonly writers = new Map<string, KeyWriter>();
  private fenced: StaleCoordinatorError | undefined;
  private closed = false;
  /** Writes in flight and waiters for a slot: a launch of thousands of shards must not flood NATS with requests that then time out. */
  private inFlight = 0;
  /** Waiters for a slot, first at `slotHead` (Array.shift is a copy of the rest: O(n²) over a 1M-shard launch's writes). */
  private slotWaiters: ((() => void) | undefined)[] = [];
  private slotHead = 0;
  private readonly maxInFlight: number;
  /** Result batches stored by this epoch (their keys' last part). */
  private batches = 0;

  private constructor(
    private readonly js: JetStreamClient,
    private readonly sweeps: KV,
    private readonly shards: KV,
    private readonly aggregates: KV,
    private readonly snapshots: KV,
    epoch: number,
    private readonly opts: StateStoreOptions,
  ) {
    this.epoch = epoch;
    this.maxInFlight = opts.maxInFlight ?? 128;
  }

  private async slot(): Promise<void> {
    if (this.inFlight < this.maxInFlight) {
      this.inFlight++;
      return;
    }
    await new Promise<void>((res) => this.slotWaiters.push(res));
  }

  private release(): void {
    const next = this.slotWaiters[this.slotHead];
    if (next) {
      this.slotWaiters[this.slotHead++] = undefined;
      if (this.slotHead === this.slotWaiters.length) {
        this.slotWaiters = [];
        this.slotHead = 0;
      } else if (this.slotHead >= 4096 && this.slotHead * 2 >= this.slotWaiters.length) {
        this.slotWaiters = this.slotWaiters.slice(this.slotHead);
        this.slotHead = 0;
      }
    }
    if (next)
      next(); // the slot passes to the waiter
    else this.inFlight--;
  }

  /** Opens (creating if absent) the three buckets and claims the next coordinator epoch. */
  static async open(nc: NatsConnection, opts: StateStoreOptions = {}): Promise<StateStore> {
    const limits = opts.limits ?? DEFAULT_NATS_LIMITS;
    const log = opts.log ?? (() => undefined);
    const [sweeps, shards, aggregates, snapshots] = await Promise.all([
      ensureBucket(nc, SWEEPS_BUCKET, limits, log),
      ensureBucket(nc, SHARDS_BUCKET, limits, log),
      ensureBucket(nc, AGGREGATES_BUCKET, limits, log),
      ensureBucket(nc, SNAPSHOTS_BUCKET, limits, log),
    ]);
    // Claim an epoch with CAS so two coordinators starting together get different ones.
    let epoch = 0;
    for (;;) {
      const cur = await sweeps.get(EPOCH_KEY);
      const prev = cur && cur.operation === "PUT" ? Number(cur.string()) : 0;
      epoch = prev + 1;
      try {
        if (cur && cur.operation === "PUT") await sweeps.update(EPOCH_KEY, String(epoch), cur.revision);
        else await sweeps.create(EPOCH_KEY, String(epoch));
        break;
      } catch (err) {
        if (!isWrongSequence(err)) throw err;
      }
    }
    // Bulk reads (readBucket) create a last-per-subject consumer over up to millions of keys: the
    // server may take longer than the API's default 5 s to answer (a 1M-result restart timed out).
    return new StateStore(jetstream(nc, { timeout: 120_000 }), sweeps, shards, aggregates, snapshots, epoch, opts);
  }

  /** Creates a new sweep record; a sweep with this id already existing is refused. */
  async createSweep(rec: SweepRecord): Promise<void> {
    this.checkFence();
    const chunks = chunkPrompts(rec.prompts);
    rec.promptChunks = chunks.length;
    rec.promptCount = rec.prompts.length;
    try {
      // The record first: its create decides which launch owns the id; then the prompts beside it.
      const rev = await this.sweeps.create(rec.sweepId, this.encode(withoutPrompts(rec)));
      this.revisions.set(`s:${rec.sweepId}`, rev);
    } catch (err) {
      if (isWrongSequence(err)) throw new SweepExistsError(rec.sweepId);
      throw err;
    }
    for (let k = 0; k < chunks.length; k++) await this.shards.put(promptsKey(rec.sweepId, k), this.encode(chunks[k]));
    rec.prompts = []; // stored; the live sweep holds them decoded, so the record need not hold them a second time
  }

  /** Whether a sweep record with this id exists. */
  async sweepExists(sweepId: string): Promise<boolean> {
    const e = await this.sweeps.get(sweepId);
    return e !== null && e.operation === "PUT";
  }

  /** Writes the sweep record (coalesced, CAS, retried in the background); its prompts are not rewritten. */
  saveSweep(rec: SweepRecord): void {
    this.enqueue(this.sweeps, `s:${rec.sweepId}`, rec.sweepId, this.encode(withoutPrompts(rec)));
  }

  /**
   * A stored sweep's prompts (proto JSON), from its chunks, or from the record itself when it was written
   * before chunks existed. Rejects with {@link PromptsMissingError} when a chunk is missing or they do not
   * add up to the count the record gives.
   */
  async loadPrompts(rec: SweepRecord): Promise<unknown[]> {
    if (rec.promptChunks === undefined) return rec.prompts;
    const out: unknown[] = [];
    for (let k = 0; k < rec.promptChunks; k++) {
      const key = promptsKey(rec.sweepId, k);
      const e = await this.shards.get(key);
      if (!e || e.operation !== "PUT")
        throw new PromptsMissingError(rec.sweepId, `chunk ${k} of ${rec.promptChunks}, key ${key} of ${SHARDS_BUCKET}, is missing`);
      const data = (JSON.parse(e.string()) as Envelope<unknown>).data;
      if (!Array.isArray(data)) throw new PromptsMissingError(rec.sweepId, `chunk ${k} holds no list`);
      for (const p of data) out.push(p);
    }
    if (out.length !== rec.promptCount) throw new PromptsMissingError(rec.sweepId, `${out.length} prompts stored, ${rec.promptCount} launched`);
    return out;
  }

  /**
   * Creates new shard records (a launch) and resolves once all are durable: `concurrency` requests
   * in flight, each record encoded only when its turn comes. A record already there (a retried
   * launch) is adopted as for background writes. Rejects on the first write that fails.
   */
  async createShards(records: ShardRecord[], concurrency = 256): Promise<void> {
    this.checkFence();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < records.length) {
        const r = records[next++]!;
        const revKey = `h:${r.shardId}`;
        this.revisions.set(revKey, await this.createOrAdopt(this.shards, revKey, r.shardId, this.encode(r)));
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, records.length) }, worker));
  }

  /** Writes a shard record (coalesced, CAS, retried in the background). */
  saveShard(rec: ShardRecord): void {
    this.enqueue(this.shards, `h:${rec.shardId}`, rec.shardId, this.encode(rec));
  }

  /**
   * Stores an aggregated ShardResult (protobuf) under its shard id and resolves, once it is
   * durable, with its sequence in the aggregates bucket's stream (what a snapshot covers). The form
   * coordinators before batches wrote, and still read; {@link saveResults} is what the sweeps use.
   */
  async saveResult(shardId: string, result: Uint8Array): Promise<number> {
    this.checkFence();
    if (!isKvKey(shardId)) throw new InvalidKeyError(shardId);
    return await this.aggregates.put(shardId, result);
  }

  /**
   * Stores a batch of a sweep's aggregated ShardResults as segments (`<sweep>.b.<epoch>.<n>`, the
   * snapshot's framing, ≤ 512 KiB each) and resolves, once all are durable, with the highest stream
   * sequence. A request per batch segment, not per result: one KV put per result was the largest
   * part of the coordinator's cost per result that is left (bench/RESULTS.md, issue 16). Keys cannot
   * meet a shard id (`<sweep>.<prompt>.<part>`: digits, and sweep ids have no dot); a batch stored
   * twice (a retried persist) only repeats results, which the fold counts once.
   */
  async saveResults(sweepId: string, results: Uint8Array[]): Promise<number> {
    this.checkFence();
    if (!isKvKey(sweepId)) throw new InvalidKeyError(sweepId);
    const seqs = await Promise.all(packSegments(results).map((seg) => this.aggregates.put(batchKey(sweepId, this.epoch, this.batches++), seg)));
    return Math.max(0, ...seqs);
  }

  /** Every stored ShardResult of a sweep (batches unpacked), with the stream sequence it was stored at. */
  async loadResults(sweepId: string): Promise<{ value: Uint8Array; seq: number }[]> {
    return unpackBatches(sweepId, await this.readBucket(AGGREGATES_BUCKET, `${sweepId}.>`), this.opts.log);
  }

  /** The stored ShardResults of a sweep above stream sequence `seq` (a snapshot's tail). */
  async loadResultsAfter(sweepId: string, seq: number): Promise<{ value: Uint8Array; seq: number }[]> {
    return unpackBatches(sweepId, await this.readBucket(AGGREGATES_BUCKET, `${sweepId}.>`, seq + 1), this.opts.log);
  }

  /**
   * Appends results to a sweep's snapshot: new segments under this epoch, then the manifest
   * (CAS, fenced by epoch) saying they and everything before cover stream sequence `seq`. Resolves
   * with the new manifest once both are durable; the caller keeps `prev` and `results` if it rejects.
   */
  async appendSnapshot(sweepId: string, prev: SnapshotManifest | undefined, results: Uint8Array[], seq: number): Promise<SnapshotManifest> {
    this.checkFence();
    if (!isKvKey(sweepId)) throw new InvalidKeyError(sweepId);
    const runs = prev ? prev.runs.map((r) => ({ ...r })) : [];
    let run = runs[runs.length - 1];
    if (!run || run.epoch !== this.epoch) runs.push((run = { epoch: this.epoch, count: 0 }));
    const segs = packSegments(results);
    // Two 512 KiB puts in flight, each tried 3 times: the first append of a restart over 1M results
    // without a snapshot put eight at once and stopped after the first eight on a busy server.
    const put = async (key: string, seg: Uint8Array): Promise<void> => {
      for (let tries = 1; ; tries++) {
        try {
          await this.snapshots.put(key, seg);
          return;
        } catch (err) {
          this.checkFence();
          if (tries >= 3) throw err;
        }
      }
    };
    for (let i = 0; i < segs.length; i += 2)
      await Promise.all(segs.slice(i, i + 2).map((seg, j) => put(segmentKey(sweepId, this.epoch, run.count + i + j), seg)));
    run.count += segs.length;
    const next: SnapshotManifest = { seq: Math.max(seq, prev?.seq ?? 0), runs, results: (prev?.results ?? 0) + results.length };
    const revKey = `m:${sweepId}`;
    const rev = this.revisions.get(revKey);
    const value = this.encode(next);
    const key = manifestKey(sweepId);
    this.revisions.set(
      revKey,
      rev ? await this.casUpdate(this.snapshots, revKey, key, value, rev) : await this.createOrAdopt(this.snapshots, revKey, key, value),
    );
    return next;
  }

  /**
   * A sweep's snapshot: its manifest and every result in its segments, or undefined if it has none.
   * Throws SnapshotError if it cannot be used (a segment missing or malformed, a wrong count).
   */
  async loadSnapshot(sweepId: string): Promise<{ manifest: SnapshotManifest; results: Uint8Array[] } | undefined> {
    if (!isKvKey(sweepId)) throw new InvalidKeyError(sweepId);
    const e = await this.snapshots.get(manifestKey(sweepId));
    if (!e || e.operation !== "PUT") return undefined;
    let data: unknown;
    try {
      data = (JSON.parse(e.string()) as Envelope<unknown>).data;
    } catch {
      throw new SnapshotError(sweepId, "manifest is not JSON");
    }
    const manifest = parseManifest(sweepId, data);
    this.revisions.set(`m:${sweepId}`, e.revision);
    const segs = new Map((await this.readBucket(SNAPSHOTS_BUCKET, `${sweepId}.s.>`)).map((x) => [x.key, x.value]));
    const results: Uint8Array[] = [];
    for (const run of manifest.runs) {
      for (let n = 0; n < run.count; n++) {
        const key = segmentKey(sweepId, run.epoch, n);
        const seg = segs.get(key);
        if (!seg) throw new SnapshotError(sweepId, `segment ${key} named by the manifest is missing`);
        for (const r of unpackSegment(sweepId, key, seg)) results.push(r);
      }
    }
    if (results.length !== manifest.results) throw new SnapshotError(sweepId, `segments hold ${results.length} results, the manifest says ${manifest.results}`);
    return { manifest, results };
  }

  /**
   * The last value of every key under `filter`, in key order, read in one ordered pass over the
   * bucket's stream. A key at a time (`keys()`, then one `get` per key) is a round trip per
   * record: a restart with 1M shard records and 1M results spent minutes there
   * (bench/coordinator-load/restart.mjs).
   */
  private async readBucket(bucket: string, filter = ">", fromSeq?: number): Promise<{ key: string; value: Uint8Array; revision: number }[]> {
    const prefix = `$KV.${bucket}.`;
    // fromSeq: every entry from that stream sequence on (a snapshot's tail); else the last of each key.
    const deliver =
      fromSeq === undefined ? { deliver_policy: DeliverPolicy.LastPerSubject } : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: fromSeq };
    const oc = await this.js.consumers.getPushConsumer(
      `KV_${bucket}`,
      { filter_subjects: prefix + filter, ...deliver } /* a string: filter_subject, nats-server 2.9 */,
    );
    const out: { key: string; value: Uint8Array; revision: number }[] = [];
    if ((await oc.info(true)).num_pending === 0) return out;
    const iter = await oc.consume();
    try {
      for await (const m of iter) {
        const op = m.headers?.get("KV-Operation");
        if (op !== "DEL" && op !== "PURGE") out.push({ key: m.subject.slice(prefix.length), value: m.data, revision: m.seq });
        if (m.info.pending === 0) break;
      }
    } finally {
      iter.stop();
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /**
   * Every sweep record, and the shard records of the sweeps `withShards` picks (default all), for
   * a (re)starting coordinator: a finished sweep's shards stay in the KV until it is opened.
   */
  async loadAll(withShards: (rec: SweepRecord) => boolean = () => true): Promise<{ sweeps: SweepRecord[]; shards: ShardRecord[] }> {
    const sweeps = await this.loadBucket<SweepRecord>(SWEEPS_BUCKET, "s:");
    const picked = new Set(sweeps.filter(withShards).map((r) => r.sweepId));
    // Shard ids are `<sweep>.<prompt>.<part>` and sweep ids have no dot: one pass per picked sweep.
    const shards: ShardRecord[] = [];
    for (const id of [...picked].sort()) for (const r of await this.loadShards(id)) shards.push(r);
    return { sweeps, shards };
  }

  /** One sweep record, or undefined. */
  async loadSweep(sweepId: string): Promise<SweepRecord | undefined> {
    if (!isKvKey(sweepId)) throw new InvalidKeyError(sweepId);
    const e = await this.sweeps.get(sweepId);
    if (!e || e.operation !== "PUT") return undefined;
    this.revisions.set(`s:${sweepId}`, e.revision);
    return (JSON.parse(e.string()) as Envelope<SweepRecord>).data;
  }

  /** The shard records of one sweep (not its lease journals). */
  async loadShards(sweepId: string): Promise<ShardRecord[]> {
    if (!isKvKey(sweepId)) throw new InvalidKeyError(sweepId);
    return await this.loadBucket<ShardRecord>(SHARDS_BUCKET, "h:", `${sweepId}.>`, (k) => !isJournalKey(k) && !isPromptsKey(k));
  }

  /**
   * Writes an agent's lease journal of a sweep: the leases it holds there now (coalesced, CAS,
   * retried in the background like a shard record). Written at each grant batch to the agent,
   * instead of a record per shard granted, done and counted.
   */
  saveLeases(sweepId: string, agentId: string, leases: JournalLease[]): void {
    const key = journalKey(sweepId, agentId);
    this.enqueue(this.shards, `h:${key}`, key, this.encode(leases));
  }

  /** Every lease in a sweep's lease journals (none if absent; a malformed entry is skipped: its shard is re-queued, never lost). */
  async loadLeases(sweepId: string): Promise<JournalLease[]> {
    if (!isKvKey(sweepId)) throw new InvalidKeyError(sweepId);
    const out: JournalLease[] = [];
    for (const data of await this.loadBucket<unknown>(SHARDS_BUCKET, "h:", `${sweepId}.L.*`)) if (Array.isArray(data)) out.push(...data.filter(isJournalLease));
    return out;
  }

  /**
   * Removes a sweep from the KV: its record, its shard records and lease journal, its stored results and
   * snapshot (each key purged, so no history of it remains). Resolves with its shard count and the
   * results removed. Queued writes of its
   * keys are dropped first, so none lands after the purge.
   */
  async deleteSweep(sweepId: string): Promise<{ shards: number; results: number }> {
    this.checkFence();
    if (!isKvKey(sweepId)) throw new InvalidKeyError(sweepId);
    const keysOf = async (kv: KV): Promise<string[]> => {
      const out: string[] = [];
      for await (const k of await kv.keys(`${sweepId}.>`)) out.push(k);
      return out;
    };
    const [shardKeys, stored, snapshotKeys] = await Promise.all([
      keysOf(this.shards),
      this.readBucket(AGGREGATES_BUCKET, `${sweepId}.>`),
      keysOf(this.snapshots),
    ]);
    // One read of the stored results gives their keys and, batches unpacked, the count removed.
    const resultKeys = stored.map((e) => e.key);
    const resultCount = unpackBatches(sweepId, stored, this.opts.log).length;
    // Most shards have no record (the plan implies them): the count removed is the sweep's shards.
    const shardCount =
      (await this.loadSweep(sweepId).catch(() => undefined))?.shardCount ?? shardKeys.filter((k) => !isJournalKey(k) && !isPromptsKey(k)).length;
    for (const k of [`s:${sweepId}`, ...shardKeys.map((k) => `h:${k}`)]) {
      const w = this.writers.get(k);
      if (w) w.pending = undefined;
      await w?.running;
      this.writers.delete(k);
      this.revisions.delete(k);
    }
    for (let i = 0; i < shardKeys.length; i += 64) await Promise.all(shardKeys.slice(i, i + 64).map((k) => this.shards.purge(k)));
    for (let i = 0; i < resultKeys.length; i += 64) await Promise.all(resultKeys.slice(i, i + 64).map((k) => this.aggregates.purge(k)));
    for (let i = 0; i < snapshotKeys.length; i += 64) await Promise.all(snapshotKeys.slice(i, i + 64).map((k) => this.snapshots.purge(k)));
    this.revisions.delete(`m:${sweepId}`);
    await this.sweeps.purge(sweepId);
    return { shards: shardCount, results: resultCount };
  }

  private async loadBucket<T>(bucket: string, prefix: string, filter?: string, keep: (key: string) => boolean = () => true): Promise<T[]> {
    const out: T[] = [];
    const dec = new TextDecoder();
    for (const e of await this.readBucket(bucket, filter)) {
      if (e.key.startsWith("_") || !keep(e.key)) continue; // the epoch key
      this.revisions.set(prefix + e.key, e.revision);
      out.push((JSON.parse(dec.decode(e.value)) as Envelope<T>).data);
    }
    return out;
  }

  /** Resolves when every queued write has reached the KV. */
  async flush(): Promise<void> {
    for (;;) {
      const running = [...this.writers.values()].map((w) => w.running).filter((p): p is Promise<void> => p !== undefined);
      if (running.length === 0) return;
      await Promise.all(running);
    }
  }

  /** Resolves once the listed shards' records have no write pending or running. */
  async shardsDurable(shardIds: string[]): Promise<void> {
    for (;;) {
      const running = shardIds.map((id) => this.writers.get(`h:${id}`)?.running).filter((p): p is Promise<void> => p !== undefined);
      if (running.length === 0) return;
      await Promise.all(running);
      this.checkFence();
    }
  }

  /** Number of keys with a write not yet durable (for /readyz and tests). */
  pendingWrites(): number {
    return [...this.writers.values()].filter((w) => w.running !== undefined).length;
  }

  /** Stops background retries (queued writes are abandoned; call `flush` first to keep them). */
  close(): void {
    this.closed = true;
  }

  private encode<T>(data: T): Uint8Array {
    return ENC.encode(JSON.stringify({ epoch: this.epoch, data } satisfies Envelope<T>));
  }

  private checkFence(): void {
    if (this.fenced) throw this.fenced;
  }

  private enqueue(kv: KV, revKey: string, key: string, value: Uint8Array): void {
    let w = this.writers.get(revKey);
    if (!w) {
      w = { pending: undefined, running: undefined };
      this.writers.set(revKey, w);
    }
    w.pending = value;
    if (!w.running) {
      const writer = w;
      writer.running = this.drain(kv, revKey, key, writer).finally(() => {
        writer.running = undefined;
        if (writer.pending && !this.closed && !this.fenced) this.enqueue(kv, revKey, key, writer.pending);
        // An idle writer is dropped: one kept per key ever written held a million objects at 1M shards.
        else if (!writer.pending && this.writers.get(revKey) === writer) this.writers.delete(revKey);
      });
    }
  }

  private async drain(kv: KV, revKey: string, key: string, w: KeyWriter): Promise<void> {
    let delay = this.opts.retryMs ?? 250;
    while (w.pending && !this.closed && !this.fenced) {
      await this.slot();
      // Take the newest value only now: updates queued while waiting for a slot coalesce.
      const value = w.pending;
      w.pending = undefined;
      if (!value) {
        this.release();
        break;
      }
      try {
        const rev = this.revisions.get(revKey);
        const next = rev ? await this.casUpdate(kv, revKey, key, value, rev) : await this.createOrAdopt(kv, revKey, key, value);
        this.revisions.set(revKey, next);
        delay = this.opts.retryMs ?? 250;
        this.release();
      } catch (err) {
        this.release();
        if (err instanceof StaleCoordinatorError) {
          this.fenced = err;
          this.opts.onWriteError?.(key, err);
          return;
        }
        this.opts.onWriteError?.(key, err);
        if (!w.pending) w.pending = value; // keep the newest value
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(5000, delay * 2);
      }
    }
  }

  private async createOrAdopt(kv: KV, revKey: string, key: string, value: Uint8Array): Promise<number> {
    try {
      return await kv.create(key, value);
    } catch (err) {
      if (!isWrongSequence(err)) throw err;
      const cur = await kv.get(key);
      if (!cur) throw err;
      return await this.casUpdate(kv, revKey, key, value, cur.revision);
    }
  }

  /**
   * `update` with the known revision; on a revision conflict, reads the current value: written
   * by a newer epoch → fenced; by ours or an older one → adopt its revision and write again.
   */
  private async casUpdate(kv: KV, revKey: string, key: string, value: Uint8Array, rev: number): Promise<number> {
    try {
      return await kv.update(key, value, rev);
    } catch (err) {
      if (!isWrongSequence(err)) throw err;
      const cur = await kv.get(key);
      if (!cur || cur.operation !== "PUT") return await kv.create(key, value);
      const theirEpoch = (JSON.parse(cur.string()) as Envelope<unknown>).epoch ?? 0;
      if (theirEpoch > this.epoch) throw new StaleCoordinatorError(key, this.epoch, theirEpoch);
      this.revisions.set(revKey, cur.revision);
      return await kv.update(key, value, cur.revision);
    }
  }
}

function isJournalLease(x: unknown): x is JournalLease {
  if (!Array.isArray(x) || x.length !== 7) return false;
  const [id, st, att, lease, agent, at, done] = x as unknown[];
  return (
    typeof id === "string" &&
    isKvKey(id) &&
    (st === "l" || st === "d") &&
    Number.isSafeInteger(att) &&
    typeof lease === "string" &&
    typeof agent === "string" &&
    Number.isFinite(at) &&
    Number.isFinite(done)
  );
}

function isWrongSequence(err: unknown): boolean {
  if (err instanceof JetStreamApiError) {
    return err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown;
  }
  return /wrong last sequence/i.test(String((err as Error)?.message ?? err));
}

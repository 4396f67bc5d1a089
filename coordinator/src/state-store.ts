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
import { Kvm, type KV } from "@nats-io/kv";
import { JetStreamApiError, JetStreamApiCodes } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { AGGREGATES_BUCKET, SHARDS_BUCKET, SWEEPS_BUCKET } from "@factsweep/shared";
import { StaleCoordinatorError, SweepExistsError } from "./errors.js";
import type { ShardEntry } from "./lease-table.js";

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
  /** sweep.PromptSpec[] as proto JSON. */
  prompts: unknown[];
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
}

/** The persisted shard: its scheduling entry plus the shard itself (sweep.Shard, base64 protobuf). */
export interface ShardRecord extends ShardEntry {
  shard: string;
}

interface Envelope<T> {
  epoch: number;
  data: T;
}

/** Bucket key of a shard: shard ids are `<sweep>.<prompt>.<part>`, valid KV keys already. */
const EPOCH_KEY = "_coordinator_epoch";
const ENC = new TextEncoder();
const DEC = new TextDecoder();

/** Options of {@link StateStore.open}. */
export interface StateStoreOptions {
  /** Called when a background write keeps failing (NATS down) or this coordinator is fenced off. */
  onWriteError?: (key: string, err: unknown) => void;
  /** Retry delay for failed background writes; default 250 ms (doubling to 5 s). */
  retryMs?: number;
}

/** One key's coalescing writer: the newest pending value and whether a write is running. */
interface KeyWriter {
  pending: Uint8Array | undefined;
  running: Promise<void> | undefined;
}

/** Sweep, shard and aggregate records in JetStream KV with CAS updates. */
export class StateStore {
  readonly epoch: number;
  private readonly revisions = new Map<string, number>();
  private readonly writers = new Map<string, KeyWriter>();
  private fenced: StaleCoordinatorError | undefined;
  private closed = false;

  private constructor(
    private readonly sweeps: KV,
    private readonly shards: KV,
    private readonly aggregates: KV,
    epoch: number,
    private readonly maxValueBytes: number,
    private readonly opts: StateStoreOptions,
  ) {
    this.epoch = epoch;
  }

  /** Opens (creating if absent) the three buckets and claims the next coordinator epoch. */
  static async open(nc: NatsConnection, opts: StateStoreOptions = {}): Promise<StateStore> {
    const kvm = new Kvm(nc);
    const [sweeps, shards, aggregates] = await Promise.all([
      kvm.create(SWEEPS_BUCKET, { history: 1 }),
      kvm.create(SHARDS_BUCKET, { history: 1 }),
      kvm.create(AGGREGATES_BUCKET, { history: 1 }),
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
    const maxPayload = nc.info?.max_payload ?? 1024 * 1024;
    return new StateStore(sweeps, shards, aggregates, epoch, Math.max(64 * 1024, maxPayload - 16 * 1024), opts);
  }

  /** Creates a new sweep record; a sweep with this id already existing is refused. */
  async createSweep(rec: SweepRecord): Promise<void> {
    this.checkFence();
    try {
      const rev = await this.sweeps.create(rec.sweepId, this.encode(rec));
      this.revisions.set(`s:${rec.sweepId}`, rev);
    } catch (err) {
      if (isWrongSequence(err)) throw new SweepExistsError(rec.sweepId);
      throw err;
    }
  }

  /** Whether a sweep record with this id exists. */
  async sweepExists(sweepId: string): Promise<boolean> {
    const e = await this.sweeps.get(sweepId);
    return e !== null && e.operation === "PUT";
  }

  /** Writes the sweep record (coalesced, CAS, retried in the background). */
  saveSweep(rec: SweepRecord): void {
    this.enqueue(this.sweeps, `s:${rec.sweepId}`, rec.sweepId, this.encode(rec));
  }

  /** Writes a shard record (coalesced, CAS, retried in the background). */
  saveShard(rec: ShardRecord): void {
    this.enqueue(this.shards, `h:${rec.shardId}`, rec.shardId, this.encode(rec));
  }

  /**
   * Writes a sweep's aggregator snapshot and resolves once it is durable. Snapshots larger than
   * one NATS message are split into chunks under a new generation, then the manifest (the key
   * `<sweep>`) is switched with CAS, so a reader always sees one complete generation.
   */
  async saveAggregate(sweepId: string, snapshot: unknown): Promise<void> {
    this.checkFence();
    const body = ENC.encode(JSON.stringify(snapshot));
    const chunkBytes = this.maxValueBytes;
    const prevKey = `a:${sweepId}`;
    const prev = await this.aggregates.get(sweepId);
    const prevManifest = prev && prev.operation === "PUT" ? (JSON.parse(prev.string()) as Envelope<Manifest>).data : undefined;
    const gen = (prevManifest?.gen ?? 0) + 1;
    const chunks = Math.max(1, Math.ceil(body.length / chunkBytes));
    for (let i = 0; i < chunks; i++) {
      await this.aggregates.put(`${sweepId}.g${gen}.${i}`, body.subarray(i * chunkBytes, (i + 1) * chunkBytes));
    }
    const manifest = this.encode<Manifest>({ gen, chunks, bytes: body.length });
    const rev = prev && prev.operation === "PUT" ? await this.casUpdate(this.aggregates, prevKey, sweepId, manifest, prev.revision) : await this.aggregates.create(sweepId, manifest);
    this.revisions.set(prevKey, rev);
    if (prevManifest) {
      for (let i = 0; i < prevManifest.chunks; i++) await this.aggregates.purge(`${sweepId}.g${prevManifest.gen}.${i}`).catch(() => undefined);
    }
  }

  /** The sweep's last aggregator snapshot, or undefined when none was written. */
  async loadAggregate(sweepId: string): Promise<unknown> {
    const m = await this.aggregates.get(sweepId);
    if (!m || m.operation !== "PUT") return undefined;
    const { data } = JSON.parse(m.string()) as Envelope<Manifest>;
    const parts: Uint8Array[] = [];
    for (let i = 0; i < data.chunks; i++) {
      const c = await this.aggregates.get(`${sweepId}.g${data.gen}.${i}`);
      if (!c || c.operation !== "PUT") throw new Error(`aggregate snapshot of sweep ${sweepId} misses chunk ${i} of generation ${data.gen}`);
      parts.push(c.value);
    }
    return JSON.parse(DEC.decode(Buffer.concat(parts)));
  }

  /** Every sweep and shard record, for a (re)starting coordinator. */
  async loadAll(): Promise<{ sweeps: SweepRecord[]; shards: ShardRecord[] }> {
    const sweeps = await this.loadBucket<SweepRecord>(this.sweeps, "s:");
    const shards = await this.loadBucket<ShardRecord>(this.shards, "h:");
    return { sweeps, shards };
  }

  private async loadBucket<T>(kv: KV, prefix: string): Promise<T[]> {
    const out: T[] = [];
    const keys: string[] = [];
    for await (const k of await kv.keys()) if (!k.startsWith("_")) keys.push(k);
    keys.sort();
    for (const k of keys) {
      const e = await kv.get(k);
      if (!e || e.operation !== "PUT") continue;
      this.revisions.set(prefix + k, e.revision);
      out.push((JSON.parse(e.string()) as Envelope<T>).data);
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
      });
    }
  }

  private async drain(kv: KV, revKey: string, key: string, w: KeyWriter): Promise<void> {
    let delay = this.opts.retryMs ?? 250;
    while (w.pending && !this.closed && !this.fenced) {
      const value = w.pending;
      w.pending = undefined;
      try {
        const rev = this.revisions.get(revKey);
        const next = rev ? await this.casUpdate(kv, revKey, key, value, rev) : await this.createOrAdopt(kv, revKey, key, value);
        this.revisions.set(revKey, next);
        delay = this.opts.retryMs ?? 250;
      } catch (err) {
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

interface Manifest {
  gen: number;
  chunks: number;
  bytes: number;
}

function isWrongSequence(err: unknown): boolean {
  if (err instanceof JetStreamApiError) {
    return err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown;
  }
  return /wrong last sequence/i.test(String((err as Error)?.message ?? err));
}

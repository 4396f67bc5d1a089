/**
 * ROME's key covariance C once per cluster (issue 17 item 2; names in shared/covariance.ts). At an
 * edit sweep's launch, C already in the object store drops its covariance shards; the edit shards
 * whose C is missing are held (lease-table HELD_MS). Each covariance shard's agent uploads its
 * partial moment Σ k kᵀ as a part object; when every part of a C is there, this merges them (float64
 * sum over the summed token counts), stores C (float32), deletes the parts and releases the edits waiting for it. All
 * of it lives in JetStream: a restarted coordinator re-reads the held shards and merges again.
 */
import { Objm, StorageType, type ObjectStore } from "@nats-io/obj";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { sweep } from "@factsweep/proto";
import { COVARIANCE_BUCKET, covariancePartName, covarianceRefOf, MAX_COVARIANCE_DIM, type CovarianceRef } from "@factsweep/shared";
import { HELD_MS } from "./lease-table.js";
import { ensureStream } from "./nats-limits.js";
import type { Counter } from "prom-client";

/** Where held shards go when their C exists (or cannot be made). */
export interface CovarianceDeps {
  release(shardIds: string[], error?: string): void;
  /** factsweep_covariances_total{source}. */
  counter: Counter<"source">;
  log(msg: string): void;
}

/** A C some held shards wait for. */
interface Wanted {
  parts: number;
  held: Set<string>;
  merging?: Promise<void>;
  /** A part arrived during a merge: look again after it. */
  again?: boolean;
}

/** Metadata of a part or C object (strings, as the object store keeps them). */
interface CovMeta {
  tokens: string;
  dim: string;
}

/** Opens the covariance bucket, creating it, or bringing an existing one's limits in line (as the KV buckets). */
export async function openCovarianceStore(nc: NatsConnection, replicas: number, maxBytes: number, log: (m: string) => void): Promise<ObjectStore> {
  const objm = new Objm(nc);
  const existing = await objm.open(COVARIANCE_BUCKET).catch(() => undefined);
  if (!existing) return await objm.create(COVARIANCE_BUCKET, { storage: StorageType.File, replicas, max_bytes: maxBytes });
  await ensureStream(await jetstreamManager(nc), { name: `OBJ_${COVARIANCE_BUCKET}`, num_replicas: replicas, max_bytes: maxBytes }, log);
  return existing;
}

/** The ROME covariances of every edit sweep this coordinator holds. */
export class Covariances {
  private readonly wanted = new Map<string, Wanted>();

  constructor(
    private readonly os: ObjectStore,
    private readonly d: CovarianceDeps,
  ) {}

  /** Whether C (not a part) is stored. */
  async has(object: string): Promise<boolean> {
    const info = await this.os.info(object);
    return info !== null && !info.deleted;
  }

  /**
   * A new sweep's shards: the covariance shards of a C already stored are left out; the edit
   * shards of a C not yet stored are returned in `held` (their records get HELD_MS).
   */
  async prepare(shards: sweep.Shard[]): Promise<{ shards: sweep.Shard[]; held: Set<string> }> {
    const refs = new Map(shards.map((sh) => [sh.shardId, sh.kind === "edit" ? covarianceRefOf(sh.paramsJson) : undefined]));
    const stored = new Map<string, boolean>();
    for (const ref of refs.values()) if (ref && !stored.has(ref.object)) stored.set(ref.object, await this.has(ref.object));
    const held = new Set<string>();
    const kept = shards.filter((sh) => {
      const ref = refs.get(sh.shardId);
      if (!ref) return true;
      if (stored.get(ref.object)) return ref.parts === undefined; // C exists: no covariance shard, the edit runs at once
      if (ref.parts === undefined) held.add(sh.shardId);
      return true;
    });
    return { shards: kept, held };
  }

  /**
   * Shards held here (at launch, or loaded after a restart: records whose notBeforeMs is HELD_MS)
   * wait for their C; the covariance shards tell how many parts it has. Then merges what is complete.
   */
  track(shards: { entry: { shardId: string; notBeforeMs: number; state: string }; shard: sweep.Shard }[]): void {
    const parts = new Map<string, number>();
    const held: [string, CovarianceRef][] = [];
    for (const { entry, shard } of shards) {
      if (shard.kind !== "edit") continue;
      let ref: CovarianceRef | undefined;
      try {
        ref = covarianceRefOf(shard.paramsJson);
      } catch {
        continue; // planned here: cannot be malformed
      }
      if (!ref) continue;
      if (ref.parts !== undefined) parts.set(ref.object, ref.parts);
      else if (entry.state === "pending" && entry.notBeforeMs === HELD_MS) held.push([entry.shardId, ref]);
    }
    for (const [shardId, ref] of held) {
      let w = this.wanted.get(ref.object);
      if (!w) this.wanted.set(ref.object, (w = { parts: parts.get(ref.object) ?? 0, held: new Set() }));
      w.held.add(shardId);
    }
    for (const object of new Set(held.map(([, r]) => r.object))) this.kick(object);
  }

  /**
   * A resumed sweep: its pending edits are held again until their C is stored (checked at once; a
   * C that a failed part left unmade waits for its covariance shards, re-queued by the resume).
   */
  resumed(shards: { entry: { shardId: string; notBeforeMs: number; state: string }; shard: sweep.Shard }[], hold: (ids: string[]) => void): void {
    const edits = shards.filter(
      ({ entry, shard }) => entry.state === "pending" && shard.kind === "edit" && covarianceRefOf(shard.paramsJson)?.parts === undefined,
    );
    const ids = edits.filter(({ shard }) => covarianceRefOf(shard.paramsJson) !== undefined).map(({ entry }) => entry.shardId);
    hold(ids);
    this.track(shards.map(({ entry, shard }) => ({ entry: ids.includes(entry.shardId) ? { ...entry, notBeforeMs: HELD_MS } : entry, shard })));
  }

  /** A covariance shard's result was counted: its part is stored, so C may now be complete. */
  partDone(shard: sweep.Shard): void {
    const ref = covarianceRefOf(shard.paramsJson);
    if (ref?.parts !== undefined) this.kick(ref.object);
  }

  /** A covariance shard failed for good: the edits waiting for its C fail too (resume re-runs both). */
  partFailed(shard: sweep.Shard, error: string): void {
    const ref = covarianceRefOf(shard.paramsJson);
    const w = ref?.parts !== undefined ? this.wanted.get(ref.object) : undefined; // an edit failing fails nothing else
    if (!ref || !w) return;
    this.wanted.delete(ref.object);
    this.d.release([...w.held], `its ROME covariance ${ref.object} could not be computed (shard ${shard.shardId}: ${error})`);
  }

  /** Merges C if every part is there (once at a time per C), then releases its held shards. */
  private kick(object: string): void {
    const w = this.wanted.get(object);
    if (!w) return;
    if (w.merging) {
      w.again = true;
      return;
    }
    w.again = false;
    w.merging = this.merge(object, w)
      .then((done) => {
        if (!done) return;
        this.wanted.delete(object);
        this.d.release([...w.held]);
      })
      .catch((err: Error) => this.d.log(`covariance ${object}: merge failed (${err.message}); retried at the next part or restart`))
      .finally(() => {
        w.merging = undefined;
        if (w.again && this.wanted.get(object) === w) this.kick(object);
      });
  }

  /** True once C is stored (merged now, or already there); false while a part is missing. */
  private async merge(object: string, w: Wanted): Promise<boolean> {
    if (await this.has(object)) return true;
    if (w.parts < 1) return false;
    const names = Array.from({ length: w.parts }, (_, k) => covariancePartName(object, k, w.parts));
    for (const name of names) if (!(await this.has(name))) return false;
    let sum: Float64Array | undefined;
    let dim = 0;
    let tokens = 0;
    for (const name of names) {
      // A part is input from an agent: its size, its metadata and its digest (checked by the client) before use.
      const info = await this.os.info(name);
      const blob = await this.os.getBlob(name);
      if (!info || !blob) return false;
      const meta = (info.metadata ?? {}) as Partial<CovMeta>;
      const n = Number(meta.tokens);
      const d = Math.round(Math.sqrt(blob.byteLength / 4));
      if (!Number.isSafeInteger(n) || n < 1) throw new Error(`part ${name}: metadata tokens ${JSON.stringify(meta.tokens)} is not a positive integer`);
      if (d < 1 || d > MAX_COVARIANCE_DIM || d * d * 4 !== blob.byteLength || String(d) !== meta.dim) {
        throw new Error(`part ${name}: ${blob.byteLength} bytes and metadata dim ${JSON.stringify(meta.dim)} are not one float32 square matrix`);
      }
      if (sum && d !== dim) throw new Error(`part ${name}: ${d}x${d}, other parts ${dim}x${dim}`);
      dim = d;
      sum ??= new Float64Array(d * d);
      const m = new Float32Array(blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.byteLength));
      for (let i = 0; i < m.length; i++) sum[i]! += m[i]!;
      tokens += n;
    }
    const C = new Float32Array(dim * dim);
    for (let i = 0; i < C.length; i++) C[i] = sum![i]! / tokens;
    if (!C.every(Number.isFinite)) throw new Error("C holds non-finite values");
    await this.os.putBlob(
      {
        name: object,
        description: `ROME key covariance from ${w.parts} part(s)`,
        metadata: { tokens: String(tokens), dim: String(dim), parts: String(w.parts) },
      },
      new Uint8Array(C.buffer),
    );
    this.d.counter.inc({ source: "computed" });
    // C is stored: its parts are not needed again (a restart finds C); best effort, they only take room.
    for (const name of names) await this.os.delete(name).catch((err: Error) => this.d.log(`covariance part ${name}: not deleted (${err.message})`));
    this.d.log(`covariance ${object}: merged ${w.parts} part(s), ${tokens} tokens, ${dim}x${dim}; released ${w.held.size} edit shard(s)`);
    return true;
  }
}

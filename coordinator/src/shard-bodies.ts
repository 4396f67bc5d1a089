/**
 * The planned shards' bodies (sweep.Shard protobuf, prompt cut to its index and key) of every sweep
 * held, packed into large buffers: no string or object per shard. A body is found by its shard id
 * (`<sweep>.<prompt index>.<part>`): per sweep, per prompt, a slot per part. One base64 string in a
 * Map per shard cost ~150 bytes of the ~1 KB a shard took in memory at 1M shards (bench/coordinator-load).
 */

import { sweep } from "@factsweep/proto";

/**
 * A stored body as the shard it was planned as: the sweep id, shard id and model that planned bodies
 * leave out (sweep-runtime.ts `plannedShard`) put back; bodies of older coordinators have them.
 */
export function shardOf(body: Uint8Array, sweepId: string, shardId: string, model: sweep.ModelRef | undefined): sweep.Shard {
  const sh = sweep.Shard.decode(body);
  if (!sh.sweepId) sh.sweepId = sweepId;
  if (!sh.shardId) sh.shardId = shardId;
  if (!sh.model && model) sh.model = model;
  return sh;
}

/** Bytes of one buffer of bodies. */
const CHUNK = 1 << 20;

/** One sweep's bodies. */
class SweepBodies {
  private readonly chunks: Buffer[] = [];
  private used = CHUNK;
  /** Per body: chunk index × CHUNK + offset, and its length. */
  private readonly at: number[] = [];
  private readonly len: number[] = [];
  /** Slots by prompt index and part; ids of another form (none planned today) by id. */
  private readonly byPrompt = new Map<number, number[]>();
  private readonly other = new Map<string, number>();

  set(shardId: string, body: string | Uint8Array): void {
    const n = typeof body === "string" ? Buffer.byteLength(body, "base64") : body.length;
    if (this.used + n > CHUNK) {
      this.chunks.push(Buffer.allocUnsafeSlow(Math.max(CHUNK, n)));
      this.used = 0;
    }
    const c = this.chunks.length - 1;
    const chunk = this.chunks[c]!;
    let written = n;
    if (typeof body === "string") written = chunk.write(body, this.used, "base64");
    else chunk.set(body, this.used);
    const slot = this.at.length;
    this.at.push(c * CHUNK + this.used);
    this.len.push(written);
    this.used += written;
    const id = parseId(shardId);
    if (!id) {
      this.other.set(shardId, slot);
      return;
    }
    let parts = this.byPrompt.get(id.prompt);
    if (!parts) this.byPrompt.set(id.prompt, (parts = []));
    while (parts.length < id.part) parts.push(-1);
    parts[id.part] = slot; // a body set again (a restart's record) takes a new slot; the old bytes stay until the sweep goes
  }

  get(shardId: string): Uint8Array | undefined {
    const id = parseId(shardId);
    const slot = id ? this.byPrompt.get(id.prompt)?.[id.part] : this.other.get(shardId);
    if (slot === undefined || slot < 0) return undefined;
    const at = this.at[slot]!;
    const c = Math.floor(at / CHUNK);
    const off = at - c * CHUNK;
    return this.chunks[c]!.subarray(off, off + this.len[slot]!);
  }
}

/** `<sweep>.<prompt>.<part>` → its two numbers (the sweep id is checked by the caller's map). */
function parseId(shardId: string): { prompt: number; part: number } | undefined {
  const b = shardId.lastIndexOf(".");
  const a = shardId.lastIndexOf(".", b - 1);
  if (a < 0) return undefined;
  const prompt = Number(shardId.slice(a + 1, b));
  const part = Number(shardId.slice(b + 1));
  if (!Number.isSafeInteger(prompt) || !Number.isSafeInteger(part) || prompt < 0 || part < 0 || part > 1e7) return undefined;
  return { prompt, part };
}

/** Every held sweep's shard bodies. */
export class ShardBodies {
  private readonly sweeps = new Map<string, SweepBodies>();

  /** Stores a body, as base64 (a stored record's) or bytes. */
  set(sweepId: string, shardId: string, body: string | Uint8Array): void {
    let s = this.sweeps.get(sweepId);
    if (!s) this.sweeps.set(sweepId, (s = new SweepBodies()));
    s.set(shardId, body);
  }

  /** The body's bytes (a view into the sweep's buffer: decode, do not keep), or undefined. */
  get(sweepId: string, shardId: string): Uint8Array | undefined {
    return this.sweeps.get(sweepId)?.get(shardId);
  }

  forget(sweepId: string): void {
    this.sweeps.delete(sweepId);
  }
}

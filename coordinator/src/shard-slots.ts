/**
 * A sweep's plan-form shards (`<sweep>.<prompt>.<part>`) as columns: a slot per shard holding its
 * prompt, part, cells, lifecycle mark and attempts in chunked typed arrays, and each prompt's cache
 * key once. The lease table keeps a shard here, with no object, string or map entry of its own, while
 * it is "fresh pending" (as planned: never granted, held or failed) and again once it is counted;
 * an entry object exists only in between (bench/coordinator-load/pending-memory.mjs: 305 bytes of
 * heap a pending shard as an object, 14 as a slot).
 */

/** A slot's mark: no shard (replaced), fresh pending, an entry object holds its state, counted. */
export const GONE = 0;
export const FRESH = 1;
export const ENTRY = 2;
export const COUNTED = 3;

const BITS = 16;
const SIZE = 1 << BITS;
const MASK = SIZE - 1;

/** `<sweep>.<prompt>.<part>` → its parts, when both numbers are written the plan's way (no sign, no leading zero). */
export function parseShardId(shardId: string): { sweepId: string; prompt: number; part: number } | undefined {
  const b = shardId.lastIndexOf(".");
  const a = b > 0 ? shardId.lastIndexOf(".", b - 1) : -1;
  if (a <= 0) return undefined;
  const prompt = canonicalInt(shardId, a + 1, b);
  const part = canonicalInt(shardId, b + 1, shardId.length);
  if (prompt < 0 || part < 0) return undefined;
  return { sweepId: shardId.slice(0, a), prompt, part };
}

/** The decimal integer in s[from, to) written without sign or leading zero, below 2^31; else -1. */
function canonicalInt(s: string, from: number, to: number): number {
  if (to <= from || to - from > 10 || (s.charCodeAt(from) === 48 && to - from > 1)) return -1;
  let n = 0;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return -1;
    n = n * 10 + c;
  }
  return n <= 0x7fffffff ? n : -1;
}

export class SweepSlots {
  /** Slots in use (each a shard added in (prompt, part) order). */
  length = 0;
  /** Slots marked FRESH. */
  fresh = 0;
  private readonly prompts: Int32Array[] = [];
  private readonly parts: Int32Array[] = [];
  private readonly cellCol: Int32Array[] = [];
  private readonly marks: Uint8Array[] = [];
  private readonly attemptCol: Uint8Array[] = [];
  /** Each prompt's cache key, by prompt index. */
  private readonly keys = new Map<number, string>();

  constructor(readonly sweepId: string) {}

  /**
   * A new slot for the shard, or -1 when it cannot have one: its id is not in plan form, it comes
   * before the last slot's (prompt, part) (the lookup is a binary search), its prompt has another
   * key, or its cells do not fit. Its mark is GONE until the caller sets one.
   */
  add(shardId: string, promptKey: string, cells: number): number {
    const id = parseShardId(shardId);
    if (!id || id.sweepId !== this.sweepId || !Number.isInteger(cells) || cells < 0 || cells > 0x7fffffff) return -1;
    const key = this.keys.get(id.prompt);
    if (key !== undefined && key !== promptKey) return -1;
    const n = this.length;
    if (n > 0) {
      const p = this.prompt(n - 1);
      if (id.prompt < p || (id.prompt === p && id.part <= this.part(n - 1))) return -1;
    }
    if ((n & MASK) === 0) {
      this.prompts.push(new Int32Array(SIZE));
      this.parts.push(new Int32Array(SIZE));
      this.cellCol.push(new Int32Array(SIZE));
      this.marks.push(new Uint8Array(SIZE));
      this.attemptCol.push(new Uint8Array(SIZE));
    }
    const c = n >>> BITS;
    const i = n & MASK;
    this.prompts[c]![i] = id.prompt;
    this.parts[c]![i] = id.part;
    this.cellCol[c]![i] = cells;
    if (key === undefined) this.keys.set(id.prompt, promptKey);
    this.length = n + 1;
    return n;
  }

  /** The slot of a plan-form shard id of this sweep, or -1. */
  find(prompt: number, part: number): number {
    let lo = 0;
    let hi = this.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const p = this.prompt(mid);
      const q = p === prompt ? this.part(mid) : 0;
      if (p < prompt || (p === prompt && q < part)) lo = mid + 1;
      else if (p > prompt || q > part) hi = mid - 1;
      else return mid;
    }
    return -1;
  }

  prompt(slot: number): number {
    return this.prompts[slot >>> BITS]![slot & MASK]!;
  }

  part(slot: number): number {
    return this.parts[slot >>> BITS]![slot & MASK]!;
  }

  cells(slot: number): number {
    return this.cellCol[slot >>> BITS]![slot & MASK]!;
  }

  mark(slot: number): number {
    return this.marks[slot >>> BITS]![slot & MASK]!;
  }

  /** Sets the mark, keeping `fresh` the number of FRESH slots. */
  setMark(slot: number, mark: number): void {
    const m = this.marks[slot >>> BITS]!;
    const was = m[slot & MASK]!;
    if (was === FRESH) this.fresh--;
    if (mark === FRESH) this.fresh++;
    m[slot & MASK] = mark;
  }

  /** Attempts of a counted shard (capped at 255; only its retries in the counts need it). */
  attempts(slot: number): number {
    return this.attemptCol[slot >>> BITS]![slot & MASK]!;
  }

  setAttempts(slot: number, attempts: number): void {
    this.attemptCol[slot >>> BITS]![slot & MASK] = Math.min(255, Math.max(0, attempts));
  }

  promptKey(slot: number): string {
    return this.keys.get(this.prompt(slot))!;
  }

  /** Every prompt key of the sweep. */
  promptKeys(): Iterable<string> {
    return this.keys.values();
  }

  shardId(slot: number): string {
    return `${this.sweepId}.${this.prompt(slot)}.${this.part(slot)}`;
  }
}

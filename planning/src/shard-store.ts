/**
 * The counted shards of one sweep's aggregate, in columns (issue 16): a slot per shard and a row per
 * cell in growable typed arrays, found by the plan's shard id `<sweep>.<prompt>.<part>` through a
 * per-prompt array of parts. A restart folds 1M results into it: one object and one string-keyed map
 * entry per shard cost that fold a third of its time in `add`, and a fifth in garbage collection.
 */
import type { StoredShard } from "./effects.js";

/** `heads` value of a whole-site cell. */
export const NO_HEAD = -1;

/** Parts of one prompt not counted yet are 0 in its slot array; a counted part holds slot + 1. */
const EMPTY = new Int32Array(0);

/**
 * Shards by slot (the order they were added) with their prompt-level values, and their cells:
 * site, layer, token, window, head, p, logit. A slot restored by id only (a state serialized without
 * cells) has no cells (`cellCount` −1).
 */
export class ShardStore {
  private readonly prefix: string;
  /** Slot + 1 by the id's part, per the id's prompt number. */
  private readonly byPrompt = new Map<number, Int32Array>();
  /** Ids not of the plan's form (another prefix, leading zeros, huge numbers): by id, rare. */
  private readonly odd = new Map<string, number>();
  /** The id of each slot: its prompt and part numbers, or −1 and the id in `oddIds`. */
  private idPrompt = new Int32Array(1024);
  private idPart = new Int32Array(1024);
  private readonly oddIds = new Map<number, string>();
  promptIndex = new Int32Array(1024);
  answerId = new Uint32Array(1024);
  pClean = new Float64Array(1024);
  pCorrupt = new Float64Array(1024);
  cellStart = new Int32Array(1024);
  cellCount = new Int32Array(1024);
  /** Slots in use. */
  size = 0;
  // uint32 in the protocol: unsigned columns, so any value comes back as it was sent.
  site = new Int32Array(1024);
  layer = new Uint32Array(1024);
  token = new Uint32Array(1024);
  window = new Uint32Array(1024);
  /** A head (uint32) or NO_HEAD. */
  head = new Float64Array(1024);
  p = new Float64Array(1024);
  logit = new Float64Array(1024);
  /** Cell rows in use. */
  cells = 0;

  /** `prefix` in UTF-8. */
  private readonly prefixBytes: Uint8Array;

  constructor(sweepId: string) {
    this.prefix = `${sweepId}.`;
    this.prefixBytes = new TextEncoder().encode(this.prefix);
  }

  /**
   * The part number of a plan-form id given as its UTF-8 bytes `bytes[start, end)` (the prompt number
   * left for `slotAt`/`addSlotAt`), or −1 for any other id: then use the id's string. Accepts exactly
   * the ids `parse` accepts.
   */
  parseBytes(bytes: Uint8Array, start: number, end: number): number {
    const pre = this.prefixBytes;
    if (end - start < pre.length) return -1;
    for (let k = 0; k < pre.length; k++) if (bytes[start + k] !== pre[k]) return -1;
    let i = start + pre.length;
    const s0 = i;
    let prompt = 0;
    for (; i < end; i++) {
      const c = bytes[i]! - 48;
      if (c < 0 || c > 9) break;
      prompt = prompt * 10 + c;
    }
    if (i === s0 || i - s0 > 9 || (bytes[s0] === 48 && i - s0 > 1) || i >= end || bytes[i] !== 46) return -1;
    const s1 = ++i;
    let part = 0;
    for (; i < end; i++) {
      const c = bytes[i]! - 48;
      if (c < 0 || c > 9) return -1;
      part = part * 10 + c;
    }
    if (i === s1 || i - s1 > 9 || (bytes[s1] === 48 && i - s1 > 1)) return -1;
    this.parsedPrompt = prompt;
    return part;
  }

  /** The slot of the plan-form id just parsed (`part` from parseBytes), or −1. */
  slotAt(part: number): number {
    const parts = this.byPrompt.get(this.parsedPrompt) ?? EMPTY;
    return part < parts.length ? parts[part]! - 1 : -1;
  }

  /** The slot of a shard id, or −1. */
  slotOf(id: string): number {
    const n = this.parse(id);
    return n < 0 ? (this.odd.get(id) ?? 0) - 1 : this.slotAt(n);
  }

  /** The prompt number of the last id `parse` accepted. */
  private parsedPrompt = 0;

  /**
   * The part number of a plan-form id `<prefix><prompt>.<part>` (canonical decimals below 2^31), its
   * prompt number left in `parsedPrompt`; −1 for any other id. Reads characters; no substring.
   */
  private parse(id: string): number {
    const pre = this.prefix;
    if (!id.startsWith(pre)) return -1;
    let i = pre.length;
    let prompt = 0;
    const s0 = i;
    for (; i < id.length; i++) {
      const c = id.charCodeAt(i) - 48;
      if (c < 0 || c > 9) break;
      prompt = prompt * 10 + c;
    }
    if (i === s0 || i - s0 > 9 || (id.charCodeAt(s0) === 48 && i - s0 > 1) || id.charCodeAt(i) !== 46) return -1;
    const s1 = ++i;
    let part = 0;
    for (; i < id.length; i++) {
      const c = id.charCodeAt(i) - 48;
      if (c < 0 || c > 9) return -1;
      part = part * 10 + c;
    }
    if (i === s1 || i - s1 > 9 || (id.charCodeAt(s1) === 48 && i - s1 > 1)) return -1;
    this.parsedPrompt = prompt;
    return part;
  }

  /** A new slot for an id not held (the caller checked with `slotOf`), without cells yet. */
  addSlot(id: string, promptIndex: number, answerId: number, pClean: number, pCorrupt: number): number {
    const part = this.parse(id);
    if (part >= 0) return this.addSlotAt(part, promptIndex, answerId, pClean, pCorrupt);
    const slot = this.newSlot(promptIndex, answerId, pClean, pCorrupt);
    this.odd.set(id, slot + 1);
    this.oddIds.set(slot, id);
    this.idPrompt[slot] = -1;
    this.idPart[slot] = -1;
    return slot;
  }

  /** {@link addSlot} of the plan-form id just parsed (`part` from parseBytes or parse). */
  addSlotAt(part: number, promptIndex: number, answerId: number, pClean: number, pCorrupt: number): number {
    const prompt = this.parsedPrompt;
    const slot = this.newSlot(promptIndex, answerId, pClean, pCorrupt);
    let parts = this.byPrompt.get(prompt) ?? EMPTY;
    if (part >= parts.length) {
      const next = new Int32Array(Math.max(part + 1, parts.length * 2, 16));
      next.set(parts);
      this.byPrompt.set(prompt, (parts = next));
    }
    parts[part] = slot + 1;
    this.idPrompt[slot] = prompt;
    this.idPart[slot] = part;
    return slot;
  }

  private newSlot(promptIndex: number, answerId: number, pClean: number, pCorrupt: number): number {
    const slot = this.size++;
    if (slot >= this.promptIndex.length) this.growSlots();
    this.promptIndex[slot] = promptIndex;
    this.answerId[slot] = answerId;
    this.pClean[slot] = pClean;
    this.pCorrupt[slot] = pCorrupt;
    this.cellStart[slot] = this.cells;
    this.cellCount[slot] = -1;
    return slot;
  }

  /** Sets a slot's prompt-level values (a state's shard given its cells after its id). */
  setShard(slot: number, promptIndex: number, answerId: number, pClean: number, pCorrupt: number): void {
    this.promptIndex[slot] = promptIndex;
    this.answerId[slot] = answerId;
    this.pClean[slot] = pClean;
    this.pCorrupt[slot] = pCorrupt;
  }

  /** Appends one cell to `slot`, which must be the last slot given cells (its cells are contiguous). */
  addCell(slot: number, site: number, layer: number, token: number, window: number, head: number, p: number, logit: number): void {
    const i = this.cells++;
    if (i >= this.p.length) this.growCells();
    if (this.cellCount[slot]! < 0) {
      this.cellStart[slot] = i;
      this.cellCount[slot] = 0;
    }
    this.cellCount[slot]!++;
    this.site[i] = site;
    this.layer[i] = layer;
    this.token[i] = token;
    this.window[i] = window;
    this.head[i] = head;
    this.p[i] = p;
    this.logit[i] = logit;
  }

  /** Marks a slot as having zero cells (a shard whose result named none). */
  emptyCells(slot: number): void {
    if (this.cellCount[slot]! < 0) {
      this.cellStart[slot] = this.cells;
      this.cellCount[slot] = 0;
    }
  }

  /** The shard id of a slot. */
  idOf(slot: number): string {
    const prompt = this.idPrompt[slot]!;
    return prompt < 0 ? this.oddIds.get(slot)! : `${this.prefix}${prompt}.${this.idPart[slot]}`;
  }

  /** Slots in shard-id order: by the id's prompt number, then part (ids of another form: the old numeric order of their last two fields). */
  *ordered(): Generator<number> {
    if (this.odd.size > 0) {
      const slots = Array.from({ length: this.size }, (_, i) => i);
      const ids = slots.map((i) => this.idOf(i));
      yield* slots.sort((a, b) => compareShardIds(ids[a]!, ids[b]!));
      return;
    }
    for (const prompt of [...this.byPrompt.keys()].sort((a, b) => a - b)) {
      const parts = this.byPrompt.get(prompt)!;
      for (let n = 0; n < parts.length; n++) if (parts[n]! > 0) yield parts[n]! - 1;
    }
  }

  /** A slot as the JSON state's StoredShard, or undefined for one without cells. */
  stored(slot: number): StoredShard | undefined {
    const n = this.cellCount[slot]!;
    if (n < 0) return undefined;
    const at = this.cellStart[slot]!;
    const cells: number[] = [];
    let heads: number[] | undefined;
    for (let i = at; i < at + n; i++) {
      cells.push(this.site[i]!, this.layer[i]!, this.token[i]!, this.window[i]!, this.p[i]!, this.logit[i]!);
      if (this.head[i] !== NO_HEAD) heads ??= [];
    }
    if (heads) for (let i = at; i < at + n; i++) heads.push(this.head[i]!);
    const s: StoredShard = {
      promptIndex: this.promptIndex[slot]!,
      answerId: this.answerId[slot]!,
      pClean: this.pClean[slot]!,
      pCorrupt: this.pCorrupt[slot]!,
      cells,
    };
    if (heads) s.heads = heads;
    return s;
  }

  private growSlots(): void {
    const n = this.promptIndex.length * 2;
    this.idPrompt = grow(this.idPrompt, n);
    this.idPart = grow(this.idPart, n);
    this.promptIndex = grow(this.promptIndex, n);
    this.answerId = grow(this.answerId, n);
    this.pClean = grow(this.pClean, n);
    this.pCorrupt = grow(this.pCorrupt, n);
    this.cellStart = grow(this.cellStart, n);
    this.cellCount = grow(this.cellCount, n);
  }

  private growCells(): void {
    const n = this.p.length * 2;
    this.site = grow(this.site, n);
    this.layer = grow(this.layer, n);
    this.token = grow(this.token, n);
    this.window = grow(this.window, n);
    this.head = grow(this.head, n);
    this.p = grow(this.p, n);
    this.logit = grow(this.logit, n);
  }
}

function grow<T extends Int32Array | Uint32Array | Float64Array>(a: T, n: number): T {
  const next = new (a.constructor as new (n: number) => T)(n);
  next.set(a);
  return next;
}

/** Order shard ids `<sweep>.<prompt>.<part>` numerically by prompt, then part. */
function compareShardIds(a: string, b: string): number {
  const pa = a.split(".");
  const pb = b.split(".");
  const na = Number(pa[pa.length - 2]) - Number(pb[pb.length - 2]);
  return na !== 0 ? na : Number(pa[pa.length - 1]) - Number(pb[pb.length - 1]);
}

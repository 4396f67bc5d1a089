/**
 * Reads the fields the trace aggregate needs straight from a stored `sweep.ShardResult`'s protobuf
 * encoding (proto/sweep.proto, engine.proto `Cell`), without making the decoded message: a restart
 * folds 1M stored results, and the generated decoder's objects and strings (agent, worker, lease
 * ids) were a fifth of that fold and much of its garbage. Only the common, well-formed form is read
 * here; anything else (groups, a known field with another wire type, a second `cell` in one
 * outcome, varints past 28 bits, a cut message) returns false so the caller decodes it the generated
 * way, which decides what such input means.
 */

/** One result's fields as read; the cell columns are reused from one read to the next. */
export class WireShardResult {
  sweepIdStart = 0;
  sweepIdEnd = 0;
  /** Where the shard id's UTF-8 bytes are in `bytes` (a plan-form id is found from them, with no string). */
  shardIdStart = 0;
  shardIdEnd = 0;
  promptIndex = 0;
  answerId = 0;
  pClean = 0;
  pCorrupt = 0;
  cells = 0;
  site = new Int32Array(64);
  layer = new Int32Array(64);
  token = new Int32Array(64);
  window = new Int32Array(64);
  /** −1: no head (the whole site). */
  head = new Int32Array(64);
  p = new Float64Array(64);
  logit = new Float64Array(64);

  /** The encoding read last. */
  bytes: Uint8Array = new Uint8Array(0);
  /** Over the whole buffer `bytes` lies in (a snapshot's results are views of one segment: one DataView for all). */
  private view: DataView = new DataView(new ArrayBuffer(0));
  private base = 0;
  private pos = 0;
  private static readonly utf8 = new TextDecoder();

  /** The shard id as a string (decoded as the generated decoder does). */
  get shardId(): string {
    return WireShardResult.utf8.decode(this.bytes.subarray(this.shardIdStart, this.shardIdEnd));
  }

  /** The little-endian double at `pos`. */
  private double(pos: number): number {
    return this.view.getFloat64(this.base + pos, true);
  }

  /** Reads `bytes`; false when it is not in the form read here. */
  read(bytes: Uint8Array): boolean {
    this.bytes = bytes;
    if (this.view.buffer !== bytes.buffer) this.view = new DataView(bytes.buffer);
    this.base = bytes.byteOffset;
    this.pos = 0;
    this.sweepIdStart = this.sweepIdEnd = this.shardIdStart = this.shardIdEnd = 0;
    this.promptIndex = this.answerId = this.cells = 0;
    this.pClean = this.pCorrupt = 0;
    const end = bytes.length;
    while (this.pos < end) {
      const tag = this.varint();
      if (tag <= 0) return false; // 0 ends the generated decoder's read early: its way
      switch (tag) {
        case 10: {
          const n = this.len();
          if (n < 0) return false;
          this.sweepIdStart = this.pos;
          this.pos = this.sweepIdEnd = this.pos + n;
          continue;
        }
        case 18: {
          const n = this.len();
          if (n < 0) return false;
          this.shardIdStart = this.pos;
          this.pos = this.shardIdEnd = this.pos + n;
          continue;
        }
        case 24:
          if ((this.promptIndex = this.varint()) < 0) return false;
          continue;
        case 48:
          if ((this.answerId = this.varint()) < 0) return false;
          continue;
        case 57:
          if (this.pos + 8 > end) return false;
          this.pClean = this.double(this.pos);
          this.pos += 8;
          continue;
        case 65:
          if (this.pos + 8 > end) return false;
          this.pCorrupt = this.double(this.pos);
          this.pos += 8;
          continue;
        case 74: {
          const n = this.len();
          if (n < 0 || !this.outcome(this.pos + n)) return false;
          continue;
        }
      }
      // Another field: skipped as the generated decoder skips it, unless it is one this reads with another wire type.
      const field = tag >>> 3;
      if ((field >= 1 && field <= 3) || (field >= 6 && field <= 9) || !this.skip(tag & 7)) return false;
    }
    return this.pos === end;
  }

  /** One CellOutcome ending at `end`: its cell and p, logit. */
  private outcome(end: number): boolean {
    const i = this.cells;
    if (i >= this.p.length) this.grow();
    let p = 0;
    let logit = 0;
    let cell = false;
    while (this.pos < end) {
      const tag = this.varint();
      if (tag === 10 && !cell) {
        const n = this.len();
        if (n < 0 || !this.cell(i, this.pos + n)) return false;
        cell = true;
      } else if (tag === 17 && this.pos + 8 <= end) {
        p = this.double(this.pos);
        this.pos += 8;
      } else if (tag === 25 && this.pos + 8 <= end) {
        logit = this.double(this.pos);
        this.pos += 8;
      } else if (tag < 0 || tag >>> 3 <= 3 || !this.skip(tag & 7)) return false;
    }
    if (!cell || this.pos !== end) return false;
    this.p[i] = p;
    this.logit[i] = logit;
    this.cells++;
    return true;
  }

  /** One engine.Cell ending at `end`, into cell row `i`. */
  private cell(i: number, end: number): boolean {
    let site = 0;
    let layer = 0;
    let token = 0;
    let window = 0;
    let head = -1;
    while (this.pos < end) {
      const tag = this.varint();
      let v: number;
      if (tag === 8 || tag === 16 || tag === 24 || tag === 32 || tag === 40) {
        if ((v = this.varint()) < 0) return false;
        if (tag === 8) site = v;
        else if (tag === 16) layer = v;
        else if (tag === 24) token = v;
        else if (tag === 32) window = v;
        else head = v;
      } else if (tag < 0 || tag >>> 3 <= 5 || !this.skip(tag & 7)) return false;
    }
    if (this.pos !== end) return false;
    this.site[i] = site;
    this.layer[i] = layer;
    this.token[i] = token;
    this.window[i] = window;
    this.head[i] = head;
    return true;
  }

  /** A varint of at most 4 bytes (below 2^28), or −1. */
  private varint(): number {
    const b = this.bytes;
    let v = 0;
    for (let shift = 0; shift < 28; shift += 7) {
      if (this.pos >= b.length) return -1;
      const x = b[this.pos++]!;
      v |= (x & 0x7f) << shift;
      if (x < 0x80) return v;
    }
    return -1;
  }

  /** A length that stays inside the message, or −1. */
  private len(): number {
    const n = this.varint();
    return n < 0 || this.pos + n > this.bytes.length ? -1 : n;
  }

  /** Skips a field's value of wire type `wt` (varint, 64-bit, length-delimited, 32-bit); false for groups or a cut value. */
  private skip(wt: number): boolean {
    const b = this.bytes;
    if (wt === 0) {
      while (this.pos < b.length && b[this.pos]! & 0x80) this.pos++;
      return ++this.pos <= b.length;
    }
    if (wt === 1) return (this.pos += 8) <= b.length;
    if (wt === 5) return (this.pos += 4) <= b.length;
    if (wt === 2) {
      const n = this.len();
      return n >= 0 && (this.pos += n) <= b.length;
    }
    return false;
  }

  /** True when the sweep id read is `expected` (its UTF-8 bytes). */
  sweepIdIs(expected: Uint8Array): boolean {
    const n = this.sweepIdEnd - this.sweepIdStart;
    if (n !== expected.length) return false;
    for (let k = 0; k < n; k++) if (this.bytes[this.sweepIdStart + k] !== expected[k]) return false;
    return true;
  }

  private grow(): void {
    const n = this.p.length * 2;
    const g = <T extends Int32Array | Float64Array>(a: T): T => {
      const next = new (a.constructor as new (n: number) => T)(n);
      next.set(a);
      return next;
    };
    this.site = g(this.site);
    this.layer = g(this.layer);
    this.token = g(this.token);
    this.window = g(this.window);
    this.head = g(this.head);
    this.p = g(this.p);
    this.logit = g(this.logit);
  }
}

/**
 * Aggregate snapshots of a sweep (issue 16): the results it has counted, stored as a few large
 * segments plus a manifest naming the aggregates bucket's stream sequence they cover, so a
 * restarted coordinator reads the segments and only the stored results after that sequence (the
 * tail) instead of one KV entry per result. The fold is idempotent by shard id (the aggregator
 * refuses a shard it holds), so a result both in a segment and in the tail counts once.
 *
 * Segment: concatenated `u32 big-endian length, ShardResult protobuf`. Manifest: JSON (in the
 * store's epoch envelope, written with CAS) `{ seq, runs: [{ epoch, count }], results }`; the
 * segments are `<sweep>.s.<epoch>.<n>`, n from 0 to count − 1 per run, in run order. A segment is
 * never rewritten by another epoch, so a fenced-off coordinator cannot spoil a newer one's.
 */

/** A sweep's snapshot manifest. */
export interface SnapshotManifest {
  /** Stream sequence of the aggregates bucket: every stored result of the sweep at or below it is in the segments. */
  seq: number;
  /** Segments in order, as runs of one coordinator epoch's numbered segments. */
  runs: { epoch: number; count: number }[];
  /** Results in all segments (checked on load). */
  results: number;
}

/** A segment's value stays well under NATS' default 1 MiB max_payload. */
export const SEGMENT_MAX_BYTES = 512 * 1024;

/** A stored snapshot that cannot be used (missing segment, bad framing, wrong count): the restart reads every stored result instead. */
export class SnapshotError extends Error {
  constructor(sweepId: string, detail: string) {
    super(`snapshot of sweep ${sweepId}: ${detail}`);
    this.name = "SnapshotError";
  }
}

/** Key of the manifest and of one segment. */
export const manifestKey = (sweepId: string): string => `${sweepId}.m`;
export const segmentKey = (sweepId: string, epoch: number, n: number): string => `${sweepId}.s.${epoch}.${n}`;

/** Packs results into segments of at most SEGMENT_MAX_BYTES (a larger single result gets a segment of its own). */
export function packSegments(results: Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let i = 0;
  while (i < results.length) {
    let size = 0;
    let j = i;
    while (j < results.length && (j === i || size + 4 + results[j]!.length <= SEGMENT_MAX_BYTES)) size += 4 + results[j++]!.length;
    const seg = new Uint8Array(size);
    const view = new DataView(seg.buffer);
    let at = 0;
    for (; i < j; i++) {
      const r = results[i]!;
      view.setUint32(at, r.length);
      seg.set(r, at + 4);
      at += 4 + r.length;
    }
    out.push(seg);
  }
  return out;
}

/** The results of one segment; a length running past its end is refused. */
export function unpackSegment(sweepId: string, key: string, seg: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  const view = new DataView(seg.buffer, seg.byteOffset, seg.byteLength);
  let at = 0;
  while (at < seg.length) {
    if (at + 4 > seg.length) throw new SnapshotError(sweepId, `segment ${key} is cut inside a length at byte ${at}`);
    const len = view.getUint32(at);
    if (at + 4 + len > seg.length) throw new SnapshotError(sweepId, `segment ${key}: a result of ${len} bytes at byte ${at} runs past its end (${seg.length})`);
    out.push(seg.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return out;
}

/** Key of a batch of stored results in the aggregates bucket (`StateStore.saveResults`): segment framing. */
export const batchKey = (sweepId: string, epoch: number, n: number): string => `${sweepId}.b.${epoch}.${n}`;

/**
 * Entries of a sweep's keys in the aggregates bucket as results with their stream sequence: a
 * batch's segment unpacked (each of its results at the batch's sequence), a result stored under its
 * shard id (before batches) as it is. A malformed batch is left out and logged: its shards have no
 * stored result, so a restart leases them again rather than count what cannot be read.
 */
export function unpackBatches(
  sweepId: string,
  entries: { key: string; value: Uint8Array; revision: number }[],
  log: (msg: string) => void = () => undefined,
): { value: Uint8Array; seq: number }[] {
  const out: { value: Uint8Array; seq: number }[] = [];
  const batch = `${sweepId}.b.`;
  for (const e of entries) {
    if (!e.key.startsWith(batch)) {
      out.push({ value: e.value, seq: e.revision });
      continue;
    }
    try {
      for (const value of unpackSegment(sweepId, e.key, e.value)) out.push({ value, seq: e.revision });
    } catch (err) {
      log(`stored result batch ${e.key} cannot be read (${(err as Error).message}): its results are left out, and their shards will be leased again`);
    }
  }
  return out;
}

/** Checks a manifest read from the store (outside input) before it is used. */
export function parseManifest(sweepId: string, data: unknown): SnapshotManifest {
  const m = data as Partial<SnapshotManifest> | null;
  const count = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
  if (!m || typeof m !== "object" || !count(m.seq) || !count(m.results) || !Array.isArray(m.runs)) {
    throw new SnapshotError(sweepId, "manifest is not { seq, runs, results }");
  }
  for (const r of m.runs as unknown[]) {
    const run = r as { epoch?: unknown; count?: unknown } | null;
    if (!run || !count(run.epoch) || !count(run.count)) throw new SnapshotError(sweepId, "manifest run is not { epoch, count }");
  }
  return { seq: m.seq, runs: m.runs.map((r) => ({ epoch: r.epoch, count: r.count })), results: m.results };
}

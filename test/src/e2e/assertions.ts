import assert from "node:assert/strict";
import { cellKey, type Cluster, type ResultRowJson } from "./cluster.js";

/**
 * Every planned cell is present exactly once, equal to the engine-alone reference, and the
 * results stream holds one message per shard (retries were deduplicated); with `retriedShards`,
 * at least one (a shard re-leased after its holder's result was refused or lost is published again
 * under its new attempt, and still counted once).
 */
export async function assertCompleteAndEqual(
  cluster: Cluster,
  sweepId: string,
  reference: Map<string, number>,
  shards: number,
  opts: { retriedShards?: boolean } = {},
): Promise<ResultRowJson[]> {
  const rows = await cluster.results(sweepId);
  const seen = new Map<string, number>();
  for (const r of rows) seen.set(cellKey(r), (seen.get(cellKey(r)) ?? 0) + 1);
  const dupes = [...seen].filter(([, n]) => n > 1);
  assert.deepEqual(dupes, [], "cells reported more than once");
  const missing = [...reference.keys()].filter((k) => !seen.has(k));
  assert.deepEqual(missing.slice(0, 10), [], `${missing.length} planned cells missing`);
  assert.equal(rows.length, reference.size, "rows beyond the planned cells");
  let worst = 0;
  for (const r of rows) worst = Math.max(worst, Math.abs(r.p - reference.get(cellKey(r))!));
  // Same engine and float32 on both sides; only the batch composition differs.
  assert.ok(worst <= 1e-6, `largest |p - reference| is ${worst}`);
  const stored = await cluster.storedResults(sweepId);
  if (opts.retriedShards) assert.ok(stored >= shards, `results stream holds ${stored} messages for ${shards} shards`);
  else assert.equal(stored, shards, "results stream should hold exactly one message per shard");
  return rows;
}

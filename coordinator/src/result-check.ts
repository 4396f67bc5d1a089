/**
 * What a ShardResult read from the results stream must be before it is aggregated. Anyone who can
 * publish on NATS can put a message on the results stream, so a result is taken only for a
 * planned shard, from the agent holding its current lease (lease_id), with exactly the
 * shard's planned cells (each once) and finite probabilities in [0, 1] (trace), or a parseable
 * `result_json` of bounded size (the other kinds). Everything else is refused with one of
 * {@link REJECT_REASONS}, counted, logged and dead-lettered by the results consumer.
 */
import type { sweep } from "@factsweep/proto";

/** Why a result was refused: the `reason` label of `factsweep_results_rejected_total` (a closed set). */
export const REJECT_REASONS = [
  "undecodable", // not a ShardResult protobuf
  "invalid_id", // sweep or shard id not a valid id/KV key, or the shard id not of the sweep
  "subject_mismatch", // published on another sweep's subject
  "unknown_sweep", // no such sweep on this coordinator
  "unplanned_shard", // the sweep planned no shard with this id
  "not_lease_holder", // lease_id is not the shard's current lease, or agent_id not its holder
  "wrong_prompt", // prompt_index is not the shard's prompt
  "cells_mismatch", // not exactly the planned cells, each once
  "bad_value", // p, logit, p_clean or p_corrupt not finite, or a probability outside [0, 1]
  "bad_result_json", // kinds other than trace: result_json missing, too large or not a JSON object; or cells given
  "invalid_result", // refused by the aggregator itself
] as const;

export type RejectReason = (typeof REJECT_REASONS)[number];

/** A refused result: the reason (a metric label) and a sentence for the log and the dead letter. */
export interface Rejection {
  reason: RejectReason;
  detail: string;
}

/** Largest `result_json` accepted (NATS's default max_payload is 1 MiB, so a message rarely holds more). */
export const MAX_RESULT_JSON_BYTES = 1024 * 1024;

/** Identity of a cell within a prompt; a per-head cell (engine.Cell.head) is another cell than its whole site. */
export const cellKey = (c: { site: number; layer: number; token: number; window: number; head?: number | undefined }): string =>
  `${c.site}/${c.layer}/${c.token}/${c.window}${c.head === undefined ? "" : `/h${c.head}`}`;

const isProbability = (x: number): boolean => Number.isFinite(x) && x >= 0 && x <= 1;

/**
 * Checks a result's content against its planned shard (lease and ids are checked by the caller);
 * undefined when it may be aggregated.
 */
export function checkResultContent(planned: sweep.Shard, r: sweep.ShardResult): Rejection | undefined {
  const id = r.shardId;
  const promptIndex = planned.prompt?.index ?? 0;
  if (r.promptIndex !== promptIndex) return { reason: "wrong_prompt", detail: `shard ${id}: prompt_index ${r.promptIndex}, planned ${promptIndex}` };
  if (!isProbability(r.pClean) || !isProbability(r.pCorrupt)) {
    return { reason: "bad_value", detail: `shard ${id}: p_clean ${r.pClean}, p_corrupt ${r.pCorrupt} (finite, in [0, 1])` };
  }
  const kind = planned.kind || "trace";
  if (kind !== "trace") {
    if (r.cells.length > 0) return { reason: "bad_result_json", detail: `shard ${id}: a ${kind} result carries ${r.cells.length} cells (none expected)` };
    if (Buffer.byteLength(r.resultJson, "utf8") > MAX_RESULT_JSON_BYTES) {
      return {
        reason: "bad_result_json",
        detail: `shard ${id}: result_json of ${Buffer.byteLength(r.resultJson, "utf8")} bytes (at most ${MAX_RESULT_JSON_BYTES})`,
      };
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(r.resultJson);
    } catch (err) {
      return { reason: "bad_result_json", detail: `shard ${id}: result_json is not JSON (${(err as Error).message})` };
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
      return { reason: "bad_result_json", detail: `shard ${id}: result_json is not a JSON object` };
    return undefined;
  }
  if (r.cells.length !== planned.cells.length) {
    return { reason: "cells_mismatch", detail: `shard ${id}: ${r.cells.length} cells, planned ${planned.cells.length}` };
  }
  const want = new Set(planned.cells.map(cellKey));
  const seen = new Set<string>();
  for (const c of r.cells) {
    if (!c.cell) return { reason: "cells_mismatch", detail: `shard ${id}: a cell outcome without its cell` };
    const k = cellKey(c.cell);
    if (!want.has(k)) return { reason: "cells_mismatch", detail: `shard ${id}: cell ${k} (site/layer/token/window[/head]) was not planned in this shard` };
    if (seen.has(k)) return { reason: "cells_mismatch", detail: `shard ${id}: cell ${k} given twice` };
    seen.add(k);
    if (!isProbability(c.p) || !Number.isFinite(c.logit))
      return { reason: "bad_value", detail: `shard ${id}: cell ${k} has p ${c.p}, logit ${c.logit} (finite, p in [0, 1])` };
  }
  return undefined;
}

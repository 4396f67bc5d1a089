/**
 * Effect maths of a sweep's results and the shapes of their aggregate (the aggregator itself is
 * aggregator.ts).
 *
 * Indirect effect of restoring one state (the paper's formula, DESIGN.md):
 *   IE = (p_restored − p_corrupt) / (p_clean − p_corrupt)
 * undefined (null) when p_clean == p_corrupt: the corruption did not move the answer, so there is
 * nothing to recover. ROME's unnormalised average effect is also reported:
 *   AIE = mean(p_restored) − mean(p_corrupt).
 */
import type { control, sweep } from "@factsweep/proto";
import { ResultError } from "./errors.js";
import { siteFromEnum, type SiteLabel, type SiteName } from "./sites.js";
import { GROUPS_BY_SCHEME, tokenGroup, tokenGroups, type TokenGroup, type TokenGroupScheme } from "./token-groups.js";

/** |p_clean − p_corrupt| below this makes IE undefined (division by ~0). */
export const IE_EPSILON = 1e-12;

/** IE = (p − p*) / (p_clean − p*); null when p_clean == p* (within {@link IE_EPSILON}). */
export function indirectEffect(p: number, pCorrupt: number, pClean: number): number | null {
  const denom = pClean - pCorrupt;
  if (!Number.isFinite(denom) || Math.abs(denom) < IE_EPSILON) return null;
  return (p - pCorrupt) / denom;
}

/** ROME's AIE = mean(p_restored) − mean(p_corrupt); NaN for empty input. */
export function averageIndirectEffect(pRestored: readonly number[], pCorrupt: readonly number[]): number {
  const mean = (xs: readonly number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
  return mean(pRestored) - mean(pCorrupt);
}

/** What the aggregator needs to know of each prompt (a subset of sweep.PromptSpec). */
export interface PromptMeta {
  index: number;
  numTokens: number;
  subjectStart: number;
  subjectEnd: number;
  subject: string;
}

/** Running sums of one (site, window, token group, layer) bucket. */
export interface Bucket {
  /** Cells counted. */
  n: number;
  sumP: number;
  sumPCorrupt: number;
  sumPClean: number;
  /** Sum of defined IEs and how many there were. */
  sumIE: number;
  nIE: number;
}

/** One shard's results, kept compactly: cells as flat [site, layer, token, window, p, logit] sextets. */
export interface StoredShard {
  promptIndex: number;
  answerId: number;
  pClean: number;
  pCorrupt: number;
  cells: number[] | null;
  /** Per cell, its head (engine.Cell.head) or −1 for the whole site; absent when no cell has a head (states written before heads existed). */
  heads?: number[];
}

/** A heatmap of one (site, window): mean IE and AIE per token group (rows) and layer (columns). */
export interface Heatmap {
  /** The site, or a head of it (`ssm.h3`). */
  site: SiteLabel;
  window: number;
  groups: TokenGroup[];
  layers: number[];
  /** meanIE[g][l]; null where no cell or no defined IE. */
  meanIE: (number | null)[][];
  /** ROME's AIE[g][l] = mean(p) − mean(p*); null where no cell. */
  aie: (number | null)[][];
  counts: number[][];
}

/** A result row (control.ResultRow) with its token group and IE. `ie` is NaN where undefined. */
export type ResultRow = control.ResultRow;

/** Totals of a sweep's aggregated results. */
export interface AggregateSummary {
  sweepId: string;
  shards: number;
  cells: number;
  prompts: number;
  meanPClean: number;
  meanPCorrupt: number;
  /** ROME's average total effect: mean(p_clean) − mean(p_corrupt) over prompts with results. */
  totalEffect: number;
  /** Per (site, window, group): the layer with the highest mean IE and its values. */
  peaks: { site: SiteLabel; window: number; group: TokenGroup; layer: number; meanIE: number | null; aie: number; n: number }[];
}

/** Serialized form of a {@link ResultAggregator} (JSON-safe). */
export interface AggregatorState {
  version: 1;
  sweepId: string;
  scheme: TokenGroupScheme;
  model: string;
  corruption: string;
  prompts: PromptMeta[];
  buckets: [string, Bucket][];
  /** Prompt-level probabilities by prompt index: [index, pClean, pCorrupt, answerId]. */
  promptProbs: [number, number, number, number][];
  shardIds: string[];
  /** Distinct cells added. */
  cellCount: number;
  /** Per-shard cells; absent when serialized with `{ cells: false }`. */
  shards?: [string, StoredShard][];
}

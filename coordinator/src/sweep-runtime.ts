/**
 * Bridges to the planning and aggregation of @factsweep/shared: the only file that calls
 * `planSweep` and `ResultAggregator`, so a change of their shapes is adapted here alone.
 */
import type { control, sweep } from "@factsweep/proto";
import * as shared from "@factsweep/shared";
import { planSweep, type SweepSpec } from "@factsweep/shared";

/** A planned sweep: prompts (with per-prompt errors) and shards. */
export interface Plan {
  model: sweep.ModelRef;
  prompts: sweep.PromptSpec[];
  promptErrors: { index: number; message: string }[];
  shards: sweep.Shard[];
  plannedCells: number;
}

/** Plans the sweep (tokenization, subject spans, swap partners, grid, shards). */
export function plan(spec: SweepSpec, sweepId: string): Plan {
  const p = planSweep(spec, sweepId);
  return { model: p.model, prompts: p.prompts, promptErrors: p.promptErrors, shards: p.shards, plannedCells: p.plannedCells };
}

/** What the coordinator uses of a sweep's aggregator. */
export interface Aggregator {
  /** false when the shard was already aggregated (a duplicate). */
  add(result: sweep.ShardResult): boolean;
  rows(): unknown[];
  summary(): unknown;
  toJSON(): unknown;
}

interface AggregatorClass {
  new (opts: unknown): Aggregator;
  fromJSON(json: unknown): Aggregator;
}

// Resolved at run time while shared-lib's ResultAggregator is being written, so the coordinator builds without it.
function aggregatorClass(): AggregatorClass {
  const cls = (shared as unknown as Record<string, unknown>).ResultAggregator as AggregatorClass | undefined;
  if (!cls) throw new Error("@factsweep/shared does not export ResultAggregator yet; rebuild shared (npx tsc -b)");
  return cls;
}

/** A new, empty aggregator for a sweep's prompts. */
export function newAggregator(spec: SweepSpec, sweepId: string, prompts: sweep.PromptSpec[]): Aggregator {
  return new (aggregatorClass())({ sweepId, prompts, tokenGroups: spec.token_groups, spec });
}

/** Restores an aggregator from its snapshot. */
export function aggregatorFromJSON(json: unknown): Aggregator {
  return aggregatorClass().fromJSON(json);
}

/** The aggregator's per-cell rows as ResultRows of the Results RPC. */
export function resultRows(agg: Aggregator, sweepId: string, modelId: string, corruption: string): control.ResultRow[] {
  return agg.rows().map((x) => {
    const r = x as Record<string, unknown>;
    const num = (k: string) => Number(r[k] ?? 0);
    const str = (k: string) => String(r[k] ?? "");
    return {
      sweepId, model: modelId, promptIndex: num("promptIndex"), subject: str("subject"), site: str("site"), layer: num("layer"), token: num("token"),
      window: num("window"), tokenGroup: str("tokenGroup"), p: num("p"), pClean: num("pClean"), pCorrupt: num("pCorrupt"), ie: num("ie"), corruption,
    };
  });
}

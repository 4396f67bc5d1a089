/**
 * Bridges to the planning and aggregation of @factsweep/shared: the only file that calls
 * `planSweep` and `ResultAggregator`, so a change of their shapes is adapted here alone.
 */
import { control, sweep } from "@factsweep/proto";
import { planSweep, readModelConfig, ResultAggregator, type SweepSpec } from "@factsweep/shared";

/** A planned sweep: prompts (with per-prompt errors) and shards. */
export interface Plan {
  prompts: sweep.PromptSpec[];
  promptErrors: { index: number; message: string }[];
  shards: sweep.Shard[];
  plannedCells: number;
}

/** Plans the sweep (tokenization, subject spans, swap partners, grid, shards). */
export async function plan(spec: SweepSpec, sweepId: string): Promise<Plan> {
  const p = await planSweep(spec, sweepId, { readModelConfig });
  return { prompts: p.prompts, promptErrors: p.promptErrors, shards: p.shards, plannedCells: p.plannedCells };
}

/** The aggregator of one sweep. */
export type Aggregator = ResultAggregator;

/** A new, empty aggregator for a sweep's prompts. */
export function newAggregator(spec: SweepSpec, prompts: sweep.PromptSpec[]): Aggregator {
  return new ResultAggregator({ prompts, tokenGroups: spec.token_groups });
}

/** Restores an aggregator from its snapshot. */
export function aggregatorFromJSON(json: unknown): Aggregator {
  return ResultAggregator.fromJSON(json as never);
}

/** The aggregator's per-cell rows as ResultRows of the Results RPC. */
export function resultRows(agg: Aggregator, sweepId: string, modelId: string, corruption: string): control.ResultRow[] {
  return agg.rows().map((r: any) => ({
    sweepId, model: modelId, promptIndex: r.promptIndex, subject: r.subject ?? "", site: r.site, layer: r.layer, token: r.token,
    window: r.window, tokenGroup: r.tokenGroup ?? "", p: r.p, pClean: r.pClean, pCorrupt: r.pCorrupt, ie: r.ie, corruption,
  }));
}

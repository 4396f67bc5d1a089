/**
 * Planning a sweep: the spec schema, datasets and tokenization, prompts, grid expansion and
 * sharding, token groups, effect maths and aggregation, and one module per experiment kind.
 * Used by the coordinator (launch, aggregation) and sweepctl (plans, reports).
 *
 * @example
 * import { parseSweepSpec, planSweep, ResultAggregator } from "@factsweep/planning";
 * const spec = parseSweepSpec(await readFile("demo.yaml", "utf8"), { baseDir: dirname("demo.yaml") });
 * const plan = planSweep(spec, "demo-1");          // reads config.json and tokenizer.json
 * console.log(plan.plannedCells, plan.shards.length, plan.promptErrors);
 * const agg = new ResultAggregator({ sweepId: "demo-1", prompts: plan.prompts, model: spec.model.id });
 * agg.add(shardResult);                            // idempotent by shard id
 * const map = agg.heatmap("residual", 1);          // mean IE per token group × layer
 */
export * from "./errors.js";
export * from "./limits.js";
export * from "./files.js";
export * from "./sites.js";
export * from "./token-groups.js";
export * from "./spec.js";
export * from "./model-config.js";
export * from "./fingerprint.js";
export * from "./tokenizer.js";
export * from "./datasets.js";
export * from "./prompts.js";
export * from "./random.js";
export * from "./progress.js";
export * from "./grid.js";
export * from "./plan.js";
export * from "./effects.js";
export * from "./aggregator.js";
export * from "./trace-view.js";
export * from "./kinds/index.js";
export * from "./kinds/aggregate.js";

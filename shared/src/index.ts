/**
 * Library shared by the coordinator and the node agents: NATS and metric names, the sweep spec
 * schema, datasets and tokenization, grid expansion and sharding, token groups, effect maths and
 * aggregation, the engine worker protocol client, an embedded nats-server launcher, and the
 * metrics/health HTTP server. See shared/README.md.
 *
 * @example
 * import { parseSweepSpec, planSweep, ResultAggregator, startNatsServer, EngineClient } from "@factsweep/shared";
 *
 * // coordinator: spec → prompts → shards
 * const spec = parseSweepSpec(await readFile("demo.yaml", "utf8"), { baseDir: dirname("demo.yaml") });
 * const plan = planSweep(spec, "demo-1");          // reads config.json and tokenizer.json
 * console.log(plan.plannedCells, plan.shards.length, plan.promptErrors);
 * const agg = new ResultAggregator({ sweepId: "demo-1", prompts: plan.prompts, model: spec.model.id });
 * agg.add(shardResult);                            // idempotent by shard id
 * const map = agg.heatmap("residual", 1);          // mean IE per token group × layer
 *
 * // tests / embedded mode: a real nats-server -js on a free loopback port
 * const nats = await startNatsServer();
 * // ... connect({ servers: nats.url }) ...
 * await nats.stop();
 *
 * // node agent: one engine worker per GPU
 * const client = new EngineClient({ stdin: child.stdin!, stdout: child.stdout! });
 * await client.hello();
 */
export * from "./nats-names.js";
export * from "./metric-names.js";
export * from "./errors.js";
export * from "./nats-server.js";
export * from "./engine-framing.js";
export * from "./engine-client.js";
export * from "./sites.js";
export * from "./token-groups.js";
export * from "./spec.js";
export * from "./model-config.js";
export * from "./tokenizer.js";
export * from "./datasets.js";
export * from "./prompts.js";
export * from "./grid.js";
export * from "./effects.js";
export * from "./kinds/index.js";
export * from "./metrics.js";
export * from "./http.js";

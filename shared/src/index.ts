/**
 * Library shared by the coordinator and the node agents: names, spec schema, grid and sharding,
 * token groups, effect maths, tokenizer, engine framing, metrics helpers.
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

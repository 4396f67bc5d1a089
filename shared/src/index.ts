/**
 * What the coordinator and the node agents both use: NATS subject and stream names, metric names
 * and the Prometheus registry helper, the metrics/health HTTP server, the error base class, and
 * the loopback-address check.
 * Planning (specs, datasets, grids, kinds) is `@factsweep/planning`; the engine client lives in
 * the node agent; the embedded nats-server and test doubles in `@factsweep/testing`.
 */
export * from "./nats-names.js";
export * from "./metric-names.js";
export * from "./errors.js";
export * from "./metrics.js";
export * from "./http.js";
export * from "./net.js";
export * from "./covariance.js";

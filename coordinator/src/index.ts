/**
 * The factsweep coordinator: sweep planning, leases to node agents, results aggregation, state in
 * JetStream KV, and the gRPC/HTTP surface. Process: `factsweep-coordinator` (main.ts); `sweepctl`
 * (package @factsweep/sweepctl) starts one in-process with `Coordinator.start`.
 *
 * @example
 * import { Coordinator } from "@factsweep/coordinator";
 * const coord = await Coordinator.start({ natsUrl: "nats://127.0.0.1:4222", grpcPort: 7070, modelRoots: ["/models"] });
 * const info = await coord.launch({ spec: yamlText, sweepId: "", specDir: process.cwd() });
 * // ... agents connect and run the shards ...
 * await coord.stop();
 */
export { Coordinator, type CoordinatorOptions, type TlsFiles } from "./coordinator.js";
export { LeaseTable, type ShardEntry, type ShardState, type Grant, type Changes } from "./lease-table.js";
export { StateStore, type SweepRecord, type ShardRecord, type SweepState } from "./state-store.js";
export { ResultsConsumer, ensureResultsStream, RESULTS_DUPLICATE_WINDOW_MS } from "./results-consumer.js";
export * from "./errors.js";

/**
 * The factsweep node agent as a library (the process is `factsweep-agent`, src/main.ts).
 *
 * @example
 * import { Agent, discoverSlots, createLogger } from "@factsweep/node-agent";
 * const { slots } = await discoverSlots({ cpu: true, workers: 2 });
 * const agent = new Agent({ agentId: "a1", coordinator: "127.0.0.1:7070", natsUrl: "nats://127.0.0.1:4222",
 *   slots, engineCommand: { file: "/usr/bin/python3", args: ["-m", "engine"], env: { PYTHONPATH: repoRoot } },
 *   httpPort: 0, log: createLogger("agent") });
 * await agent.start();
 */
export * from "./errors.js";
export * from "./gpu-discovery.js";
export * from "./engine-supervisor.js";
export * from "./shard-runner.js";
export * from "./result-publisher.js";
export * from "./metrics.js";
export * from "./log.js";
export * from "./agent.js";
export * from "./coordinator-link.js";
export * from "./engine-errors.js";
export * from "./engine-framing.js";
export * from "./engine-client.js";

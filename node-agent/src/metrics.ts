/**
 * The agent's Prometheus metrics (names from METRICS in @factsweep/shared). Labels are bounded:
 * at most the worker slot name, never prompt, layer or token.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { METRICS } from "@factsweep/shared";

/** The metrics one agent updates. */
export interface AgentMetrics {
  registry: Registry;
  shardDuration: Histogram<"outcome">;
  engineBatch: Histogram;
  cacheHits: Counter;
  cacheMisses: Counter;
  cacheBytes: Gauge<"worker">;
  publishLatency: Histogram;
  workerRestarts: Counter<"worker">;
  workersReady: Gauge;
  gpuMemoryBytes: Gauge<"worker">;
  cellsComputed: Counter;
  covariances: Counter<"source">;
  workerBusyRatio: Gauge<"worker">;
  /** Read at each scrape for `workerBusyRatio` (set by the EngineSupervisor). */
  busyRatioSource?: () => { worker: string; ratio: number }[];
}

/** Registers the agent metrics on `registry` (a fresh one by default). */
export function createAgentMetrics(registry: Registry = new Registry()): AgentMetrics {
  const registers = [registry];
  const metrics: AgentMetrics = {
    registry,
    shardDuration: new Histogram({
      name: METRICS.shardDuration,
      help: "Time from starting a leased shard to its result being published, by outcome (done, failed, cancelled)",
      labelNames: ["outcome"],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
      registers,
    }),
    engineBatch: new Histogram({
      name: METRICS.engineBatch,
      help: "Engine compute seconds of one RunCells batch, as the worker reports it",
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    cacheHits: new Counter({ name: METRICS.cacheHits, help: "PreparePrompt answered from the worker's cache of clean/corrupted runs", registers }),
    cacheMisses: new Counter({ name: METRICS.cacheMisses, help: "PreparePrompt that had to compute the clean/corrupted runs", registers }),
    cacheBytes: new Gauge({ name: METRICS.cacheBytes, help: "Bytes held in a worker's prompt cache", labelNames: ["worker"], registers }),
    publishLatency: new Histogram({
      name: METRICS.publishLatency,
      help: "JetStream publish round trip of a ShardResult (the successful attempt)",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    workerRestarts: new Counter({ name: METRICS.workerRestarts, help: "Engine worker processes restarted after they died", labelNames: ["worker"], registers }),
    workersReady: new Gauge({ name: METRICS.workersReady, help: "Engine workers that completed their handshake and are running", registers }),
    gpuMemoryBytes: new Gauge({ name: METRICS.gpuMemoryBytes, help: "Device memory a worker uses (engine Stats)", labelNames: ["worker"], registers }),
    cellsComputed: new Counter({ name: METRICS.agentCellsTotal, help: "Cells computed by this agent's workers", registers }),
    covariances: new Counter({
      name: METRICS.agentCovariances,
      help: "ROME covariances an edit shard used: fetched from the object store, or this agent process' local copy",
      labelNames: ["source"],
      registers,
    }),
    workerBusyRatio: new Gauge({
      name: METRICS.workerBusyRatio,
      help: "Share of the last 60 s in which a worker had an engine request in flight (its engine busy; requests are served in order)",
      labelNames: ["worker"],
      registers,
      collect() {
        for (const { worker, ratio } of metrics.busyRatioSource?.() ?? []) this.set({ worker }, ratio);
      },
    }),
  };
  for (const source of ["fetched", "local"]) metrics.covariances.inc({ source }, 0);
  return metrics;
}

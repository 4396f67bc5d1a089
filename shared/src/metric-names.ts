/**
 * Prometheus metric names (prom-client). Dashboards and alert rules in `dashboards/` use exactly
 * these; no per-prompt, per-layer or per-token labels (cardinality stays bounded).
 */
export const METRICS = {
  // coordinator
  cellsTotal: "factsweep_cells_total", // counter {status="done"|"failed"}
  cellsPlanned: "factsweep_cells_planned", // gauge {sweep}
  shardsTotal: "factsweep_shards_total", // counter {status="done"|"failed"|"retried"}
  shardsInFlight: "factsweep_shards_in_flight", // gauge
  queueDepth: "factsweep_queue_depth", // gauge: shards waiting for a lease
  leaseExpirations: "factsweep_lease_expirations_total", // counter
  retries: "factsweep_shard_retries_total", // counter
  agentsConnected: "factsweep_agents_connected", // gauge
  sweepsActive: "factsweep_sweeps_active", // gauge
  sweepProgress: "factsweep_sweep_progress_ratio", // gauge {sweep}: done / planned cells
  resultsConsumed: "factsweep_results_consumed_total", // counter {duplicate="true"|"false"}
  resultsRejected: "factsweep_results_rejected_total", // counter {reason}: refused results, each dead-lettered (reasons: coordinator/src/result-check.ts)
  leaseReportsIgnored: "factsweep_lease_reports_ignored_total", // counter {report="done"|"failed"}: for a lease the agent does not hold
  shardsUncounted: "factsweep_shards_uncounted_total", // counter: reported done, no result counted in time, re-queued
  covariances: "factsweep_covariances_total", // counter {source="computed"}: ROME covariances merged from their shards and stored
  // agent
  shardDuration: "factsweep_shard_duration_seconds", // histogram
  engineBatch: "factsweep_engine_batch_seconds", // histogram
  cacheHits: "factsweep_cache_hits_total", // counter
  cacheMisses: "factsweep_cache_misses_total", // counter
  cacheBytes: "factsweep_cache_bytes", // gauge {worker}
  publishLatency: "factsweep_publish_seconds", // histogram: JetStream publish round trip
  workerRestarts: "factsweep_worker_restarts_total", // counter
  workersReady: "factsweep_workers_ready", // gauge
  gpuMemoryBytes: "factsweep_gpu_memory_used_bytes", // gauge {worker}
  agentCellsTotal: "factsweep_agent_cells_total", // counter: cells computed by this agent
  agentCovariances: "factsweep_agent_covariances_total", // counter {source="fetched"|"local"}: ROME covariances an edit used, from the object store or this agent's disk copy
  workerBusyRatio: "factsweep_agent_worker_busy_ratio", // gauge {worker}: share of the last 60 s with an engine request in flight
} as const;

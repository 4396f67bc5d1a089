/** Names of everything factsweep keeps in NATS. One place, so coordinator and agents agree. */

/** JetStream stream holding every ShardResult; subjects `factsweep.results.<sweep_id>`. */
export const RESULTS_STREAM = "FACTSWEEP_RESULTS";
export const RESULTS_SUBJECT_PREFIX = "factsweep.results";
export const resultsSubject = (sweepId: string): string => `${RESULTS_SUBJECT_PREFIX}.${sweepId}`;
/**
 * `Nats-Msg-Id` of a shard's result: the shard id and the attempt, so JetStream stores a retried
 * publish of one attempt once, while a later attempt (the shard re-leased after its first result was
 * refused or lost) is stored too; the coordinator counts a shard once whatever arrives.
 */
export const resultMsgId = (shardId: string, attempt: number): string => `${shardId}/${attempt}`;

/** Durable consumer the coordinator reads results with (survives coordinator restarts). */
export const RESULTS_CONSUMER = "coordinator-aggregator";

/** Progress events (core NATS, best effort): `factsweep.events.<sweep_id>`. */
export const EVENTS_SUBJECT_PREFIX = "factsweep.events";

/** JetStream KV buckets: sweep records (spec, state, prompts) and shard records (state, attempts, lease). */
export const SWEEPS_BUCKET = "factsweep-sweeps";
export const SHARDS_BUCKET = "factsweep-shards";
/** Aggregated per-sweep results (incremental sums), so a restarted coordinator does not re-read. */
export const AGGREGATES_BUCKET = "factsweep-aggregates";
/**
 * Aggregate snapshots: per sweep a manifest `<sweep>.m` (the aggregates bucket's stream sequence it
 * covers) and segments `<sweep>.s.<epoch>.<n>` of stored results, so a restart reads a few large
 * values and only the results stored after that sequence (coordinator/README.md, "Snapshots").
 */
export const SNAPSHOTS_BUCKET = "factsweep-snapshots";
/** The object store of ROME key covariances: `COVARIANCE_BUCKET` in covariance.ts. */

/**
 * Runs one leased shard on one engine worker and publishes its ShardResult to JetStream: the one
 * place that picks the runner by `shard.kind` (`trace` or empty: src/trace-runner.ts; knockout,
 * sever, lre, edit: src/experiment-runner.ts). Both run in the worker-session loop of
 * src/worker-session.ts (model loaded once per worker, lost workers waited for, typed errors).
 */
import { runExperimentShard } from "./experiment-runner.js";
import { runTraceShard } from "./trace-runner.js";
import { refreshWorkerStats, type ShardOutcome, type ShardRunOptions } from "./worker-session.js";

export { promptKeyOf, refreshWorkerStats, type ShardOutcome, type ShardRunOptions } from "./worker-session.js";

/**
 * Runs `shard` to completion and publishes its result; then refreshes the worker's cache stats (a
 * Stats request, served in order after whatever the next shard on that worker has already sent).
 * @throws ShardError (`retryable` false for input faults), ShardCancelledError when `signal` aborts.
 */
export async function runShard(opts: ShardRunOptions): Promise<ShardOutcome> {
  const run = !opts.shard.kind || opts.shard.kind === "trace" ? runTraceShard : runExperimentShard;
  const outcome = await run(opts);
  void refreshWorkerStats(opts.worker, opts.metrics);
  return outcome;
}

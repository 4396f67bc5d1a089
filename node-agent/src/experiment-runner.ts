/**
 * The experiment runner: a shard of an experiment kind (knockout, sever, lre, edit) is one
 * RunExperiment with the shard's params_json, after PreparePrompt for the kinds that work on a
 * prepared prompt (knockout, sever); its ShardResult carries result_json (cells empty). A worker
 * lost mid-shard is waited for and the experiment re-run on it (the shared session loop).
 */
import type { engine } from "@factsweep/proto";
import { ShardError } from "./errors.js";
import { WorkerSession, type ShardOutcome, type ShardRunOptions } from "./worker-session.js";

/** Kinds whose experiment reads a prepared prompt's cached runs. */
const NEEDS_PROMPT = new Set(["knockout", "sever"]);

/**
 * Runs an experiment shard to completion and publishes its result.
 * @throws ShardError (`retryable` false for input faults), ShardCancelledError when `signal` aborts.
 */
export async function runExperimentShard(opts: ShardRunOptions): Promise<ShardOutcome> {
  const s = new WorkerSession(opts);
  const { kind, shardId, paramsJson } = s.shard;
  const units = s.shard.units || 1; // set by the planner; shards stored before the field existed count 1
  // ROME covariance once per cluster: an edit's C fetched, a covariance shard's moment file named (edit only).
  let prepared: Awaited<ReturnType<NonNullable<ShardRunOptions["covariances"]>["prepare"]>> = { paramsJson };
  if (kind === "edit" && opts.covariances) {
    try {
      prepared = await opts.covariances.prepare(paramsJson);
    } catch (err) {
      throw new ShardError(shardId, true, `shard ${shardId}: its ROME covariance: ${(err as Error).message}`, { cause: err });
    }
  }

  const out: engine.ExperimentResult = await s.run(
    async () => {
      if (NEEDS_PROMPT.has(kind)) await s.prepare();
      s.throwIfCancelled();
      const call = s.client.runExperiment(
        { modelId: s.model.modelId, kind, promptKey: s.promptKey, paramsJson: prepared.paramsJson },
        { timeoutMs: s.timeoutMs },
      );
      s.lastCallSent();
      const r = await call;
      s.recordWork(r.seconds, units, units);
      return r;
    },
    () => ({ running: `${kind} shard ${shardId}`, rerun: `the ${kind} shard` }),
  );

  if (prepared.finish) {
    try {
      await prepared.finish(out.resultJson); // the part is stored before the result that announces it
    } catch (err) {
      throw new ShardError(shardId, true, `shard ${shardId}: uploading its covariance part: ${(err as Error).message}`, { cause: err });
    }
  }
  const info = s.promptInfo;
  return s.publish(
    s.result({
      answerId: info?.answerId ?? 0,
      pClean: info?.pClean ?? 0,
      pCorrupt: info?.pCorrupt ?? 0,
      cells: [],
      engineSeconds: out.seconds,
      resultJson: out.resultJson,
    }),
  );
}

/**
 * Runs one leased shard of an experiment kind (knockout, sever, lre, edit) on one engine worker:
 * LoadModel (once per worker and model), PreparePrompt for the kinds that work on a prepared prompt
 * (knockout, sever), then one RunExperiment with the shard's params_json, and publishes the
 * ShardResult with result_json (cells empty). A worker lost mid-shard is waited for and the shard
 * re-run on it; an INVALID_ARGUMENT from the engine fails the shard as not retryable.
 */
import type { engine, sweep } from "@factsweep/proto";
import { type EngineClient } from "./engine-client.js";
import { ShardCancelledError, ShardError } from "./errors.js";
import { ensureModel, shardFailure, workerLost } from "./worker-session.js";
import type { ShardOutcome, ShardRunOptions } from "./shard-runner.js";

/** Kinds whose experiment reads a prepared prompt's cached runs. */
const NEEDS_PROMPT = new Set(["knockout", "sever"]);

/**
 * Runs an experiment shard to completion and publishes its result.
 * @throws ShardError (`retryable` false for input faults), ShardCancelledError when `signal` aborts.
 */
export async function runExperimentShard(opts: ShardRunOptions): Promise<ShardOutcome> {
  const { shard, worker, metrics, signal } = opts;
  const log = opts.log.child(`[shard ${shard.shardId}]`);
  const prompt = shard.prompt!;
  const model = shard.model!;
  const promptKey = prompt.promptKey || `${shard.sweepId}/${prompt.index}`;
  const timeoutMs = opts.requestTimeoutMs ?? 600_000;
  const maxLosses = opts.maxWorkerLosses ?? 2;
  const units = shard.units || 1; // set by the planner; shards stored before the field existed count 1
  let info: engine.PromptInfo | undefined;
  let out: engine.ExperimentResult | undefined;
  let losses = 0;
  const cancelled = () => new ShardCancelledError(shard.shardId, String(signal?.reason ?? "cancelled"));

  while (!out) {
    if (signal?.aborted) throw cancelled();
    let client: EngineClient;
    const waitMs = opts.workerReadyTimeoutMs ?? 300_000;
    try {
      client = await worker.whenReady(signal ? AbortSignal.any([signal, AbortSignal.timeout(waitMs)]) : AbortSignal.timeout(waitMs));
    } catch (err) {
      if (signal?.aborted) throw cancelled();
      throw new ShardError(shard.shardId, true, `worker ${worker.name} unavailable (${(err as Error).message}); handing shard ${shard.shardId} back`, { cause: err });
    }
    const generation = worker.generation;
    try {
      await ensureModel(worker, client, model, timeoutMs);
      if (NEEDS_PROMPT.has(shard.kind)) {
        info = await client.preparePrompt(
          { modelId: model.modelId, promptKey, inputIds: prompt.inputIds, subjectStart: prompt.subjectStart, subjectEnd: prompt.subjectEnd, corruption: prompt.corruption, answerId: prompt.answerId },
          { timeoutMs },
        );
        (info.cacheHit ? metrics.cacheHits : metrics.cacheMisses).inc();
        worker.cachedPrompts.set(promptKey, info.cacheBytes);
      }
      if (signal?.aborted) throw cancelled();
      out = await client.runExperiment({ modelId: model.modelId, kind: shard.kind, promptKey, paramsJson: shard.paramsJson }, { timeoutMs });
      metrics.engineBatch.observe(out.seconds);
      metrics.cellsComputed.inc(units);
      opts.onProgress?.(units);
    } catch (err) {
      if (err instanceof ShardError || err instanceof ShardCancelledError) throw err;
      if (signal?.aborted) throw cancelled();
      if (workerLost(err, worker, generation, log)) {
        if (++losses > maxLosses) {
          throw new ShardError(shard.shardId, true, `worker ${worker.name} was lost ${losses} times while running ${shard.kind} shard ${shard.shardId}; handing it back`, { cause: err });
        }
        log.warn(`worker ${worker.name} lost (${(err as Error).message}); re-running the ${shard.kind} shard after it restarts`);
        continue;
      }
      throw shardFailure(shard.shardId, err);
    }
  }

  const result: sweep.ShardResult = {
    sweepId: shard.sweepId,
    shardId: shard.shardId,
    promptIndex: prompt.index,
    agentId: opts.agentId,
    attempt: shard.attempt,
    answerId: info?.answerId ?? 0,
    pClean: info?.pClean ?? 0,
    pCorrupt: info?.pCorrupt ?? 0,
    cells: [],
    engineSeconds: out.seconds,
    worker: worker.name,
    resultJson: out.resultJson,
  };
  const published = await opts.publisher.publish(result, signal);
  if (published.duplicate) log.info(`result was already in JetStream (seq ${published.seq}); deduplicated by shard id`);
  return { result, published };
}

/**
 * Runs one leased shard on one engine worker: LoadModel (once per worker process and model),
 * PreparePrompt (the worker caches the clean and corrupted runs), RunCells in bounded batches,
 * then publishes the ShardResult to JetStream. Cells computed before a worker died are kept: after
 * the restart only the remaining cells run (after re-preparing the prompt the new process lacks).
 */
import { engine, sweep } from "@factsweep/proto";
import { EngineRequestError } from "./engine-errors.js";
import { type EngineClient } from "./engine-client.js";
import type { EngineWorker } from "./engine-supervisor.js";
import { runExperimentShard } from "./experiment-runner.js";
import { ShardCancelledError, ShardError } from "./errors.js";
import { ensureModel, shardFailure, workerLost } from "./worker-session.js";
import type { Logger } from "./log.js";
import type { AgentMetrics } from "./metrics.js";
import type { Published, ResultPublisher } from "./result-publisher.js";

/** Options of {@link runShard}. */
export interface ShardRunOptions {
  shard: sweep.Shard;
  worker: EngineWorker;
  publisher: ResultPublisher;
  agentId: string;
  metrics: AgentMetrics;
  log: Logger;
  /** Cells per RunCells request. Default 64. */
  batchSize?: number;
  /** Worker deaths tolerated during one shard before it is handed back (retryable). Default 2. */
  maxWorkerLosses?: number;
  /** How long to wait for a dead worker to come back before handing the shard back. Default 5 min. */
  workerReadyTimeoutMs?: number;
  /** Per engine request; a worker that does not answer in time is killed and restarted. Default 10 min. */
  requestTimeoutMs?: number;
  /** Aborting stops after the current engine request; nothing is published. */
  signal?: AbortSignal;
  /** Cells finished so far (for heartbeats). */
  onProgress?: (cellsDone: number) => void;
}

/** A shard that ran and whose result JetStream acknowledged. */
export interface ShardOutcome {
  result: sweep.ShardResult;
  published: Published;
}

/** Engine error codes that mean the shard's input is at fault: another attempt fails the same way. */

/**
 * Runs `shard` to completion and publishes its result.
 * @throws ShardError (`retryable` false for input faults), ShardCancelledError when `signal` aborts.
 */
export async function runShard(opts: ShardRunOptions): Promise<ShardOutcome> {
  const { shard, worker, metrics, signal } = opts;
  const log = opts.log.child(`[shard ${shard.shardId}]`);
  const prompt = shard.prompt;
  const model = shard.model;
  if (!prompt || !model) {
    throw new ShardError(shard.shardId, false, `shard ${shard.shardId} has no ${!prompt ? "prompt" : "model"}; the coordinator must send Shard.${!prompt ? "prompt" : "model"}`);
  }
  if (shard.kind && shard.kind !== "trace") {
    const outcome = await runExperimentShard(opts); // knockout, sever, lre, edit: one RunExperiment
    void refreshWorkerStats(worker, metrics);
    return outcome;
  }
  const promptKey = prompt.promptKey || `${shard.sweepId}.${prompt.index}`;
  // One request per shard by default: the engine groups the cells by token and fills its batches
  // itself, and slicing a shard into small requests shrinks those batches (measured: 59% slower).
  const batchSize = opts.batchSize && opts.batchSize > 0 ? opts.batchSize : Number.POSITIVE_INFINITY;
  const maxLosses = opts.maxWorkerLosses ?? 2;
  const timeoutMs = opts.requestTimeoutMs ?? 600_000;
  const cells = shard.cells;
  const results: engine.CellResult[] = [];
  let engineSeconds = 0;
  let prepared: { generation: number; info: engine.PromptInfo } | undefined;
  let losses = 0;
  let reprepares = 0;

  const cancelled = () => new ShardCancelledError(shard.shardId, String(signal?.reason ?? "cancelled"));

  for (;;) {
    if (signal?.aborted) throw cancelled();
    let client: EngineClient;
    try {
      const waitMs = opts.workerReadyTimeoutMs ?? 300_000;
      client = await worker.whenReady(signal ? AbortSignal.any([signal, AbortSignal.timeout(waitMs)]) : AbortSignal.timeout(waitMs));
    } catch (err) {
      if (signal?.aborted) throw cancelled();
      const why = (err as Error).name === "TimeoutError" ? `did not become ready within ${opts.workerReadyTimeoutMs ?? 300_000} ms` : (err as Error).message;
      throw new ShardError(shard.shardId, true, `worker ${worker.name} unavailable (${why}); handing shard ${shard.shardId} back`, { cause: err });
    }
    const generation = worker.generation;
    try {
      await ensureModel(worker, client, model, timeoutMs);
      if (!prepared || prepared.generation !== generation) {
        const info = await client.preparePrompt(
          {
            modelId: model.modelId,
            promptKey,
            inputIds: prompt.inputIds,
            subjectStart: prompt.subjectStart,
            subjectEnd: prompt.subjectEnd,
            corruption: prompt.corruption,
            answerId: prompt.answerId,
          },
          { timeoutMs },
        );
        (info.cacheHit ? metrics.cacheHits : metrics.cacheMisses).inc();
        worker.cachedPrompts.set(promptKey, info.cacheBytes);
        prepared = { generation, info };
      }
      while (results.length < cells.length) {
        if (signal?.aborted) throw cancelled();
        const batch = cells.slice(results.length, results.length + batchSize);
        const r = await client.runCells({ modelId: model.modelId, promptKey, cells: batch }, { timeoutMs });
        if (r.results.length !== batch.length) {
          throw new ShardError(shard.shardId, true, `worker ${worker.name} returned ${r.results.length} results for ${batch.length} cells (engine bug)`);
        }
        results.push(...r.results);
        engineSeconds += r.seconds;
        metrics.engineBatch.observe(r.seconds);
        metrics.cellsComputed.inc(batch.length);
        opts.onProgress?.(results.length);
      }
      break;
    } catch (err) {
      if (err instanceof ShardError || err instanceof ShardCancelledError) throw err;
      if (signal?.aborted) throw cancelled();
      if (workerLost(err, worker, generation, log)) {
        losses++;
        if (losses > maxLosses) {
          throw new ShardError(
            shard.shardId,
            true,
            `worker ${worker.name} was lost ${losses} times while running shard ${shard.shardId} (${results.length}/${cells.length} cells done); handing it back`,
            { cause: err },
          );
        }
        log.warn(`worker ${worker.name} lost (${(err as Error).message}); re-running the remaining ${cells.length - results.length} of ${cells.length} cells after it restarts`);
        continue;
      }
      // The engine evicted the prompt between batches (LRU under its budget): prepare it again.
      if (err instanceof EngineRequestError && err.code === "ERROR_CODE_NOT_FOUND" && err.request === "runCells" && reprepares < 3) {
        reprepares++;
        prepared = undefined;
        continue;
      }
      throw shardFailure(shard.shardId, err);
    }
  }

  const info = prepared!.info;
  const result: sweep.ShardResult = {
    resultJson: "",
    sweepId: shard.sweepId,
    shardId: shard.shardId,
    promptIndex: prompt.index,
    agentId: opts.agentId,
    attempt: shard.attempt,
    answerId: info.answerId,
    pClean: info.pClean,
    pCorrupt: info.pCorrupt,
    cells: cells.map((cell, i) => ({ cell, p: results[i]!.p, logit: results[i]!.logit })),
    engineSeconds,
    worker: worker.name,
  };
  const published = await opts.publisher.publish(result, signal);
  if (published.duplicate) log.info(`result was already in JetStream (seq ${published.seq}); deduplicated by shard id`);
  void refreshWorkerStats(worker, metrics);
  return { result, published };
}

/** After a shard, while the worker is idle: what it really caches (the engine evicts by LRU). */
export async function refreshWorkerStats(worker: EngineWorker, metrics: AgentMetrics): Promise<void> {
  const client = worker.client;
  if (!client || worker.state !== "ready") return;
  try {
    const s = await client.stats({ timeoutMs: 30_000 });
    worker.cachedPrompts.clear();
    for (const k of s.cachedPromptKeys) worker.cachedPrompts.set(k, 0);
    worker.cacheBytes = s.cacheBytes;
    metrics.cacheBytes.set({ worker: worker.name }, s.cacheBytes);
    if (worker.slot.device !== "cpu") metrics.gpuMemoryBytes.set({ worker: worker.name }, s.deviceMemoryUsedBytes);
  } catch {
    // Stats are advisory; a dead worker is handled by the supervisor.
  }
}

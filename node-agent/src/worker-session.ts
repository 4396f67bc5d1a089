/**
 * The one worker-session retry loop every shard runner (tracing cells or an experiment) runs in:
 * wait for a ready worker, load the model once per worker process, prepare the prompt once per
 * worker process, run the runner's own step, and when the worker is lost mid-shard wait for its
 * restart and run the step again (the runner keeps its partial results between attempts), up to
 * `maxWorkerLosses`. Also the pieces around it: engine failures as ShardErrors, cancellation, the
 * common ShardResult fields, publishing, and the prompt key.
 */
import type { AgentCovariances } from "./covariance-files.js";
import type { engine, sweep } from "@factsweep/proto";
import { EngineClosedError, EngineRequestError, EngineTimeoutError } from "./engine-errors.js";
import { type EngineClient } from "./engine-client.js";
import type { EngineWorker } from "./engine-supervisor.js";
import { ShardCancelledError, ShardError, WorkerLostError } from "./errors.js";
import type { Logger } from "./log.js";
import type { AgentMetrics } from "./metrics.js";
import type { Published, ResultPublisher } from "./result-publisher.js";

/** Options of `runShard` (and of each runner). */
export interface ShardRunOptions {
  shard: sweep.Shard;
  worker: EngineWorker;
  publisher: ResultPublisher;
  agentId: string;
  metrics: AgentMetrics;
  log: Logger;
  /**
   * Cells per RunCells request (0: the whole shard in one request). Default: the worker's own call
   * size (`cellsPerCallOf(worker.slot)`: a whole shard on a GPU, 512 cells on the CPU).
   */
  batchSize?: number;
  /**
   * Called once, right after the shard's last engine call was sent (before its answer): the worker
   * will be free after that call, so the agent may send the next shard's requests now; the worker
   * serves them in order, without an idle gap for the agent's round trip.
   */
  onLastCall?: () => void;
  /** Worker deaths tolerated during one shard before it is handed back (retryable). Default 2. */
  maxWorkerLosses?: number;
  /** How long to wait for a dead worker to come back before handing the shard back. Default 5 min. */
  workerReadyTimeoutMs?: number;
  /** Per engine request; a worker that does not answer in time is killed and restarted. Default 10 min. */
  requestTimeoutMs?: number;
  /** Aborting stops after the current engine request; nothing is published. */
  signal?: AbortSignal;
  /** Work units finished so far (cells, or `shard.units` of an experiment; for heartbeats). */
  onProgress?: (unitsDone: number) => void;
  /** ROME covariances in the object store (edit shards); absent: the engine computes C from the corpus. */
  covariances?: AgentCovariances;
}

/** A shard that ran and whose result JetStream acknowledged. */
export interface ShardOutcome {
  result: sweep.ShardResult;
  published: Published;
}

/** What a runner says about its own progress when the worker is lost. */
export interface LossReport {
  /** After "while running": e.g. `shard s1 (3/28 cells done)`. */
  running: string;
  /** After "re-running": e.g. `the remaining 25 of 28 cells`. */
  rerun: string;
}

/** Engine error codes that are the input's fault: retrying the shard elsewhere cannot help. */
const INPUT_FAULTS = new Set(["ERROR_CODE_INVALID_ARGUMENT"]);

/**
 * The engine cache key of the shard's prompt: `Shard.prompt.promptKey` as the planner set it, else
 * the planner's own format `<sweepId>/<index>` (planning's `promptKey`), for shards stored without one.
 */
export function promptKeyOf(shard: sweep.Shard): string {
  return shard.prompt?.promptKey || `${shard.sweepId}/${shard.prompt?.index ?? 0}`;
}

/**
 * One shard on one worker. A runner creates it, calls {@link run} with its step (which reads
 * {@link client} and {@link prepare}, and keeps its own partial results), then {@link publish}es.
 */
export class WorkerSession {
  readonly shard: sweep.Shard;
  readonly prompt: sweep.PromptSpec;
  readonly model: sweep.ModelRef;
  readonly promptKey: string;
  readonly worker: EngineWorker;
  readonly log: Logger;
  readonly timeoutMs: number;
  private readonly opts: ShardRunOptions;
  private current: { client: EngineClient; generation: number } | undefined;
  private prepared: { generation: number; info: engine.PromptInfo } | undefined;

  /** @throws ShardError (not retryable) when the shard lacks its prompt or model. */
  constructor(opts: ShardRunOptions) {
    const { shard } = opts;
    if (!shard.prompt || !shard.model) {
      const missing = !shard.prompt ? "prompt" : "model";
      throw new ShardError(shard.shardId, false, `shard ${shard.shardId} has no ${missing}; the coordinator must send Shard.${missing}`);
    }
    this.opts = opts;
    this.shard = shard;
    this.prompt = shard.prompt;
    this.model = shard.model;
    this.promptKey = promptKeyOf(shard);
    this.worker = opts.worker;
    this.log = opts.log.child(`[shard ${shard.shardId}]`);
    this.timeoutMs = opts.requestTimeoutMs ?? 600_000;
  }

  /** The ready worker's client during a step. */
  get client(): EngineClient {
    if (!this.current) throw new Error("WorkerSession.client read outside run()");
    return this.current.client;
  }

  /** The prompt's PromptInfo if it was prepared on the current worker process. */
  get promptInfo(): engine.PromptInfo | undefined {
    return this.prepared?.info;
  }

  /** @throws ShardCancelledError when the shard's signal was aborted. */
  throwIfCancelled(): void {
    const signal = this.opts.signal;
    if (signal?.aborted) throw new ShardCancelledError(this.shard.shardId, String(signal.reason ?? "cancelled"));
  }

  /** PreparePrompt on the current worker process unless it was prepared there already (counts cache hits). */
  async prepare(): Promise<engine.PromptInfo> {
    const { client, generation } = this.current!;
    if (this.prepared?.generation === generation) return this.prepared.info;
    const p = this.prompt;
    const info = await client.preparePromptSpec(this.model.modelId, this.promptKey, p, { timeoutMs: this.timeoutMs });
    (info.cacheHit ? this.opts.metrics.cacheHits : this.opts.metrics.cacheMisses).inc();
    this.worker.cachedPrompts.set(this.promptKey, info.cacheBytes);
    this.prepared = { generation, info };
    return info;
  }

  /** Forgets the prepared prompt (the engine evicted it), so that the next {@link prepare} asks again. */
  forgetPrepared(): void {
    this.prepared = undefined;
  }

  /** The runner sent its last engine call: tells the agent once (see ShardRunOptions.onLastCall). */
  lastCallSent(): void {
    const hook = this.opts.onLastCall;
    this.opts.onLastCall = undefined;
    hook?.();
  }

  /** One engine answer computed `units` more work units: metrics and progress (`done` in all). */
  recordWork(seconds: number, units: number, done: number): void {
    this.opts.metrics.engineBatch.observe(seconds);
    this.opts.metrics.cellsComputed.inc(units);
    this.opts.onProgress?.(done);
  }

  /**
   * Runs `step` on a ready worker with the model loaded until it returns. A lost worker (closed,
   * timed out, restarted) is waited for and `step` runs again, up to `maxWorkerLosses` times;
   * `lost` says what the runner had done (for the messages).
   * @throws ShardError (`retryable` false for input faults), ShardCancelledError when the signal aborts.
   */
  async run<T>(step: () => Promise<T>, lost: () => LossReport): Promise<T> {
    const { shard, worker } = this;
    const maxLosses = this.opts.maxWorkerLosses ?? 2;
    let losses = 0;
    for (;;) {
      this.throwIfCancelled();
      const client = await this.whenReady();
      const generation = worker.generation;
      this.current = { client, generation };
      try {
        await ensureModel(worker, client, this.model, this.timeoutMs);
        return await step();
      } catch (err) {
        if (err instanceof ShardError || err instanceof ShardCancelledError) throw err;
        this.throwIfCancelled();
        if (!workerLost(err, worker, generation, this.log)) throw shardFailure(shard.shardId, err);
        const what = lost();
        if (++losses > maxLosses) {
          throw new ShardError(shard.shardId, true, `worker ${worker.name} was lost ${losses} times while running ${what.running}; handing it back`, {
            cause: err,
          });
        }
        this.log.warn(`worker ${worker.name} lost (${(err as Error).message}); re-running ${what.rerun} after it restarts`);
      } finally {
        this.current = undefined;
      }
    }
  }

  /** The ShardResult fields every runner fills the same way, with the runner's own. */
  result(own: Pick<sweep.ShardResult, "answerId" | "pClean" | "pCorrupt" | "cells" | "engineSeconds" | "resultJson">): sweep.ShardResult {
    const { shard } = this;
    return {
      sweepId: shard.sweepId,
      shardId: shard.shardId,
      promptIndex: this.prompt.index,
      agentId: this.opts.agentId,
      attempt: shard.attempt,
      leaseId: "", // stamped by the agent's ResultPublisher.forLease at publish time
      worker: this.worker.name,
      ...own,
    };
  }

  /** Publishes the result to JetStream (deduplicated by shard id). */
  async publish(result: sweep.ShardResult): Promise<ShardOutcome> {
    const published = await this.opts.publisher.publish(result, this.opts.signal);
    if (published.duplicate) this.log.info(`result was already in JetStream (seq ${published.seq}); deduplicated by shard id`);
    return { result, published };
  }

  private async whenReady(): Promise<EngineClient> {
    const { worker, shard } = this;
    const signal = this.opts.signal;
    const waitMs = this.opts.workerReadyTimeoutMs ?? 300_000;
    try {
      return await worker.whenReady(signal ? AbortSignal.any([signal, AbortSignal.timeout(waitMs)]) : AbortSignal.timeout(waitMs));
    } catch (err) {
      this.throwIfCancelled();
      const why = (err as Error).name === "TimeoutError" ? `did not become ready within ${waitMs} ms` : (err as Error).message;
      throw new ShardError(shard.shardId, true, `worker ${worker.name} unavailable (${why}); handing shard ${shard.shardId} back`, { cause: err });
    }
  }
}

/** LoadModel requests in flight per worker process (two shards on one worker wait for one load). */
const loading = new WeakMap<EngineClient, Map<string, Promise<void>>>();

/** Loads the shard's model on the worker unless this worker process already holds it (or is loading it). */
export async function ensureModel(worker: EngineWorker, client: EngineClient, model: sweep.ModelRef, timeoutMs: number): Promise<void> {
  const dtype = model.dtype || "float32";
  const have = worker.models.get(model.modelId);
  if (have && have.path === model.path && have.dtype === dtype) return;
  const inFlight = loading.get(client) ?? new Map<string, Promise<void>>();
  loading.set(client, inFlight);
  const key = `${model.modelId}\0${model.path}\0${dtype}`;
  let load = inFlight.get(key);
  if (!load) {
    load = client.loadModel({ modelId: model.modelId, path: model.path, dtype, device: worker.slot.device }, { timeoutMs }).then((info) => {
      worker.models.set(model.modelId, { path: model.path, dtype, info });
    });
    inFlight.set(key, load);
    void load.finally(() => inFlight.delete(key)).catch(() => undefined);
  }
  await load;
}

/**
 * True when `err` means the worker went away (stream closed, request timed out, or restarted since
 * `generation`) rather than answered; a timed-out worker is killed so that it restarts.
 */
export function workerLost(err: unknown, worker: EngineWorker, generation: number, log: Logger): boolean {
  if (!(err instanceof EngineClosedError || err instanceof EngineTimeoutError || worker.generation !== generation)) return false;
  if (err instanceof EngineTimeoutError) {
    log.error(`${err.message}; killing worker ${worker.name} so it restarts`);
    worker.kill();
  }
  return true;
}

/** An engine failure as the shard's failure: the input's fault is not retryable, anything else is. */
export function shardFailure(shardId: string, err: unknown): unknown {
  if (err instanceof EngineRequestError) return new ShardError(shardId, !INPUT_FAULTS.has(err.code), err.message, { cause: err });
  if (err instanceof WorkerLostError) return new ShardError(shardId, true, err.message, { cause: err });
  return err;
}

/**
 * After a shard: what the worker really caches (the engine evicts by LRU). The next shard's requests
 * may be queued before it in the worker, hence the long timeout.
 */
export async function refreshWorkerStats(worker: EngineWorker, metrics: AgentMetrics): Promise<void> {
  const client = worker.client;
  if (!client || worker.state !== "ready") return;
  try {
    const s = await client.stats({ timeoutMs: 600_000 });
    worker.cachedPrompts.clear();
    for (const k of s.cachedPromptKeys) worker.cachedPrompts.set(k, 0);
    worker.cacheBytes = s.cacheBytes;
    metrics.cacheBytes.set({ worker: worker.name }, s.cacheBytes);
    if (worker.slot.device !== "cpu") metrics.gpuMemoryBytes.set({ worker: worker.name }, s.deviceMemoryUsedBytes);
  } catch {
    // Stats are advisory; a dead worker is handled by the supervisor.
  }
}

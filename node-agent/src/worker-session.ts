/**
 * What a shard runner (tracing cells or an experiment) needs of its engine worker, in one place:
 * the model loaded once per worker process, and how an engine failure is classified.
 */
import type { sweep } from "@factsweep/proto";
import { EngineClosedError, EngineRequestError, EngineTimeoutError } from "./engine-errors.js";
import { type EngineClient } from "./engine-client.js";
import type { EngineWorker } from "./engine-supervisor.js";
import { ShardError, WorkerLostError } from "./errors.js";
import type { Logger } from "./log.js";

/** Engine error codes that are the input's fault: retrying the shard elsewhere cannot help. */
const INPUT_FAULTS = new Set(["ERROR_CODE_INVALID_ARGUMENT"]);

/** Loads the shard's model on the worker unless this worker process already holds it. */
export async function ensureModel(worker: EngineWorker, client: EngineClient, model: sweep.ModelRef, timeoutMs: number): Promise<void> {
  const dtype = model.dtype || "float32";
  const have = worker.models.get(model.modelId);
  if (have && have.path === model.path && have.dtype === dtype) return;
  const info = await client.loadModel({ modelId: model.modelId, path: model.path, dtype, device: worker.slot.device }, { timeoutMs });
  worker.models.set(model.modelId, { path: model.path, dtype, info });
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

/**
 * The tracing runner: a `trace` shard's cells run with RunCells in bounded batches on the worker's
 * prepared prompt, and its ShardResult carries every cell's p and logit. Cells computed before a
 * worker died are kept: after the restart only the remaining cells run (the session re-loads the
 * model and re-prepares the prompt the new process lacks).
 */
import type { engine } from "@factsweep/proto";
import { EngineRequestError } from "./engine-errors.js";
import { ShardError } from "./errors.js";
import { cellsPerCallOf } from "./gpu-discovery.js";
import { WorkerSession, type ShardOutcome, type ShardRunOptions } from "./worker-session.js";

/** Times a prompt the engine evicted between batches (LRU under its budget) is prepared again. */
const MAX_REPREPARES = 3;

/**
 * Runs a tracing shard to completion and publishes its result.
 * @throws ShardError (`retryable` false for input faults), ShardCancelledError when `signal` aborts.
 */
export async function runTraceShard(opts: ShardRunOptions): Promise<ShardOutcome> {
  const s = new WorkerSession(opts);
  const { cells, shardId } = s.shard;
  // On a GPU one request per shard: the engine groups the cells by token and fills its batches
  // itself, and slicing a shard into small requests shrinks those batches (measured: 59% slower).
  // On the CPU bounded calls keep progress and the cells kept after a lost worker fine-grained.
  const perCall = opts.batchSize ?? cellsPerCallOf(opts.worker.slot);
  const batchSize = perCall > 0 ? perCall : Number.POSITIVE_INFINITY;
  const results: engine.CellResult[] = []; // kept across lost workers
  let engineSeconds = 0;
  let reprepares = 0;

  const info = await s.run(
    async () => {
      for (;;) {
        const info = await s.prepare();
        try {
          while (results.length < cells.length) {
            s.throwIfCancelled();
            const batch = cells.slice(results.length, results.length + batchSize);
            const call = s.client.runCells({ modelId: s.model.modelId, promptKey: s.promptKey, cells: batch }, { timeoutMs: s.timeoutMs });
            if (results.length + batch.length === cells.length) s.lastCallSent();
            const r = await call;
            if (r.results.length !== batch.length) {
              throw new ShardError(shardId, true, `worker ${s.worker.name} returned ${r.results.length} results for ${batch.length} cells (engine bug)`);
            }
            results.push(...r.results);
            engineSeconds += r.seconds;
            s.recordWork(r.seconds, batch.length, results.length);
          }
          return info;
        } catch (err) {
          if (!(err instanceof EngineRequestError && err.code === "ERROR_CODE_NOT_FOUND" && err.request === "runCells" && reprepares < MAX_REPREPARES))
            throw err;
          reprepares++; // the engine evicted the prompt between batches: prepare it again
          s.forgetPrepared();
          s.throwIfCancelled();
        }
      }
    },
    () => ({
      running: `shard ${shardId} (${results.length}/${cells.length} cells done)`,
      rerun: `the remaining ${cells.length - results.length} of ${cells.length} cells`,
    }),
  );

  const cellResults = cells.map((cell, i) => ({ cell, p: results[i]!.p, logit: results[i]!.logit }));
  return s.publish(s.result({ answerId: info.answerId, pClean: info.pClean, pCorrupt: info.pCorrupt, cells: cellResults, engineSeconds, resultJson: "" }));
}

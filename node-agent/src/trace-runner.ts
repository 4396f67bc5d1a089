/**
 * The tracing runner: a `trace` shard's cells run with RunCells in bounded batches on the worker's
 * prepared prompt, and its ShardResult carries every cell's p and logit. Cells computed before a
 * worker died are kept: after the restart only the remaining cells run (the session re-loads the
 * model and re-prepares the prompt the new process lacks).
 */
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
  // Every cell's p and logit, in the shard's order (the engine sends them packed, in request order),
  // kept across lost workers.
  const ps: number[] = [];
  const logits: number[] = [];
  let engineSeconds = 0;
  let reprepares = 0;

  // One RunCells request for the cells from `from` on (a batch); its rejection is handled where it is awaited.
  const send = (from: number) => {
    s.throwIfCancelled();
    const batch = cells.slice(from, from + batchSize);
    const call = s.client.runCells({ modelId: s.model.modelId, promptKey: s.promptKey, cells: batch }, { timeoutMs: s.timeoutMs });
    call.catch(() => undefined); // awaited below, or not needed once the prepare failed
    if (from + batch.length === cells.length) s.lastCallSent();
    return { batch, call };
  };

  const info = await s.run(
    async () => {
      for (;;) {
        // The first RunCells is written right behind the PreparePrompt, not after its answer: the
        // worker answers in order, and the shard's last call is then on its way at once, so the next
        // shard's PreparePrompt reaches the worker while this grid runs (its lookahead prepares it
        // there, hiding the prepare; measured on an H200: half the shards missed it otherwise).
        const preparing = s.prepare();
        let next = ps.length < cells.length ? send(ps.length) : undefined;
        try {
          const info = await preparing;
          while (next) {
            const { batch, call } = next;
            const r = await call;
            if (r.p.length !== batch.length || r.logit.length !== batch.length) {
              throw new ShardError(
                shardId,
                true,
                `worker ${s.worker.name} returned ${r.p.length} p and ${r.logit.length} logit values for ${batch.length} cells (engine bug)`,
              );
            }
            for (let i = 0; i < batch.length; i++) {
              ps.push(r.p[i]!);
              logits.push(r.logit[i]!);
            }
            engineSeconds += r.seconds;
            s.recordWork(r.seconds, batch.length, ps.length);
            next = ps.length < cells.length ? send(ps.length) : undefined;
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
      running: `shard ${shardId} (${ps.length}/${cells.length} cells done)`,
      rerun: `the remaining ${cells.length - ps.length} of ${cells.length} cells`,
    }),
  );

  const cellResults = cells.map((cell, i) => ({ cell, p: ps[i]!, logit: logits[i]! }));
  return s.publish(s.result({ answerId: info.answerId, pClean: info.pClean, pCorrupt: info.pCorrupt, cells: cellResults, engineSeconds, resultJson: "" }));
}

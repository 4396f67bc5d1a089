/**
 * Publishes ShardResults to JetStream with `Nats-Msg-Id = <shard_id>/<attempt>` (resultMsgId), so
 * an attempt published twice (a retry, an agent restarted between publish and ShardDone) is stored
 * once; the coordinator counts a shard once across attempts, and only a result carrying the
 * shard's current lease id (`forLease`) from that lease's holder. Keeps
 * retrying while NATS is away: results reach JetStream whatever happens to the gRPC link.
 */
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { sweep } from "@factsweep/proto";
import { resultMsgId, resultsSubject } from "@factsweep/shared";
import { ShardCancelledError, ShardError } from "./errors.js";
import type { Logger } from "./log.js";
import type { AgentMetrics } from "./metrics.js";

/** Where a result landed. */
export interface Published {
  seq: number;
  /** JetStream already had a message with this shard id (within its duplicate window). */
  duplicate: boolean;
  stream: string;
}

/** Publishes ShardResults; `nc` may still be connecting (a promise), publishes wait for it. */
export class ResultPublisher {
  private js: Promise<JetStreamClient>;
  private nc: Promise<NatsConnection>;
  /** Set on the publishers `forLease` makes: the lease id each result is stamped with. */
  private leaseId: (() => string) | undefined;

  constructor(
    nc: NatsConnection | Promise<NatsConnection>,
    private readonly opts: { metrics?: AgentMetrics; log?: Logger; timeoutMs?: number; retryMaxMs?: number } = {},
  ) {
    this.nc = Promise.resolve(nc);
    this.js = this.nc.then((c) => jetstream(c, { timeout: opts.timeoutMs ?? 5_000 }));
    // Avoid an unhandled rejection if the connection never comes; publish() reports it.
    this.js.catch(() => undefined);
  }

  /**
   * This publisher, stamping every result's `lease_id` with `leaseId()` read at publish time (a
   * shard re-leased while it runs is published under its new lease). Shares the connection.
   */
  forLease(leaseId: () => string): ResultPublisher {
    const p = Object.create(this) as ResultPublisher;
    p.leaseId = leaseId;
    return p;
  }

  /**
   * Publishes `result` on `factsweep.results.<sweep_id>` and waits for JetStream's ack, retrying
   * with backoff on any transient error (no server, no stream yet, timeout) until `signal` aborts.
   * @throws ShardError (not retryable) when the encoded result exceeds the server's max_payload.
   */
  async publish(result: sweep.ShardResult, signal?: AbortSignal): Promise<Published> {
    if (this.leaseId) result = { ...result, leaseId: this.leaseId() };
    const data = sweep.ShardResult.encode(result).finish();
    const subject = resultsSubject(result.sweepId);
    const nc = await this.nc;
    const js = await this.js;
    const maxPayload = nc.info?.max_payload;
    if (maxPayload && data.length > maxPayload) {
      throw new ShardError(
        result.shardId,
        false,
        `ShardResult of shard ${result.shardId} is ${data.length} bytes, above the NATS server's max_payload ${maxPayload}; ` +
          `cut the sweep into smaller shards (fewer cells per shard) or raise max_payload in the nats-server config`,
      );
    }
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw new ShardCancelledError(result.shardId, String(signal.reason ?? "aborted"));
      const t0 = process.hrtime.bigint();
      try {
        const ack = await js.publish(subject, data, { msgID: resultMsgId(result.shardId, result.attempt), timeout: this.opts.timeoutMs ?? 5_000 });
        this.opts.metrics?.publishLatency.observe(Number(process.hrtime.bigint() - t0) / 1e9);
        if (attempt > 1) this.opts.log?.info(`shard ${result.shardId} published after ${attempt} attempts (seq ${ack.seq})`);
        return { seq: ack.seq, duplicate: ack.duplicate, stream: ack.stream };
      } catch (err) {
        const delay = Math.min(this.opts.retryMaxMs ?? 5_000, 100 * 2 ** Math.min(attempt, 10));
        this.opts.log?.warn(`publishing shard ${result.shardId} to ${subject} failed (attempt ${attempt}: ${(err as Error).message}); retrying in ${delay} ms`);
        await sleep(delay, signal);
      }
    }
  }
}

/** setTimeout as a promise that ends early (without throwing) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

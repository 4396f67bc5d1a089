/**
 * Reads ShardResults from the JetStream results stream with a durable consumer and folds each
 * into its sweep's aggregator exactly once.
 *
 * Exactly once: JetStream drops a republished result with the same Nats-Msg-Id (the shard id)
 * inside the stream's duplicate window; the aggregator refuses a shard it already holds (a retry
 * published after the window, or a redelivery); and a message is acked only after the aggregator
 * result is durable in KV. A coordinator killed before that gets the message again, and the
 * aggregate it rebuilt from KV either has it (duplicate, ignored) or not (added now).
 *
 * Poison: a message that does not decode, or a result the sink refuses (forged, broken, of no
 * lease), is copied to the dead-letter stream `FACTSWEEP_RESULTS_DEAD` (bounded retention) with
 * the reason in headers, then acked; it never holds up the batch, so other results keep counting.
 */
import { AckPolicy, DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, StorageType, type JsMsg, type JetStreamManager } from "@nats-io/jetstream";
import { headers, nanos, type NatsConnection } from "@nats-io/transport-node";
import { sweep } from "@factsweep/proto";
import { RESULTS_CONSUMER, RESULTS_STREAM, RESULTS_SUBJECT_PREFIX } from "@factsweep/shared";
import type { Rejection, RejectReason } from "./result-check.js";
import { DEFAULT_NATS_LIMITS, ensureStream, RESULTS_DUPLICATE_WINDOW_MS, resultsStreamLimits, type NatsLimits } from "./nats-limits.js";

export { RESULTS_DUPLICATE_WINDOW_MS };

/** Dead-letter stream of refused results; its subject lies outside the results stream's `factsweep.results.>`. */
export const DEAD_LETTER_STREAM = "FACTSWEEP_RESULTS_DEAD";
export const DEAD_LETTER_SUBJECT = "factsweep.dead.results";
/** Retention of the dead-letter stream: whichever limit comes first drops the oldest. */
export const DEAD_LETTER_MAX_AGE_MS = 7 * 24 * 3600_000;
export const DEAD_LETTER_MAX_MSGS = 10_000;
export const DEAD_LETTER_MAX_BYTES = 256 * 1024 * 1024;
/** Headers of a dead letter. */
export const DEAD_LETTER_HEADERS = {
  reason: "Factsweep-Reject-Reason",
  detail: "Factsweep-Reject-Detail",
  subject: "Factsweep-Original-Subject",
  seq: "Factsweep-Original-Seq",
} as const;

/** What the sink says of a result: aggregated now, held already, or refused (dead-lettered). */
export type AddOutcome = "added" | "duplicate" | Rejection;

/** What the consumer needs to know per message. */
export interface ResultSink {
  /** Checks the result (published on `subject`) and folds it into its sweep's aggregator. */
  add(result: sweep.ShardResult, subject: string): AddOutcome;
  /** Makes the listed sweeps' new results durable; acks wait for it. */
  persist(sweepIds: Set<string>): Promise<void>;
}

/** Options of {@link ResultsConsumer}. */
export interface ResultsConsumerOptions {
  sink: ResultSink;
  /** Flush (persist + ack) after this many messages or `flushMs`, whichever first. */
  batch?: number;
  flushMs?: number;
  /** Redelivery delay for a message not acked (must exceed a flush). */
  ackWaitMs?: number;
  onConsumed?: (duplicate: boolean) => void;
  /** A message was refused (then dead-lettered and acked). */
  onRejected?: (reason: RejectReason) => void;
  /** Replicas and limits of the results and dead-letter streams; default DEFAULT_NATS_LIMITS. */
  limits?: NatsLimits;
  log?: (msg: string) => void;
}

/** Creates the dead-letter stream if absent (file storage, bounded by age, count and bytes; oldest dropped; no delete or purge), or brings it in line. */
export async function ensureDeadLetterStream(
  jsm: JetStreamManager,
  limits: NatsLimits = DEFAULT_NATS_LIMITS,
  log: (m: string) => void = () => undefined,
): Promise<void> {
  await ensureStream(
    jsm,
    {
      name: DEAD_LETTER_STREAM,
      subjects: [DEAD_LETTER_SUBJECT],
      storage: StorageType.File,
      max_age: nanos(DEAD_LETTER_MAX_AGE_MS),
      max_msgs: DEAD_LETTER_MAX_MSGS,
      max_bytes: DEAD_LETTER_MAX_BYTES,
      discard: DiscardPolicy.Old,
      num_replicas: limits.replicas,
      deny_delete: true,
      deny_purge: true,
    },
    log,
  );
}

/**
 * Creates the results stream if absent (file storage, duplicate window for Nats-Msg-Id dedup, the
 * configured replicas and limits, no delete or purge), or brings an existing one in line.
 */
export async function ensureResultsStream(
  jsm: JetStreamManager,
  limits: NatsLimits = DEFAULT_NATS_LIMITS,
  log: (m: string) => void = () => undefined,
): Promise<void> {
  await ensureStream(
    jsm,
    {
      name: RESULTS_STREAM,
      subjects: [`${RESULTS_SUBJECT_PREFIX}.>`],
      storage: StorageType.File,
      duplicate_window: nanos(RESULTS_DUPLICATE_WINDOW_MS),
      ...resultsStreamLimits(limits),
    },
    log,
  );
}

/** The coordinator's durable consumer of the results stream. */
export class ResultsConsumer {
  private stopped = false;
  private pending: JsMsg[] = [];
  private dirty = new Set<string>();
  private flushing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  private iter: { stop(): void } | undefined;
  /** Dead letters being written (each acks its message when stored). */
  private readonly dead = new Set<Promise<void>>();
  private readonly batch: number;
  private readonly flushMs: number;
  private readonly log: (m: string) => void;

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: ResultsConsumerOptions,
  ) {
    // 1,024: a flush's KV writes are awaited together, so results counted a second grow with the batch;
    // at 256, 1,000 simulated agents published 76k results in 43 s while 27k were counted (bench/coordinator-load).
    this.batch = opts.batch ?? 1024;
    this.flushMs = opts.flushMs ?? 250;
    this.log = opts.log ?? (() => undefined);
  }

  /** Ensures stream and durable consumer exist, then consumes until `stop`. */
  async start(): Promise<void> {
    const jsm = await jetstreamManager(this.nc);
    await ensureResultsStream(jsm, this.opts.limits, this.log);
    await ensureDeadLetterStream(jsm, this.opts.limits, this.log);
    const config = {
      durable_name: RESULTS_CONSUMER,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(this.opts.ackWaitMs ?? 30_000),
      max_ack_pending: Math.max(1000, this.batch * 4),
    };
    let info;
    try {
      info = await jsm.consumers.info(RESULTS_STREAM, RESULTS_CONSUMER);
    } catch {
      await jsm.consumers.add(RESULTS_STREAM, { ...config, deliver_policy: DeliverPolicy.All });
    }
    if (info && info.num_ack_pending > 0) {
      // Messages a previous coordinator received but never acked (it died before they were
      // durable) would wait out ack_wait; re-create the durable at the ack floor instead, so
      // they come at once. Acked messages above the floor come again too and are duplicates.
      const from = info.ack_floor.stream_seq + 1;
      this.log(`results consumer: ${info.num_ack_pending} unacked result(s) from a previous run; redelivering from stream sequence ${from}`);
      await jsm.consumers.delete(RESULTS_STREAM, RESULTS_CONSUMER);
      await jsm.consumers.add(RESULTS_STREAM, { ...config, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from });
    }
    this.timer = setInterval(() => void this.flush(), this.flushMs);
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const js = jetstream(this.nc);
    while (!this.stopped) {
      try {
        const consumer = await js.consumers.get(RESULTS_STREAM, RESULTS_CONSUMER);
        const iter = await consumer.consume({ max_messages: this.batch });
        this.iter = iter;
        if (this.stopped) {
          // stop() ran while the consumer was being opened (it had no iterator to stop yet).
          iter.stop();
          break;
        }
        for await (const m of iter) {
          this.handle(m);
          if (this.pending.length >= this.batch) await this.flush();
          if (this.stopped) break;
        }
      } catch (err) {
        if (this.stopped) break;
        this.log(`results consumer: ${(err as Error).message}; retrying`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private handle(m: JsMsg): void {
    let result: sweep.ShardResult;
    let outcome: AddOutcome;
    try {
      result = sweep.ShardResult.decode(m.data);
    } catch (err) {
      this.reject(m, { reason: "undecodable", detail: `not a ShardResult: ${(err as Error).message}` });
      return;
    }
    try {
      outcome = this.opts.sink.add(result, m.subject);
    } catch (err) {
      this.reject(m, { reason: "invalid_result", detail: `shard ${JSON.stringify(result.shardId.slice(0, 100))}: ${(err as Error).message}` });
      return;
    }
    if (typeof outcome === "object") {
      this.reject(m, outcome);
      return;
    }
    this.opts.onConsumed?.(outcome === "duplicate");
    this.dirty.add(result.sweepId);
    this.pending.push(m); // acked once it is durable in KV, duplicates too
  }

  /**
   * A refused message: counted, logged, copied to the dead-letter stream with the reason in
   * headers, then acked. Not part of a batch: a dead letter never delays the results around it.
   * If the copy cannot be stored (NATS down) the message is nak'ed to come again later.
   */
  private reject(m: JsMsg, why: Rejection): void {
    this.opts.onRejected?.(why.reason);
    this.log(`results consumer: message seq ${m.seq} on ${m.subject} refused (${why.reason}): ${why.detail}; dead-lettered to ${DEAD_LETTER_SUBJECT}`);
    const h = headers();
    h.set(DEAD_LETTER_HEADERS.reason, why.reason);
    h.set(DEAD_LETTER_HEADERS.detail, why.detail.replace(/[\r\n]+/g, " ").slice(0, 1000));
    h.set(DEAD_LETTER_HEADERS.subject, m.subject);
    h.set(DEAD_LETTER_HEADERS.seq, String(m.seq));
    const p = jetstream(this.nc)
      .publish(DEAD_LETTER_SUBJECT, m.data, { headers: h, msgID: `dead-${m.seq}` })
      .then(
        () => m.ack(),
        (err: Error) => {
          this.log(`results consumer: dead-lettering seq ${m.seq} failed (${err.message}); it comes again`);
          m.nak(5000);
        },
      )
      .finally(() => this.dead.delete(p));
    this.dead.add(p);
  }

  /** Persists the results received since the last flush, then acks their messages. */
  async flush(): Promise<void> {
    if (this.flushing) return await this.flushing;
    if (this.pending.length === 0) return;
    const msgs = this.pending;
    const dirty = this.dirty;
    this.pending = [];
    this.dirty = new Set();
    this.flushing = (async () => {
      try {
        await this.opts.sink.persist(dirty);
        for (const m of msgs) m.ack();
      } catch (err) {
        // Not durable: keep them for the next flush (and JetStream redelivers after ack_wait anyway).
        this.log(`results consumer: persisting aggregates failed (${(err as Error).message}); will retry`);
        this.pending = msgs.concat(this.pending);
        for (const id of dirty) this.dirty.add(id);
      } finally {
        this.flushing = undefined;
      }
    })();
    await this.flushing;
  }

  /** Stops consuming after a final flush. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.iter?.stop();
    await this.flush().catch(() => undefined);
    await Promise.all([...this.dead]);
    await this.loop?.catch(() => undefined);
  }
}

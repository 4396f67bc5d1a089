/**
 * Reads ShardResults from the JetStream results stream with a durable consumer and folds each
 * into its sweep's aggregator exactly once.
 *
 * Exactly once: JetStream drops a republished result with the same Nats-Msg-Id (the shard id)
 * inside the stream's duplicate window; the aggregator refuses a shard it already holds (a retry
 * published after the window, or a redelivery); and a message is acked only after the aggregator
 * result is durable in KV. A coordinator killed before that gets the message again, and the
 * aggregate it rebuilt from KV either has it (duplicate, ignored) or not (added now).
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, StorageType, type JsMsg, type JetStreamManager } from "@nats-io/jetstream";
import { nanos, type NatsConnection } from "@nats-io/transport-node";
import { sweep } from "@factsweep/proto";
import { RESULTS_CONSUMER, RESULTS_STREAM, RESULTS_SUBJECT_PREFIX } from "@factsweep/shared";

/** Duplicate window of the results stream: a republished shard inside it is dropped by the server. */
export const RESULTS_DUPLICATE_WINDOW_MS = 10 * 60_000;

/** What the consumer needs to know per message. */
export interface ResultSink {
  /**
   * Folds the result into its sweep's aggregator; returns "added", "duplicate", or "unknown"
   * (no such sweep here: acked and dropped).
   */
  add(result: sweep.ShardResult): "added" | "duplicate" | "unknown";
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
  log?: (msg: string) => void;
}

/** Creates the results stream if absent (file storage, duplicate window for Nats-Msg-Id dedup). */
export async function ensureResultsStream(jsm: JetStreamManager): Promise<void> {
  try {
    await jsm.streams.info(RESULTS_STREAM);
  } catch {
    try {
      await jsm.streams.add({
        name: RESULTS_STREAM,
        subjects: [`${RESULTS_SUBJECT_PREFIX}.>`],
        storage: StorageType.File,
        duplicate_window: nanos(RESULTS_DUPLICATE_WINDOW_MS),
      });
    } catch (err) {
      // An agent may have created it at the same moment.
      await jsm.streams.info(RESULTS_STREAM).catch(() => {
        throw err;
      });
    }
  }
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
  private readonly batch: number;
  private readonly flushMs: number;
  private readonly log: (m: string) => void;

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: ResultsConsumerOptions,
  ) {
    this.batch = opts.batch ?? 256;
    this.flushMs = opts.flushMs ?? 250;
    this.log = opts.log ?? (() => undefined);
  }

  /** Ensures stream and durable consumer exist, then consumes until `stop`. */
  async start(): Promise<void> {
    const jsm = await jetstreamManager(this.nc);
    await ensureResultsStream(jsm);
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
    try {
      result = sweep.ShardResult.decode(m.data);
    } catch (err) {
      this.log(`results consumer: dropping undecodable message seq ${m.seq} on ${m.subject}: ${(err as Error).message}`);
      m.term();
      return;
    }
    const outcome = this.opts.sink.add(result);
    if (outcome === "unknown") {
      this.log(`results consumer: result of shard ${result.shardId} for unknown sweep ${result.sweepId} ignored`);
      m.ack();
      return;
    }
    this.opts.onConsumed?.(outcome === "duplicate");
    this.dirty.add(result.sweepId);
    this.pending.push(m); // acked once it is durable in KV, duplicates too
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
    await this.loop?.catch(() => undefined);
  }
}

/**
 * How the coordinator's JetStream streams and KV buckets are bounded and replicated: replicas from
 * configuration (3 on a 3-node NATS cluster), byte and age limits on the results stream, byte
 * limits on the buckets, and no message delete or purge on the results streams (deny_delete,
 * deny_purge: a client with stream rights cannot erase results). The coordinator creates them
 * with these settings and brings existing ones into line at start (what the server lets change).
 */
import { DiscardPolicy, jetstreamManager, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { nanos, type NatsConnection } from "@nats-io/transport-node";

/** The limits of the coordinator's streams and buckets (flags of main.ts). */
export interface NatsLimits {
  /** Replicas of every stream and bucket: 1 on one server, 3 (or 5) on a NATS cluster. */
  replicas: number;
  /** Results stream: largest size in bytes; when full, new results are refused (agents retry) rather than unconsumed ones dropped. */
  resultsMaxBytes: number;
  /** Results stream: a message older than this is removed (the counted results live on in the aggregates bucket). */
  resultsMaxAgeMs: number;
  /** Each KV bucket (sweeps, shards, aggregates): largest size in bytes. */
  kvMaxBytes: number;
  /** The ROME covariance object store (factsweep-cov): largest size in bytes (a mamba-2.8b W_o C is 105 MB, and as much again in parts). */
  covMaxBytes: number;
}

/** Duplicate window of the results stream: a republished shard inside it is dropped by the server (max age may not be shorter). */
export const RESULTS_DUPLICATE_WINDOW_MS = 10 * 60_000;

const MiB = 1024 ** 2;
/**
 * Defaults that fit a small host: JetStream reserves each stream's max_bytes from the server's
 * storage, so larger deployments raise them with the flags (a million-cell trace sweep is ~30 MiB
 * of results, and as much again in the aggregates bucket).
 */
export const DEFAULT_NATS_LIMITS: NatsLimits = {
  replicas: 1,
  resultsMaxBytes: 2048 * MiB,
  resultsMaxAgeMs: 30 * 24 * 3600_000,
  kvMaxBytes: 512 * MiB,
  covMaxBytes: 2048 * MiB,
};

/** Completes partial limits with the defaults and checks them, naming the flag of a bad one. */
export function natsLimits(over: Partial<NatsLimits> = {}): NatsLimits {
  const l = { ...DEFAULT_NATS_LIMITS, ...Object.fromEntries(Object.entries(over).filter(([, v]) => v !== undefined)) } as NatsLimits;
  if (![1, 3, 5].includes(l.replicas)) throw new Error(`--nats-replicas must be 1, 3 or 5 (JetStream replicas), got ${l.replicas}`);
  for (const [k, flag] of [
    ["resultsMaxBytes", "--results-max-bytes"],
    ["resultsMaxAgeMs", "--results-max-age-ms"],
    ["kvMaxBytes", "--kv-max-bytes"],
    ["covMaxBytes", "--cov-max-bytes"],
  ] as const) {
    if (!Number.isInteger(l[k]) || l[k] < 1) throw new Error(`${flag} must be a positive integer, got ${l[k]}`);
  }
  if (l.resultsMaxAgeMs < RESULTS_DUPLICATE_WINDOW_MS) {
    throw new Error(
      `--results-max-age-ms must be at least the results stream's duplicate window (${RESULTS_DUPLICATE_WINDOW_MS} ms), got ${l.resultsMaxAgeMs}`,
    );
  }
  return l;
}

/** Settings of a stream the coordinator checks and corrects on an existing stream. */
const CHECKED = ["num_replicas", "max_bytes", "max_age", "deny_delete", "deny_purge", "discard"] as const;

/**
 * Creates the stream, or brings an existing one's checked settings in line with `cfg`. A setting
 * the server refuses to change (e.g. replicas on a single server) is logged, not fatal: the
 * coordinator still runs, and the log says what differs.
 */
export async function ensureStream(jsm: JetStreamManager, cfg: Partial<StreamConfig> & { name: string }, log: (m: string) => void): Promise<void> {
  let info = await jsm.streams.info(cfg.name).catch(() => undefined);
  if (!info) {
    try {
      await jsm.streams.add(cfg);
      return;
    } catch (err) {
      // Created by another client at the same moment.
      info = await jsm.streams.info(cfg.name).catch(() => {
        throw err;
      });
    }
  }
  const current = info.config as unknown as Record<string, unknown>;
  const want = cfg as unknown as Record<string, unknown>;
  const differ = CHECKED.filter((k) => want[k] !== undefined && current[k] !== want[k]);
  if (differ.length === 0) return;
  const changes = differ.map((k) => `${k} ${String(current[k])} -> ${String(want[k])}`).join(", ");
  const apply = async (keys: readonly string[]) => jsm.streams.update(cfg.name, { ...info.config, ...Object.fromEntries(keys.map((k) => [k, want[k]])) });
  try {
    await apply(differ);
    log(`stream ${cfg.name} updated: ${changes}`);
  } catch (err) {
    // Replicas cannot change on a single server (or without enough cluster nodes): apply the rest.
    const rest = differ.filter((k) => k !== "num_replicas");
    const ok =
      rest.length > 0 &&
      rest.length < differ.length &&
      (await apply(rest).then(
        () => true,
        () => false,
      ));
    log(
      `stream ${cfg.name}: cannot change ${changes} (${(err as Error).message})` +
        (ok ? `; applied all but num_replicas (kept ${String(current.num_replicas)})` : "; kept as it is"),
    );
  }
}

/** Opens a KV bucket with one value per key, creating it with the limits, or bringing an existing one in line. */
export async function ensureBucket(nc: NatsConnection, name: string, limits: NatsLimits, log: (m: string) => void): Promise<KV> {
  const kvm = new Kvm(nc);
  const existing = await kvm.open(name).then(
    async (kv) => ((await kv.status().catch(() => undefined)) ? kv : undefined),
    () => undefined,
  );
  if (!existing) return await kvm.create(name, { history: 1, replicas: limits.replicas, max_bytes: limits.kvMaxBytes });
  await ensureStream(await jetstreamManager(nc), { name: `KV_${name}`, num_replicas: limits.replicas, max_bytes: limits.kvMaxBytes }, log);
  return existing;
}

/** The results stream's limits as a stream config (see results-consumer.ts for its subjects). */
export function resultsStreamLimits(l: NatsLimits): Partial<StreamConfig> {
  return {
    num_replicas: l.replicas,
    max_bytes: l.resultsMaxBytes,
    max_age: nanos(l.resultsMaxAgeMs),
    discard: DiscardPolicy.New,
    deny_delete: true,
    deny_purge: true,
  };
}

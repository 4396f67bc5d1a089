// One simulated node agent for the coordinator load bench. The protocol parts are the real agent's
// code, imported from @factsweep/node-agent: CoordinatorLink (the AgentService.Connect stream, hello,
// heartbeats every Welcome.heartbeat_interval_ms, the done/failed outbox, reconnects) and
// ResultPublisher (JetStream publish with Nats-Msg-Id `<shard_id>/<attempt>`, the lease id stamped,
// retried until acked). What a real agent adds around them is mirrored from node-agent/src/agent.ts:
// credit = workers × (1 + prefetch) − leases held at welcome and one credit per finished lease,
// leases run one at a time per worker in grant order, done only after the publish is acked.
//
// The engine is a named test double: `fakeEngine` of @factsweep/testing, which answers at once with
// deterministic values (p a fixed function of prompt, site, layer, token and window).
import { connect } from "@nats-io/transport-node";
import { CoordinatorLink, ResultPublisher } from "@factsweep/node-agent";
import { fakeEngine } from "@factsweep/testing";

const quiet = { debug() {}, info() {}, warn() {}, error: (m) => console.error(`[sim-agent] ${m}`) };

/** Latency samples (ms) kept in a bounded reservoir so 1M shards do not hold 1M numbers per agent set. */
export class Samples {
  constructor(cap = 200_000) {
    this.cap = cap;
    this.xs = [];
    this.n = 0;
  }
  add(x) {
    this.n++;
    if (this.xs.length < this.cap) this.xs.push(x);
    else {
      const j = Math.floor(Math.random() * this.n);
      if (j < this.cap) this.xs[j] = x;
    }
  }
  quantile(q) {
    if (this.xs.length === 0) return null;
    const s = Float64Array.from(this.xs).sort();
    return s[Math.min(s.length - 1, Math.floor(q * s.length))];
  }
}

/** Shared counters and latency reservoirs of all simulated agents of one run. */
export function newStats() {
  return {
    leaseRtt: new Samples(), // credit sent → the lease grant that spends it arrives (ms)
    publishAck: new Samples(), // JetStream publish → ack (ms)
    granted: 0,
    published: 0,
    duplicates: 0,
    done: 0,
    cancels: 0,
    errors: 0,
    connected: 0,
  };
}

/**
 * A simulated agent. `nc` is its NATS connection (its own by default; see run.mjs --agents-per-nats),
 * `engineMs` an optional stand-in compute time per shard (0: instant).
 */
export class SimAgent {
  constructor({ agentId, coordinator, nc, stats, workers = 1, prefetch = 1, engineMs = 0, ownConnection = true }) {
    this.agentId = agentId;
    this.stats = stats;
    this.workers = workers;
    this.capacity = workers * (1 + prefetch);
    this.engineMs = engineMs;
    this.leases = new Map(); // shard id -> { leaseId, shard, cellsDone }
    this.queue = [];
    this.running = 0;
    this.creditSentAt = []; // FIFO of times credit slots were sent
    this.cached = new Set(); // prompt keys "prepared" here (the last few), reported in heartbeats
    this.publisher = new ResultPublisher(nc, { timeoutMs: 30_000 });
    this.link = new CoordinatorLink({
      agentId,
      coordinator,
      log: quiet,
      channelOptions: ownConnection ? { "grpc.use_local_subchannel_pool": 1 } : {},
      handlers: {
        hello: () => ({
          workers: Array.from({ length: workers }, (_, i) => ({ device: `sim:${i}`, memoryBytes: 0, ready: true })),
          cachedPromptKeys: [...this.cached],
        }),
        heartbeat: () => ({
          leases: [...this.leases.values()].map((l) => ({ leaseId: l.leaseId, shardId: l.shard.shardId, cellsDone: 0 })),
          cachedPromptKeys: [...this.cached],
          cacheBytes: 0,
        }),
        welcomed: () => {
          if (!this.welcomedOnce) stats.connected++;
          this.welcomedOnce = true;
          this.creditSentAt = [];
          this.credit(this.capacity - this.leases.size);
        },
        lease: (g) => this.onLease(g),
        cancel: (c) => this.onCancel(c),
        drain: () => undefined,
        refused: (err) => {
          stats.errors++;
          console.error(`[sim-agent] ${agentId} refused: ${err.message}`);
        },
      },
    });
  }

  start() {
    this.link.start();
  }

  credit(slots) {
    if (slots <= 0 || this.stopped) return;
    const now = performance.now();
    for (let i = 0; i < slots; i++) this.creditSentAt.push(now);
    this.link.send({ body: { $case: "credit", credit: { slots } } });
  }

  onLease(g) {
    const t = this.creditSentAt.shift();
    if (t !== undefined && !Number.isNaN(t)) this.stats.leaseRtt.add(performance.now() - t);
    this.stats.granted++;
    const shard = g.shard;
    const existing = this.leases.get(shard.shardId);
    if (existing) {
      existing.leaseId = g.leaseId; // re-granted while running here (as agent.ts): credit back
      this.credit(1);
      return;
    }
    const lease = { leaseId: g.leaseId, shard, cancelled: false };
    this.leases.set(shard.shardId, lease);
    this.queue.push(lease);
    this.pump();
  }

  /** Credits sent so far wait for a sweep to exist, not for the coordinator: their grants are not timed. */
  untimeCredits() {
    this.creditSentAt.fill(NaN);
  }

  onCancel(c) {
    this.stats.cancels++;
    for (const l of this.leases.values()) if (l.leaseId === c.leaseId) l.cancelled = true;
  }

  pump() {
    while (this.running < this.workers && this.queue.length > 0) {
      const lease = this.queue.shift();
      this.running++;
      void this.run(lease).finally(() => {
        this.running--;
        this.leases.delete(lease.shard.shardId);
        this.credit(1);
        this.pump();
      });
    }
  }

  async run(lease) {
    if (lease.cancelled) return;
    const shard = lease.shard;
    if (this.engineMs > 0) await new Promise((r) => setTimeout(r, this.engineMs));
    const key = shard.prompt?.promptKey;
    if (key && !this.cached.has(key)) {
      this.cached.add(key);
      if (this.cached.size > 4) this.cached.delete(this.cached.values().next().value);
    }
    const result = fakeEngine(shard, this.agentId);
    const t0 = performance.now();
    try {
      const pub = await this.publisher.forLease(() => lease.leaseId).publish(result);
      this.stats.publishAck.add(performance.now() - t0);
      this.stats.published++;
      if (pub.duplicate) this.stats.duplicates++;
      if (lease.cancelled) return;
      this.link.send({ body: { $case: "done", done: { leaseId: lease.leaseId, shardId: shard.shardId, publishedSeq: pub.seq } } });
      this.stats.done++;
    } catch (err) {
      this.stats.errors++;
      this.link.send({
        body: { $case: "failed", failed: { leaseId: lease.leaseId, shardId: shard.shardId, error: err.message, retryable: true, handedBack: false } },
      });
    }
  }

  async stop() {
    this.stopped = true;
    await this.link.close();
  }
}

/** NATS connections for `agents` simulated agents, one per `perConn` agents (1: each its own, as real agents). */
export async function natsConnections(url, agents, perConn) {
  const n = Math.ceil(agents / Math.max(1, perConn));
  const out = [];
  for (let i = 0; i < n; i += 50) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(50, n - i) }, (_, j) =>
        connect({ servers: url, name: `sim-agent-nats-${i + j}`, maxReconnectAttempts: -1, reconnectTimeWait: 500 }),
      ),
    );
    out.push(...batch);
  }
  return out;
}

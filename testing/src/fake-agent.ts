/**
 * Test-only: a minimal node agent speaking AgentService, for driving the coordinator in unit
 * tests. It computes a shard with a pluggable `compute` (a deterministic stand-in for the engine
 * named `fakeEngine`, or the real Python worker where a test has it), publishes the ShardResult to
 * JetStream with the shard id as message id, and reports done. Fault switches: hold leases without
 * computing them, stop heartbeats, publish twice, report done without publishing, fail shards,
 * vanish abruptly; and, to play a hostile client, raw protocol messages and raw publications.
 */
import * as grpc from "@grpc/grpc-js";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { agent, AGENT_PROTOCOL_VERSION, sweep } from "@factsweep/proto";
import { resultMsgId, resultsSubject } from "@factsweep/shared";

/** Computes a shard's result. */
export type Compute = (shard: sweep.Shard, agentId: string) => Promise<sweep.ShardResult> | sweep.ShardResult;

/**
 * Test double of the engine for orchestration tests (leases, retries, restarts): p of a cell is a
 * fixed function of (prompt, site, layer, token, window), so "every cell exactly once with its
 * value" is checkable. Numbers of the real engine are checked in engine/ and test/.
 */
/** The engine seconds `fakeEngine` reports a cell (it answers at once): a measured rate of 1,000 cells a worker-second. */
export const FAKE_ENGINE_SECONDS_PER_CELL = 0.001;

export const fakeEngine = (shard: sweep.Shard, agentId: string): sweep.ShardResult => {
  const pi = shard.prompt?.index ?? 0;
  return sweep.ShardResult.fromPartial({
    sweepId: shard.sweepId,
    shardId: shard.shardId,
    promptIndex: pi,
    agentId,
    attempt: shard.attempt,
    answerId: 7,
    pClean: 0.9,
    pCorrupt: 0.1,
    engineSeconds: shard.cells.length * FAKE_ENGINE_SECONDS_PER_CELL,
    worker: "fake:0",
    cells: shard.cells.map((c) => ({ cell: c, p: fakeP(pi, c.site, c.layer, c.token, c.window), logit: 0 })),
  });
};

/** The p `fakeEngine` reports for a cell. */
export const fakeP = (prompt: number, site: number, layer: number, token: number, window: number): number =>
  0.1 + ((prompt * 7919 + site * 104729 + layer * 131 + token * 17 + window * 3) % 797) / 1000;

/** Options of {@link TestAgent}. */
export interface TestAgentOptions {
  addr: string;
  natsUrl: string;
  agentId: string;
  slots?: number;
  compute?: Compute;
  protocolVersion?: number;
  token?: string;
  /** Keep leases without computing them (to let them expire or be released). */
  hold?: boolean;
  /** Send no heartbeats. */
  silent?: boolean;
  /** Publish every result twice with the same message id. */
  publishTwice?: boolean;
  /** Report every shard done without publishing its result (a result lost on the way). */
  skipPublish?: boolean;
  /** Engine workers advertised in the hello (default 1). */
  workers?: number;
  /** Fail every shard with this error instead of computing it. */
  failWith?: { error: string; retryable: boolean };
  cachedPromptKeys?: string[];
}

/** A minimal agent for tests. */
export class TestAgent {
  readonly leases: agent.LeaseGrant[] = [];
  readonly cancels: agent.CancelLease[] = [];
  readonly done: string[] = [];
  welcome: agent.Welcome | undefined;
  error: grpc.ServiceError | undefined;
  private client!: agent.AgentServiceClient;
  private stream!: grpc.ClientDuplexStream<agent.AgentMessage, agent.CoordinatorMessage>;
  private nc!: NatsConnection;
  private js!: JetStreamClient;
  private hb: NodeJS.Timeout | undefined;
  private held = new Map<string, agent.LeaseGrant>();
  private closed = false;

  constructor(readonly opts: TestAgentOptions) {}

  /** Connects to NATS and the coordinator; resolves on welcome (or the refusal). */
  async start(): Promise<this> {
    this.nc = await connect({ servers: this.opts.natsUrl, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    this.js = jetstream(this.nc);
    this.client = new agent.AgentServiceClient(this.opts.addr, grpc.credentials.createInsecure());
    this.stream = this.client.connect();
    await new Promise<void>((res) => {
      this.stream.on("data", (m: agent.CoordinatorMessage) => {
        const b = m.body;
        if (!b) return;
        if (b.$case === "welcome") {
          this.welcome = b.welcome;
          this.send({ $case: "credit", credit: { slots: this.opts.slots ?? 2 } });
          if (!this.opts.silent) this.hb = setInterval(() => this.heartbeat(), b.welcome.heartbeatIntervalMs);
          res();
        } else if (b.$case === "lease") {
          this.leases.push(b.lease);
          this.held.set(b.lease.leaseId, b.lease);
          if (!this.opts.hold) void this.run(b.lease);
        } else if (b.$case === "cancel") {
          this.cancels.push(b.cancel);
          this.held.delete(b.cancel.leaseId);
        }
      });
      this.stream.on("error", (e: grpc.ServiceError) => {
        this.error = e;
        res();
      });
      this.stream.on("end", () => res());
      this.send({
        $case: "hello",
        hello: {
          protocolVersion: this.opts.protocolVersion ?? AGENT_PROTOCOL_VERSION,
          agentId: this.opts.agentId,
          hostname: "test",
          workers: Array.from({ length: this.opts.workers ?? 1 }, (_, i) => ({ device: `cpu:${i}`, memoryBytes: 0, ready: true })),
          cachedPromptKeys: this.opts.cachedPromptKeys ?? [],
          token: this.opts.token ?? "",
        },
      });
    });
    return this;
  }

  /** Sends any protocol message on the stream (a hostile or broken agent). */
  sendRaw(body: agent.AgentMessage["body"]): void {
    this.send(body);
  }

  /** Publishes raw bytes to a subject of the results stream (a forged or poison message). */
  async publishBytes(subject: string, data: Uint8Array, msgID: string): Promise<void> {
    await this.js.publish(subject, data, { msgID });
  }

  private send(body: agent.AgentMessage["body"]): void {
    if (!this.closed) this.stream.write({ body });
  }

  private heartbeat(): void {
    this.send({
      $case: "heartbeat",
      heartbeat: {
        leases: [...this.held.values()].map((l) => ({ leaseId: l.leaseId, shardId: l.shard?.shardId ?? "", cellsDone: 0 })),
        cachedPromptKeys: [],
        cacheBytes: 0,
      },
    });
  }

  private async run(l: agent.LeaseGrant): Promise<void> {
    const shard = l.shard!;
    try {
      if (this.opts.failWith) {
        this.held.delete(l.leaseId);
        this.send({ $case: "failed", failed: { leaseId: l.leaseId, shardId: shard.shardId, ...this.opts.failWith, handedBack: false } });
        this.send({ $case: "credit", credit: { slots: 1 } });
        return;
      }
      const result = await (this.opts.compute ?? fakeEngine)(shard, this.opts.agentId);
      result.leaseId ||= l.leaseId; // as the real agent stamps it (a compute may set another to forge)
      const data = sweep.ShardResult.encode(result).finish();
      const ack = this.opts.skipPublish
        ? { seq: 0 }
        : await this.js.publish(resultsSubject(shard.sweepId), data, { msgID: resultMsgId(shard.shardId, shard.attempt) });
      if (this.opts.publishTwice) await this.js.publish(resultsSubject(shard.sweepId), data, { msgID: resultMsgId(shard.shardId, shard.attempt) });
      if (this.closed || !this.held.has(l.leaseId)) return;
      this.held.delete(l.leaseId);
      this.done.push(shard.shardId);
      this.send({ $case: "done", done: { leaseId: l.leaseId, shardId: shard.shardId, publishedSeq: ack.seq } });
      this.send({ $case: "credit", credit: { slots: 1 } });
    } catch (err) {
      this.held.delete(l.leaseId);
      this.send({ $case: "failed", failed: { leaseId: l.leaseId, shardId: shard.shardId, error: (err as Error).message, retryable: true, handedBack: false } });
      this.send({ $case: "credit", credit: { slots: 1 } });
    }
  }

  /** Publishes a result outside any lease (e.g. a late republish after the dedup window). */
  async publishRaw(result: sweep.ShardResult, msgID: string): Promise<{ duplicate: boolean }> {
    const ack = await this.js.publish(resultsSubject(result.sweepId), sweep.ShardResult.encode(result).finish(), { msgID });
    return { duplicate: ack.duplicate };
  }

  /** Leases held now (granted, not finished). */
  heldLeases(): agent.LeaseGrant[] {
    return [...this.held.values()];
  }

  /** Ends the stream abruptly (like a killed process) and disconnects from NATS. */
  async kill(): Promise<void> {
    this.closed = true;
    if (this.hb) clearInterval(this.hb);
    this.stream.cancel();
    this.client.close();
    await this.nc.close().catch(() => undefined);
  }

  /** Ends the stream politely. */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.hb) clearInterval(this.hb);
    this.stream.end();
    this.client.close();
    await this.nc.close().catch(() => undefined);
  }
}

/** Polls `cond` every 25 ms until it holds (tests bound the wait with the runner's timeout). */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Fake agents started against one harness, killed together after each test. */
export class FakeAgents {
  readonly list: TestAgent[] = [];

  async start(at: { addr: string; nats: { url: string } }, o: Partial<TestAgentOptions> & { agentId: string }): Promise<TestAgent> {
    const a = await new TestAgent({ addr: at.addr, natsUrl: at.nats.url, ...o }).start();
    this.list.push(a);
    return a;
  }

  async killAll(): Promise<void> {
    for (const a of this.list.splice(0)) await a.kill().catch(() => undefined);
  }
}

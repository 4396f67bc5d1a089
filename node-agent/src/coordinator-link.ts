/**
 * The agent's link to the coordinator: one long-lived AgentService.Connect stream at a time, the
 * hello, heartbeats every `Welcome.heartbeat_interval_ms`, and the outbox in which done/failed wait
 * while there is no session. A stream that ends is reconnected with exponential backoff and full
 * jitter; a refusal for good (protocol version, token) is reported instead of retried. What the
 * messages mean (leases, credit, drain) is the agent's business: it answers through the handlers.
 */
import { hostname } from "node:os";
import { credentials, Metadata, status as grpcStatus, type ChannelOptions, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import { agent, AGENT_PROTOCOL_VERSION } from "@factsweep/proto";
import { CoordinatorRefusedError } from "./errors.js";
import type { Logger } from "./log.js";
import { sleep } from "./result-publisher.js";

type Stream = ClientDuplexStream<agent.AgentMessage, agent.CoordinatorMessage>;

/** Codes with which the coordinator refuses an agent for good: reconnecting would not help. */
const REFUSALS = new Set([grpcStatus.FAILED_PRECONDITION, grpcStatus.UNAUTHENTICATED, grpcStatus.PERMISSION_DENIED, grpcStatus.INVALID_ARGUMENT]);

/** What the agent answers and does for its link. */
export interface CoordinatorLinkHandlers {
  /** The hello's workers and cached prompt keys, at each connect. */
  hello(): Pick<agent.AgentHello, "workers" | "cachedPromptKeys">;
  /** The next heartbeat's contents. */
  heartbeat(): agent.Heartbeat;
  /** A session was welcomed (after its first heartbeat and the outbox went out): time to grant credit. */
  welcomed(): void;
  lease(grant: agent.LeaseGrant): void;
  cancel(c: agent.CancelLease): void;
  drain(reason: string): void;
  /** The coordinator refused this agent for good. */
  refused(err: CoordinatorRefusedError): void;
}

/** Options of {@link CoordinatorLink}. */
export interface CoordinatorLinkOptions {
  agentId: string;
  /** Coordinator address `host:port`. */
  coordinator: string;
  token?: string;
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  /**
   * Extra gRPC channel options. grpc-js shares one connection among clients of the same target in a
   * process; bench/coordinator-load passes `grpc.use_local_subchannel_pool` so each of its simulated
   * agents has its own connection, as separate agent processes do.
   */
  channelOptions?: ChannelOptions;
  log: Logger;
  handlers: CoordinatorLinkHandlers;
}

/** The coordinator stream of one agent, reconnected until {@link close}. */
export class CoordinatorLink {
  private readonly log: Logger;
  private readonly h: CoordinatorLinkHandlers;
  private outbox: agent.AgentMessage[] = [];
  private stream: Stream | undefined;
  private welcomed = false;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly stopController = new AbortController();
  private client: agent.AgentServiceClient | undefined;

  constructor(private readonly opts: CoordinatorLinkOptions) {
    this.log = opts.log;
    this.h = opts.handlers;
  }

  /** True while a session is welcomed. */
  get connected(): boolean {
    return this.welcomed;
  }

  /** Connects, and reconnects whenever the stream ends, until {@link close}. */
  start(): void {
    void this.connectLoop();
  }

  /** Sends on the live session; done/failed wait in the outbox while there is none. */
  send(msg: agent.AgentMessage): void {
    const s = this.stream;
    if (s && this.welcomed && !s.writableEnded) {
      s.write(msg);
      return;
    }
    if (msg.body?.$case === "done" || msg.body?.$case === "failed") this.outbox.push(msg);
  }

  /** Stops reconnecting and heartbeats at once; {@link close} then ends the stream. */
  stop(): void {
    this.stopped = true;
    this.stopController.abort();
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
  }

  /** Ends the stream, letting the last done/failed reach the coordinator (up to 2 s). Messages still in the outbox are lost. */
  async close(): Promise<void> {
    this.stop();
    const s = this.stream;
    if (s && !s.writableEnded) {
      s.end();
      await Promise.race([new Promise((r) => s.once("status", r)), sleep(2_000)]);
    }
    this.client?.close();
  }

  private makeClient(): agent.AgentServiceClient {
    const tls = this.opts.tls;
    const creds = tls ? credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null) : credentials.createInsecure();
    return new agent.AgentServiceClient(this.opts.coordinator, creds, {
      // Notice a coordinator host that vanished without closing the connection.
      "grpc.keepalive_time_ms": 10_000,
      "grpc.keepalive_timeout_ms": 5_000,
      "grpc.keepalive_permit_without_calls": 1,
      ...this.opts.channelOptions,
    });
  }

  private async connectLoop(): Promise<void> {
    this.client = this.makeClient();
    let failures = 0;
    while (!this.stopped) {
      let welcomed = false;
      try {
        welcomed = await this.session();
      } catch (err) {
        if (err instanceof CoordinatorRefusedError) {
          this.h.refused(err);
          return;
        }
        this.log.warn(`coordinator link: ${(err as Error).message}`);
      }
      if (this.stopped) return;
      failures = welcomed ? 1 : failures + 1;
      const base = Math.min(this.opts.reconnectMaxMs ?? 15_000, (this.opts.reconnectInitialMs ?? 250) * 2 ** (failures - 1));
      const delay = Math.round(Math.random() * base); // full jitter: agents do not reconnect in lockstep
      this.log.info(`reconnecting to coordinator ${this.opts.coordinator} in ${delay} ms (attempt ${failures})`);
      await sleep(delay, this.stopController.signal);
    }
  }

  /** One stream session; resolves (true if it got a Welcome) when the stream ends. */
  private session(): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const md = new Metadata();
      if (this.opts.token) md.set("authorization", `Bearer ${this.opts.token}`);
      const call = this.client!.connect(md);
      this.stream = call;
      let welcomed = false;
      let settled = false;
      const end = (err?: ServiceError) => {
        if (settled) return;
        settled = true;
        if (this.stream === call) this.stream = undefined;
        this.welcomed = false;
        if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
        this.heartbeatTimer = undefined;
        if (err && REFUSALS.has(err.code)) {
          reject(
            new CoordinatorRefusedError(
              this.opts.agentId,
              `coordinator ${this.opts.coordinator} refused agent ${this.opts.agentId}: ${err.details || err.message}`,
              { cause: err },
            ),
          );
        } else if (err) {
          reject(
            Object.assign(new Error(`stream to ${this.opts.coordinator} ended: ${grpcStatus[err.code] ?? err.code} ${err.details || err.message}`), {
              welcomed,
            }),
          );
        } else {
          resolve(welcomed);
        }
      };
      call.on("data", (msg: agent.CoordinatorMessage) => {
        const body = msg.body;
        if (!body) return;
        switch (body.$case) {
          case "welcome":
            welcomed = true;
            this.onWelcome(call, body.welcome);
            break;
          case "lease":
            this.h.lease(body.lease);
            break;
          case "cancel":
            this.h.cancel(body.cancel);
            break;
          case "drain":
            this.log.info(`coordinator asked to drain: ${body.drain.reason || "(no reason)"}`);
            this.h.drain(`coordinator: ${body.drain.reason}`);
            break;
        }
      });
      // grpc-js reports a non-OK status as 'error' (then 'status'); 'status' is the one sure end.
      call.on("error", (err: ServiceError) => end(err));
      call.on("status", (st: { code: number; details: string }) => {
        if (st.code === grpcStatus.OK) end();
        else end(Object.assign(new Error(st.details), { code: st.code, details: st.details, metadata: new Metadata() }) as ServiceError);
      });
      call.on("end", () => undefined);
      call.write({
        body: {
          $case: "hello",
          hello: { protocolVersion: AGENT_PROTOCOL_VERSION, agentId: this.opts.agentId, hostname: hostname(), ...this.h.hello(), token: this.opts.token ?? "" },
        },
      });
    }).then(
      (welcomed) => welcomed as boolean,
      (err: Error & { welcomed?: boolean }) => {
        if (err instanceof CoordinatorRefusedError) throw err;
        this.log.warn(err.message);
        return err.welcomed ?? false;
      },
    );
  }

  private onWelcome(call: Stream, w: agent.Welcome): void {
    this.welcomed = true;
    this.log.info(
      `connected to coordinator ${this.opts.coordinator} (session ${w.sessionId}, lease TTL ${w.leaseTtlMs} ms, heartbeat ${w.heartbeatIntervalMs} ms)`,
    );
    const every = w.heartbeatIntervalMs > 0 ? w.heartbeatIntervalMs : 5_000;
    this.heartbeatTimer = setInterval(() => this.sendHeartbeat(), every);
    // Tell the new session at once which leases are still running here (after a reconnect).
    this.sendHeartbeat();
    const outbox = this.outbox;
    this.outbox = [];
    for (const m of outbox) call.write(m);
    this.h.welcomed();
  }

  private sendHeartbeat(): void {
    this.send({ body: { $case: "heartbeat", heartbeat: this.h.heartbeat() } });
  }
}

/**
 * TEST DOUBLE "scripted-coordinator": a minimal AgentService server whose every move the test
 * scripts (welcome, leases, cancel, drain, hang up). It stands in for the coordinator only in the
 * agent's own unit tests; the cross-process tests with the real coordinator live in test/.
 */
import { Server, ServerCredentials, status, type ServerDuplexStream } from "@grpc/grpc-js";
import { agent } from "@factsweep/proto";

type Call = ServerDuplexStream<agent.AgentMessage, agent.CoordinatorMessage>;

/** One agent stream as the double sees it. */
export class ScriptedStream {
  readonly received: agent.AgentMessage[] = [];
  ended = false;
  private waiters: { pred: (m: agent.AgentMessage) => boolean; resolve: (m: agent.AgentMessage) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }[] =
    [];

  constructor(readonly call: Call) {
    call.on("data", (m: agent.AgentMessage) => {
      this.received.push(m);
      for (const w of [...this.waiters]) {
        if (w.pred(m)) {
          clearTimeout(w.timer);
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    });
    const end = () => {
      this.ended = true;
    };
    call.on("end", end);
    call.on("cancelled", end);
    call.on("error", end);
  }

  /** The first message (already received or coming) of case `c` that satisfies `pred`. */
  next<C extends NonNullable<agent.AgentMessage["body"]>["$case"]>(
    c: C,
    pred: (body: Extract<NonNullable<agent.AgentMessage["body"]>, { $case: C }>) => boolean = () => true,
    opts: { timeoutMs?: number; fromIndex?: number } = {},
  ): Promise<Extract<NonNullable<agent.AgentMessage["body"]>, { $case: C }>> {
    type B = Extract<NonNullable<agent.AgentMessage["body"]>, { $case: C }>;
    const match = (m: agent.AgentMessage) => m.body?.$case === c && pred(m.body as B);
    const seen = this.received.slice(opts.fromIndex ?? 0).find(match);
    if (seen) return Promise.resolve(seen.body as B);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`scripted-coordinator: no ${c} message within ${opts.timeoutMs ?? 60_000} ms`)),
        opts.timeoutMs ?? 60_000,
      );
      this.waiters.push({ pred: match, resolve: (m) => resolve(m.body as B), reject, timer });
    });
  }

  send(body: NonNullable<agent.CoordinatorMessage["body"]>): void {
    this.call.write({ body });
  }

  /** Ends the stream with a gRPC status (e.g. FAILED_PRECONDITION to refuse the agent). */
  refuse(code: status, details: string): void {
    this.call.emit("error", { code, details });
  }
}

/** The double's server; `streams` grows as agents connect. */
export class ScriptedCoordinator {
  readonly streams: ScriptedStream[] = [];
  private server: Server | undefined;
  private waiters: ((s: ScriptedStream) => void)[] = [];
  port = 0;

  /** Binds on 127.0.0.1 (`port` 0: a free one); with `tls`, requires client certificates signed by `tls.ca` (mTLS). */
  async start(port = 0, tls?: { ca: Buffer; cert: Buffer; key: Buffer }): Promise<number> {
    const server = new Server();
    server.addService(agent.AgentServiceService, {
      connect: (call: Call) => {
        const s = new ScriptedStream(call);
        this.streams.push(s);
        const ws = this.waiters;
        this.waiters = [];
        for (const w of ws) w(s);
      },
    } satisfies agent.AgentServiceServer);
    this.port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(
        `127.0.0.1:${port}`,
        tls ? ServerCredentials.createSsl(tls.ca, [{ private_key: tls.key, cert_chain: tls.cert }], true) : ServerCredentials.createInsecure(),
        (err, p) => (err ? reject(err) : resolve(p)),
      ),
    );
    this.server = server;
    return this.port;
  }

  /** The next agent stream that connects (after `count` streams exist). */
  nextStream(count = this.streams.length, timeoutMs = 60_000): Promise<ScriptedStream> {
    if (this.streams.length > count) return Promise.resolve(this.streams[count]!);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`scripted-coordinator: no agent connected within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push((s) => {
        clearTimeout(timer);
        resolve(s);
      });
    });
  }

  /** Drops every connection at once, as a killed coordinator would. */
  kill(): void {
    this.server?.forceShutdown();
    this.server = undefined;
  }
}

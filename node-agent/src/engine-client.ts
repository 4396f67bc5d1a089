/**
 * Client side of the engine worker protocol over a child's stdin/stdout: assigns request ids,
 * matches responses by id, turns EngineError replies into {@link EngineRequestError}, times
 * requests out, and rejects everything pending when the stream ends.
 */
import type { Readable, Writable } from "node:stream";
import { engine, ENGINE_PROTOCOL_VERSION, type sweep } from "@factsweep/proto";
import { encodeFrame, FrameDecoder } from "./engine-framing.js";
import { EngineClosedError, EngineProtocolError, EngineRequestError, EngineTimeoutError } from "./engine-errors.js";

/** The body of an engine request (ts-proto oneof union). */
export type EngineRequestBody = NonNullable<engine.EngineRequest["body"]>;
/** The body of a successful engine response (every case but `error`). */
export type EngineResponseBody = Exclude<NonNullable<engine.EngineResponse["body"]>, { $case: "error" }>;

/** Options of {@link EngineClient}. */
export interface EngineClientOptions {
  /** The worker's stdin. */
  stdin: Writable;
  /** The worker's stdout. */
  stdout: Readable;
  /** Default per-request timeout; default 10 minutes (a large RunCells on CPU can be slow). */
  defaultTimeoutMs?: number;
  /** Name used in error messages (e.g. "worker cuda:0"). */
  name?: string;
  /** Called for frames that match no pending request (late replies after a timeout, garbage). */
  onStray?: (info: { requestId?: number; reason: string }) => void;
  /**
   * Called after a request was written (`sent`) and when it settled (`answered`: a reply, an error
   * reply, a timeout or the stream's end), with the requests in flight after it. The worker busy
   * ratio and tests (which request went out before which answer) read it.
   */
  onActivity?: (event: EngineActivity) => void;
}

/** One request written to the worker or settled (see {@link EngineClientOptions.onActivity}). */
export interface EngineActivity {
  phase: "sent" | "answered";
  /** The request's body case: "preparePrompt", "runCells", ... */
  request: string;
  requestId: number;
  /** Requests in flight after this event. */
  inFlight: number;
}

/** The message inside a response body of case `C`, e.g. `ResponseValue<"model">` = `engine.ModelInfo`. */
type ResponseValue<C extends EngineResponseBody["$case"]> = Extract<EngineResponseBody, { $case: C }> extends infer B ? B[C & keyof B] : never;

interface Pending {
  request: string;
  resolve: (body: EngineResponseBody) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

/**
 * Talks to one engine worker.
 *
 * @example
 * const child = execa("bash", ["scripts/engine-python.sh", "-m", "engine"], { stdin: "pipe", stdout: "pipe", stderr: "inherit", encoding: "buffer" });
 * const client = new EngineClient({ stdin: child.stdin!, stdout: child.stdout! });
 * await client.hello();
 * const model = await client.loadModel({ modelId: "m", path: "../shared/golden/mamba-tiny" });
 */
export class EngineClient {
  private readonly stdin: Writable;
  private readonly stdout: Readable;
  private readonly decoder: FrameDecoder;
  private readonly defaultTimeoutMs: number;
  private readonly name: string;
  private readonly onStray: EngineClientOptions["onStray"];
  private readonly onActivity: EngineClientOptions["onActivity"];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closedError: EngineClosedError | undefined;

  constructor(opts: EngineClientOptions) {
    this.stdin = opts.stdin;
    this.stdout = opts.stdout;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 600_000;
    this.name = opts.name ?? "engine worker";
    this.onStray = opts.onStray;
    this.onActivity = opts.onActivity;
    this.decoder = new FrameDecoder();
    this.decoder.on("data", (frame: Buffer) => this.onFrame(frame));
    this.decoder.on("error", (err) => this.fail(`${this.name}: ${err.message}`, err));
    this.decoder.on("end", () => this.fail(`${this.name} closed its stdout`));
    opts.stdout.on("error", (err) => this.fail(`${this.name} stdout failed: ${err.message}`, err));
    opts.stdout.on("close", () => this.fail(`${this.name} closed its stdout`));
    opts.stdout.pipe(this.decoder);
    // EPIPE when the worker died: every pending request fails as closed, not as an unhandled error.
    this.stdin.on("error", (err) => this.fail(`${this.name} stdin failed: ${err.message}`, err));
  }

  /** True once the stream ended or `close()` was called; every later request rejects. */
  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Number of requests waiting for a response. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Send one request and wait for its response body. Rejects with {@link EngineRequestError}
   * (EngineError reply), {@link EngineTimeoutError} or {@link EngineClosedError}.
   */
  request(body: EngineRequestBody, opts: { timeoutMs?: number } = {}): Promise<EngineResponseBody> {
    if (this.closedError) {
      return Promise.reject(new EngineClosedError(this.closedError.message));
    }
    const requestId = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const bytes = engine.EngineRequest.encode({ requestId, body }).finish();
    return new Promise<EngineResponseBody>((resolve, reject) => {
      const entry: Pending = { request: body.$case, resolve, reject, timer: undefined };
      if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
        entry.timer = setTimeout(() => {
          this.pending.delete(requestId);
          this.activity("answered", body.$case, requestId);
          reject(new EngineTimeoutError(requestId, body.$case, timeoutMs));
        }, timeoutMs);
      }
      this.pending.set(requestId, entry);
      this.stdin.write(encodeFrame(bytes), (err) => {
        if (err) this.fail(`${this.name} stdin failed: ${err.message}`, err);
      });
      this.activity("sent", body.$case, requestId);
    });
  }

  private activity(phase: EngineActivity["phase"], request: string, requestId: number): void {
    this.onActivity?.({ phase, request, requestId, inFlight: this.pending.size });
  }

  /** Handshake: sends ENGINE_PROTOCOL_VERSION; the worker refuses another version (VERSION_MISMATCH). */
  async hello(opts?: { timeoutMs?: number }): Promise<engine.HelloReply> {
    return this.expect(await this.request({ $case: "hello", hello: { protocolVersion: ENGINE_PROTOCOL_VERSION } }, opts), "hello");
  }

  /** Load a checkpoint folder under `modelId`. */
  async loadModel(req: Partial<engine.LoadModel> & { modelId: string; path: string }, opts?: { timeoutMs?: number }): Promise<engine.ModelInfo> {
    return this.expect(await this.request({ $case: "loadModel", loadModel: engine.LoadModel.fromPartial(req) }, opts), "model");
  }

  /** Run (or find cached) the clean and corrupted runs of one prompt. */
  async preparePrompt(req: Partial<engine.PreparePrompt> & { modelId: string; promptKey: string }, opts?: { timeoutMs?: number }): Promise<engine.PromptInfo> {
    return this.expect(await this.request({ $case: "preparePrompt", preparePrompt: engine.PreparePrompt.fromPartial(req) }, opts), "prompt");
  }

  /** PreparePrompt for a planned prompt (its tokens, subject span, corruption and answer) under `promptKey`. */
  async preparePromptSpec(modelId: string, promptKey: string, p: sweep.PromptSpec, opts?: { timeoutMs?: number }): Promise<engine.PromptInfo> {
    const { inputIds, subjectStart, subjectEnd, corruption, answerId } = p;
    return this.preparePrompt({ modelId, promptKey, inputIds, subjectStart, subjectEnd, corruption, answerId }, opts);
  }

  /** Run cells of a prepared prompt; results come back in the order of `cells`. */
  async runCells(
    req: Partial<engine.RunCells> & { modelId: string; promptKey: string; cells: engine.Cell[] },
    opts?: { timeoutMs?: number },
  ): Promise<engine.CellResults> {
    return this.expect(await this.request({ $case: "runCells", runCells: engine.RunCells.fromPartial(req) }, opts), "cells");
  }

  /** Run one experiment of a kind other than tracing (knockout, sever, lre, edit); params and result are JSON. */
  async runExperiment(
    req: Partial<engine.RunExperiment> & { modelId: string; kind: string; paramsJson: string },
    opts?: { timeoutMs?: number },
  ): Promise<engine.ExperimentResult> {
    return this.expect(await this.request({ $case: "runExperiment", runExperiment: engine.RunExperiment.fromPartial(req) }, opts), "experiment");
  }

  /** Drop prompts from the worker's cache. */
  async evict(req: Partial<engine.Evict> & { modelId: string }, opts?: { timeoutMs?: number }): Promise<engine.Evicted> {
    return this.expect(await this.request({ $case: "evict", evict: engine.Evict.fromPartial(req) }, opts), "evicted");
  }

  /** Cache and counters of the worker. */
  async stats(opts?: { timeoutMs?: number }): Promise<engine.Stats> {
    return this.expect(await this.request({ $case: "stats", stats: {} }, opts), "stats");
  }

  /** Ask the worker to exit after answering. */
  async shutdown(opts?: { timeoutMs?: number }): Promise<engine.ShutdownAck> {
    return this.expect(await this.request({ $case: "shutdown", shutdown: {} }, opts), "shutdown");
  }

  /** Stop reading and reject every pending request with {@link EngineClosedError}. */
  close(reason = "client closed"): void {
    this.fail(`${this.name}: ${reason}`);
    this.stdout.unpipe(this.decoder);
  }

  private expect<C extends EngineResponseBody["$case"]>(body: EngineResponseBody, want: C): ResponseValue<C> {
    if (body.$case !== want) {
      throw new EngineProtocolError(`${this.name} answered with \`${body.$case}\` where \`${want}\` was expected`);
    }
    return (body as unknown as Record<C, ResponseValue<C>>)[want];
  }

  private onFrame(frame: Buffer): void {
    let msg: engine.EngineResponse;
    try {
      msg = engine.EngineResponse.decode(frame);
    } catch (err) {
      this.fail(`${this.name} sent a frame that is not an EngineResponse: ${(err as Error).message}`, err);
      return;
    }
    const entry = this.pending.get(msg.requestId);
    if (!entry) {
      // request_id 0 is the worker's own complaint about a frame it could not read.
      const err = msg.body?.$case === "error" ? `: ${engine.errorCodeToJSON(msg.body.error.code)} ${msg.body.error.field} ${msg.body.error.message}` : "";
      this.onStray?.({
        requestId: msg.requestId,
        reason: (msg.requestId === 0 ? "worker error not tied to a request" : "no pending request with this id (timed out?)") + err,
      });
      return;
    }
    this.pending.delete(msg.requestId);
    if (entry.timer) clearTimeout(entry.timer);
    this.activity("answered", entry.request, msg.requestId);
    const body = msg.body;
    if (!body) {
      entry.reject(new EngineProtocolError(`${this.name} sent an empty response to ${entry.request} (request ${msg.requestId})`));
    } else if (body.$case === "error") {
      const e = body.error;
      entry.reject(
        new EngineRequestError({
          requestId: msg.requestId,
          code: engine.errorCodeToJSON(e.code),
          codeNumber: e.code,
          field: e.field,
          message: e.message,
          request: entry.request,
        }),
      );
    } else {
      entry.resolve(body);
    }
  }

  private fail(message: string, cause?: unknown): void {
    if (this.closedError) return;
    this.closedError = new EngineClosedError(message, undefined, cause === undefined ? undefined : { cause });
    const pending = [...this.pending];
    this.pending.clear();
    for (const [id, entry] of pending) {
      if (entry.timer) clearTimeout(entry.timer);
      this.activity("answered", entry.request, id);
      entry.reject(new EngineClosedError(`${message}; ${entry.request} (request ${id}) got no answer`, id, cause === undefined ? undefined : { cause }));
    }
  }
}

/**
 * gRPC SweepService for sweepctl. Every error becomes a status code a script can rely on:
 * INVALID_ARGUMENT (malformed spec, with the field), NOT_FOUND (unknown sweep or model folder),
 * ALREADY_EXISTS (duplicate sweep id), PERMISSION_DENIED (model outside the model roots),
 * UNAUTHENTICATED (token), UNAVAILABLE (not ready). A failed call never disturbs other sweeps.
 */
import type { sendUnaryData, ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import type { control } from "@factsweep/proto";
import { checkToken } from "./auth.js";
import { grpcStatusOf } from "./errors.js";

/** What the SweepService calls: the coordinator's sweeps (sweeps.ts) and its connected agents. */
export interface SweepApi {
  launch(req: control.LaunchRequest): Promise<control.SweepInfo>;
  get(sweepId: string): control.SweepInfo;
  list(): control.SweepInfo[];
  cancel(sweepId: string): control.SweepInfo;
  resume(sweepId: string): control.SweepInfo;
  agents(): control.AgentStatus[];
  report(sweepId: string): control.ReportData;
  /** Calls `cb` with the SweepInfo now and on every change; returns an unsubscribe function. */
  watch(sweepId: string, cb: (info: control.SweepInfo) => void): () => void;
  results(sweepId: string): Iterable<control.ResultRow>;
  /** Removes a finished, failed or cancelled sweep's state and results. */
  delete(sweepId: string): Promise<control.DeleteReply>;
  /** Loads a finished sweep let go from memory, before results, report or resume need it. */
  open(sweepId: string): Promise<void>;
}

/** Options of {@link createSweepService}. */
export interface SweepServiceOptions {
  token?: string;
  /** Minimum interval between two Watch updates; default 200 ms. */
  watchIntervalMs?: number;
}

const TERMINAL = new Set(["done", "failed", "cancelled"]);

/** The SweepService implementation over the sweeps API. */
export function createSweepService(coord: SweepApi, opts: SweepServiceOptions = {}): control.SweepServiceServer {
  const unary =
    <Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>) =>
    (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
      (async () => {
        checkToken(call.metadata, opts.token);
        return await fn(call.request);
      })().then(
        (res) => cb(null, res),
        (err: unknown) => cb(grpcStatusOf(err, `SweepService/${method}`)),
      );
    };
  const interval = opts.watchIntervalMs ?? 200;

  return {
    launch: unary("Launch", (r: control.LaunchRequest) => coord.launch(r)),
    get: unary("Get", (r: control.SweepRef) => coord.get(r.sweepId)),
    list: unary("List", () => ({ sweeps: coord.list() })),
    cancel: unary("Cancel", (r: control.SweepRef) => coord.cancel(r.sweepId)),
    resume: unary("Resume", async (r: control.SweepRef) => {
      await coord.open(r.sweepId);
      return coord.resume(r.sweepId);
    }),
    agents: unary("Agents", () => ({ agents: coord.agents() })),
    report: unary("Report", async (r: control.SweepRef) => {
      await coord.open(r.sweepId);
      return coord.report(r.sweepId);
    }),
    delete: unary("Delete", (r: control.SweepRef) => coord.delete(r.sweepId)),

    watch(call: ServerWritableStream<control.SweepRef, control.SweepInfo>): void {
      let unsubscribe: (() => void) | undefined;
      let timer: NodeJS.Timeout | undefined;
      let lastSent = 0;
      let latest: control.SweepInfo | undefined;
      let ended = false;
      const finish = () => {
        if (ended) return;
        ended = true;
        unsubscribe?.();
        if (timer) clearTimeout(timer);
      };
      const flush = () => {
        timer = undefined;
        if (ended || !latest) return;
        lastSent = Date.now();
        call.write(latest);
        if (TERMINAL.has(latest.state)) {
          finish();
          call.end();
        }
      };
      try {
        checkToken(call.metadata, opts.token);
        unsubscribe = coord.watch(call.request.sweepId, (info) => {
          latest = info;
          // Throttled, but a terminal state is sent at once and ends the stream.
          if (TERMINAL.has(info.state) || Date.now() - lastSent >= interval) {
            if (timer) clearTimeout(timer);
            flush();
          } else timer ??= setTimeout(flush, interval - (Date.now() - lastSent));
        });
      } catch (err) {
        finish();
        call.emit("error", grpcStatusOf(err, "SweepService/Watch"));
        return;
      }
      call.on("cancelled", finish);
      call.on("close", finish);
    },

    results(call: ServerWritableStream<control.SweepRef, control.ResultRow>): void {
      void (async () => {
        checkToken(call.metadata, opts.token);
        await coord.open(call.request.sweepId);
        const rows = coord.results(call.request.sweepId)[Symbol.iterator]();
        // Respect back-pressure: write until the buffer is full, continue on drain.
        const pump = () => {
          for (let r = rows.next(); !r.done; r = rows.next()) {
            if (!call.write(r.value)) {
              call.once("drain", pump);
              return;
            }
          }
          call.end();
        };
        pump();
      })().catch((err: unknown) => call.emit("error", grpcStatusOf(err, "SweepService/Results")));
    },
  };
}

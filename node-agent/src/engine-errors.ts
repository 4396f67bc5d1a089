/** Errors of the engine worker protocol client (framing, replies, time-outs, a closed worker). */
import { FactsweepError } from "@factsweep/shared";

/** A frame on the engine stream that cannot be decoded (too large, not protobuf). */
export class EngineProtocolError extends FactsweepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "EngineProtocolError";
  }
}

/** The engine answered a request with an EngineError. `code` is the proto ErrorCode name. */
export class EngineRequestError extends FactsweepError {
  readonly requestId: number;
  readonly code: string;
  readonly codeNumber: number;
  readonly field: string;
  readonly request: string;
  constructor(
    details: { requestId: number; code: string; codeNumber: number; field: string; message: string; request: string },
    options?: { cause?: unknown },
  ) {
    super(
      `engine refused ${details.request} (request ${details.requestId}): ${details.code}` +
        (details.field ? ` in field \`${details.field}\`` : "") +
        `: ${details.message}`,
      options,
    );
    this.name = "EngineRequestError";
    this.requestId = details.requestId;
    this.code = details.code;
    this.codeNumber = details.codeNumber;
    this.field = details.field;
    this.request = details.request;
  }
}

/** No response to an engine request within its timeout. The request stays unanswered. */
export class EngineTimeoutError extends FactsweepError {
  readonly requestId: number;
  readonly timeoutMs: number;
  readonly request: string;
  constructor(requestId: number, request: string, timeoutMs: number) {
    super(`engine did not answer ${request} (request ${requestId}) within ${timeoutMs} ms`);
    this.name = "EngineTimeoutError";
    this.requestId = requestId;
    this.timeoutMs = timeoutMs;
    this.request = request;
  }
}

/** The engine's stream ended (worker exited or was closed) before the request was answered. */
export class EngineClosedError extends FactsweepError {
  readonly requestId: number | undefined;
  constructor(message: string, requestId?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "EngineClosedError";
    this.requestId = requestId;
  }
}

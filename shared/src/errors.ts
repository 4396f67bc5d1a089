/**
 * Typed errors of the shared library. Each sets `name`, keeps the `cause`, and carries the ids a
 * user needs to find the offending input (field path, file, prompt index, request id).
 */

/** Common base so callers can catch every factsweep shared error at once. */
export class FactsweepError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FactsweepError";
  }
}

/** Describe a received value for an error message: `"abc" (string)`, `42 (number)`, `undefined`. */
export function describeValue(value: unknown): string {
  if (value === undefined) return "nothing (undefined)";
  if (value === null) return "null";
  let text: string;
  try {
    text = typeof value === "string" ? JSON.stringify(value) : JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  if (text.length > 120) text = `${text.slice(0, 117)}...`;
  const type = Array.isArray(value) ? "array" : typeof value;
  return `${text} (${type})`;
}

/** A sweep spec that does not validate. `path` is the field path, e.g. `grid[1].site`. */
export class SpecError extends FactsweepError {
  readonly path: string;
  readonly expected: string | undefined;
  readonly received: unknown;
  /** Every problem found, when the spec had several (the message lists them all). */
  readonly issues: { path: string; message: string }[];
  constructor(
    message: string,
    details: { path?: string; expected?: string; received?: unknown; issues?: { path: string; message: string }[] } = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "SpecError";
    this.path = details.path ?? "";
    this.expected = details.expected;
    this.received = details.received;
    this.issues = details.issues ?? [{ path: this.path, message }];
  }
}

/** A dataset file (known_1000.json, relation file) that is missing or malformed. */
export class DatasetError extends FactsweepError {
  readonly file: string;
  constructor(message: string, file: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DatasetError";
    this.file = file;
  }
}

/** A checkpoint folder or config.json that cannot be used. */
export class ModelConfigError extends FactsweepError {
  readonly modelPath: string;
  constructor(message: string, modelPath: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ModelConfigError";
    this.modelPath = modelPath;
  }
}

/** A tokenizer.json that cannot be loaded or used. */
export class TokenizerError extends FactsweepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TokenizerError";
  }
}

/** The subject string does not occur in the prompt text (or not on token boundaries we can map). */
export class SubjectNotFoundError extends TokenizerError {
  readonly text: string;
  readonly subject: string;
  constructor(text: string, subject: string, detail?: string) {
    super(
      `subject ${JSON.stringify(subject)} does not occur in prompt ${JSON.stringify(text)}` +
        (detail ? ` (${detail})` : "") +
        "; fix the dataset entry so the prompt text contains the subject exactly (case-sensitive)",
    );
    this.name = "SubjectNotFoundError";
    this.text = text;
    this.subject = subject;
  }
}

/** A prompt that cannot be planned (no swap partner, bad span, ...). Carries the prompt index. */
export class PromptError extends FactsweepError {
  readonly promptIndex: number;
  constructor(message: string, promptIndex: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PromptError";
    this.promptIndex = promptIndex;
  }
}

/** The nats-server child could not be started, or stopped unexpectedly. */
export class NatsServerError extends FactsweepError {
  readonly port: number | undefined;
  constructor(message: string, port?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NatsServerError";
    this.port = port;
  }
}

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

/** A ShardResult that does not fit its sweep (unknown prompt, cell count mismatch). */
export class ResultError extends FactsweepError {
  readonly shardId: string;
  constructor(message: string, shardId: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ResultError";
    this.shardId = shardId;
  }
}

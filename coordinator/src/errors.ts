/**
 * Typed errors of the coordinator. Each carries the ids a user needs (sweep, shard, agent) and
 * maps to one gRPC status code at the service boundary (see `grpcStatusOf`).
 */
import { status } from "@grpc/grpc-js";

/** Base class: every coordinator error has a gRPC code so services can answer with it. */
export class CoordinatorError extends Error {
  readonly code: status;
  constructor(message: string, code: status, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CoordinatorError";
    this.code = code;
  }
}

/** The sweep spec (or a request field) is malformed; `field` names it. */
export class InvalidSpecError extends CoordinatorError {
  readonly field: string;
  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super(message, status.INVALID_ARGUMENT, options);
    this.name = "InvalidSpecError";
    this.field = field;
  }
}

/** No sweep with this id. */
export class SweepNotFoundError extends CoordinatorError {
  readonly sweepId: string;
  constructor(sweepId: string) {
    super(`sweep "${sweepId}" not found; list the known sweeps with \`sweepctl list\``, status.NOT_FOUND);
    this.name = "SweepNotFoundError";
    this.sweepId = sweepId;
  }
}

/** The model folder named by the spec does not exist (or has no config.json). */
export class ModelNotFoundError extends CoordinatorError {
  readonly modelPath: string;
  constructor(modelPath: string, message: string, options?: { cause?: unknown }) {
    super(message, status.NOT_FOUND, options);
    this.name = "ModelNotFoundError";
    this.modelPath = modelPath;
  }
}

/** The model path resolves outside every configured model root. */
export class ModelPathDeniedError extends CoordinatorError {
  readonly modelPath: string;
  readonly roots: readonly string[];
  constructor(modelPath: string, roots: readonly string[]) {
    super(
      roots.length === 0
        ? `model path "${modelPath}" refused: the coordinator has no model root configured; start it with --model-root <dir>`
        : `model path "${modelPath}" is outside the configured model roots (${roots.join(", ")}); move the checkpoint under one of them or add a --model-root`,
      status.PERMISSION_DENIED,
    );
    this.name = "ModelPathDeniedError";
    this.modelPath = modelPath;
    this.roots = roots;
  }
}

/** A sweep with this id already exists. */
export class SweepExistsError extends CoordinatorError {
  readonly sweepId: string;
  constructor(sweepId: string) {
    super(`sweep "${sweepId}" already exists; choose another --id or resume it with \`sweepctl resume ${sweepId}\``, status.ALREADY_EXISTS);
    this.name = "SweepExistsError";
    this.sweepId = sweepId;
  }
}

/** The request is not allowed in the sweep's current state (e.g. resume of a running sweep is fine, cancel of a done one is not). */
export class SweepStateError extends CoordinatorError {
  readonly sweepId: string;
  constructor(sweepId: string, message: string) {
    super(message, status.FAILED_PRECONDITION);
    this.name = "SweepStateError";
    this.sweepId = sweepId;
  }
}

/** An agent spoke another protocol version; the message names both. */
export class ProtocolVersionError extends CoordinatorError {
  readonly agentId: string;
  constructor(agentId: string, agentVersion: number, coordinatorVersion: number) {
    super(
      `agent "${agentId}" speaks agent protocol version ${agentVersion}, this coordinator speaks version ${coordinatorVersion}; run an agent and coordinator of the same release`,
      status.FAILED_PRECONDITION,
    );
    this.name = "ProtocolVersionError";
    this.agentId = agentId;
  }
}

/** Missing or wrong API token. */
export class UnauthenticatedError extends CoordinatorError {
  constructor(message = "missing or wrong API token; pass it as `authorization: Bearer <token>` (sweepctl --token)") {
    super(message, status.UNAUTHENTICATED);
    this.name = "UnauthenticatedError";
  }
}

/**
 * Another coordinator wrote the state with a newer epoch: this instance is stale and must stop
 * writing (fencing), so two coordinators never both drive the same sweep.
 */
export class StaleCoordinatorError extends CoordinatorError {
  readonly key: string;
  constructor(key: string, ourEpoch: number, theirEpoch: number) {
    super(
      `state key "${key}" was written by coordinator epoch ${theirEpoch}, newer than this coordinator's epoch ${ourEpoch}; another coordinator is running on the same NATS, stop one of them`,
      status.ABORTED,
    );
    this.name = "StaleCoordinatorError";
    this.key = key;
  }
}

/** The coordinator is not ready (state not loaded yet, NATS unreachable, shutting down). */
export class UnavailableError extends CoordinatorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, status.UNAVAILABLE, options);
    this.name = "UnavailableError";
  }
}

/** An agent id that already has a live stream: a second connection under it is refused. */
export class AgentConnectedError extends CoordinatorError {
  constructor(
    readonly agentId: string,
    readonly sessionId: string,
  ) {
    super(
      `agent "${agentId}" is already connected (session ${sessionId}); a second connection under the same id is refused while the first is alive. Give every agent a unique --agent-id`,
      status.ALREADY_EXISTS,
    );
    this.name = "AgentConnectedError";
  }
}

/** A gRPC status object for any thrown value: coordinator errors keep their code, others are INTERNAL. */
export function grpcStatusOf(err: unknown, method: string): { code: status; details: string } {
  if (err instanceof CoordinatorError) return { code: err.code, details: err.message };
  const e = err as { name?: string; message?: string; field?: string } | undefined;
  // SpecError from @factsweep/shared names the field; duck-typed so a shape change there does not hide it.
  if (e && e.name === "SpecError") return { code: status.INVALID_ARGUMENT, details: e.message ?? String(err) };
  return { code: status.INTERNAL, details: `${method}: ${e?.message ?? String(err)}` };
}

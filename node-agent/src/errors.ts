/**
 * Typed errors of the node agent. Each sets `name`, keeps the underlying error as `cause`, and
 * carries the ids a user needs to find the problem (agent, worker, shard).
 */

/** Base class of every error the agent raises on purpose. */
export class AgentError extends Error {
  override name = "AgentError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A command-line flag or environment value that cannot be used; names the flag and the fix. */
export class ConfigError extends AgentError {
  override name = "ConfigError";
  constructor(
    readonly field: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** nvidia-smi output or CUDA_VISIBLE_DEVICES that does not describe usable GPUs. */
export class GpuDiscoveryError extends AgentError {
  override name = "GpuDiscoveryError";
}

/**
 * The engine worker speaks another protocol version than this agent. Fatal: restarting the same
 * worker cannot fix it; the agent and the engine must be upgraded together.
 */
export class EngineVersionMismatchError extends AgentError {
  override name = "EngineVersionMismatchError";
  constructor(
    readonly worker: string,
    readonly expected: number,
    readonly got: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(
      `engine worker ${worker} speaks engine protocol version ${got ?? "unknown"}, this agent expects ${expected}; ` +
        `deploy the engine/ and node-agent/ of the same release`,
      options,
    );
  }
}

/** An error about one engine worker (`worker` is its name, e.g. `cuda:0`). */
export class WorkerError extends AgentError {
  override name = "WorkerError";
  constructor(
    readonly worker: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A worker process could not be started or did not complete its handshake. */
export class WorkerStartError extends WorkerError {
  override name = "WorkerStartError";
}

/** The worker running a shard died or was restarted while the shard needed it. */
export class WorkerLostError extends WorkerError {
  override name = "WorkerLostError";
}

/**
 * A shard could not be completed. `retryable` false means the input itself is at fault (the engine
 * answered INVALID_ARGUMENT, e.g. a prompt longer than the model's context): another attempt would
 * fail the same way.
 */
export class ShardError extends AgentError {
  override name = "ShardError";
  constructor(
    readonly shardId: string,
    readonly retryable: boolean,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The shard's lease was cancelled (by the coordinator or a forced drain) before it completed. */
export class ShardCancelledError extends AgentError {
  override name = "ShardCancelledError";
  constructor(
    readonly shardId: string,
    readonly reason: string,
  ) {
    super(`shard ${shardId} cancelled: ${reason}`);
  }
}

/** The coordinator refused this agent for good (protocol version, token): reconnecting cannot help. */
export class CoordinatorRefusedError extends AgentError {
  override name = "CoordinatorRefusedError";
  constructor(
    readonly agentId: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

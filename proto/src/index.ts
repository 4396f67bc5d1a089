/**
 * The wire contract of factsweep: every message between processes, generated from `proto/*.proto`
 * by ts-proto (`npm run gen`; `npm run gen:check` fails when the generated code is stale).
 *
 * @example
 * import { engine, agent } from "@factsweep/proto";
 * const req = engine.EngineRequest.encode({ requestId: 1, body: { $case: "hello", hello: { protocolVersion: ENGINE_PROTOCOL_VERSION } } }).finish();
 */
export * as engine from "./generated/engine.js";
export * as sweep from "./generated/sweep.js";
export * as agent from "./generated/agent.js";
export * as control from "./generated/control.js";

/**
 * Version of the agent <-> engine worker protocol (engine.proto); the worker refuses others. 3: a cell
 * may restore one head of a site (Cell.head); a worker of version 2 would ignore the field and restore
 * the whole site under the head's name, so it is refused at Hello.
 */
export const ENGINE_PROTOCOL_VERSION = 3;
/**
 * Version of the coordinator <-> agent protocol (agent.proto, and the ShardResult agents publish); the
 * coordinator refuses others. 2: results carry the lease id (ShardResult.lease_id) and are counted only
 * under the shard's current lease, so an agent of version 1 is refused at connect rather than having
 * every result dead-lettered. 3: shards may hold per-head cells (engine.Cell.head), which an agent of
 * version 2 would drop (its results then refused as not the planned cells).
 */
export const AGENT_PROTOCOL_VERSION = 3;

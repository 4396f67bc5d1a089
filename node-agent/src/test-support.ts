/**
 * Test support for node-agent's own tests (not exported by index.ts): the per-file hooks several
 * test files would otherwise repeat. Read the fields inside tests: they are set by `before`.
 */
import { after, before } from "node:test";
import { engineCommand, startResultsNats } from "@factsweep/testing";
import { EngineSupervisor } from "./engine-supervisor.js";
import { cpuSlots } from "./gpu-discovery.js";
import { memoryLogger } from "./log.js";
import { createAgentMetrics, type AgentMetrics } from "./metrics.js";

/** The results JetStream of a test file (`@factsweep/testing`'s `startResultsNats`). */
export type ResultsNats = Awaited<ReturnType<typeof startResultsNats>>;

/** A results nats-server for this test file: started before its tests (unless `skip`), stopped after them. */
export function resultsNatsForFile(skip: string | false): { nats: ResultsNats } {
  const env = {} as { nats: ResultsNats };
  before(async () => {
    if (!skip) env.nats = await startResultsNats();
  });
  after(async () => {
    await env.nats?.stop();
  });
  return env;
}

/** As {@link resultsNatsForFile}, plus one started CPU engine worker (`sup.workers[0]`), its metrics and log. */
export function engineWorkerForFile(skip: string | false): {
  nats: ResultsNats;
  sup: EngineSupervisor;
  metrics: AgentMetrics;
  log: ReturnType<typeof memoryLogger>;
} {
  const env = { metrics: createAgentMetrics(), log: memoryLogger() } as ReturnType<typeof engineWorkerForFile>;
  before(async () => {
    if (skip) return;
    env.nats = await startResultsNats();
    env.sup = new EngineSupervisor({ slots: cpuSlots(1), command: await engineCommand(), metrics: env.metrics, log: env.log });
    await env.sup.start();
  });
  after(async () => {
    if (skip) return;
    await env.sup?.stop();
    await env.nats?.stop();
  });
  return env;
}

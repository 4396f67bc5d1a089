/**
 * Prometheus registry per process (prom-client). Metric names are in metric-names.ts; this sets
 * the `component` label and the default process metrics (CPU, memory, event loop lag).
 */
import { collectDefaultMetrics, Registry } from "prom-client";

/**
 * A registry with default Node/process metrics and the label `component` (e.g. "coordinator",
 * "node-agent") on every metric.
 *
 * @example
 * const registry = createRegistry("coordinator");
 * const cells = new Counter({ name: METRICS.cellsTotal, help: "cells by status", labelNames: ["status"], registers: [registry] });
 */
export function createRegistry(component: string, opts: { defaultMetrics?: boolean; labels?: Record<string, string> } = {}): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ component, ...(opts.labels ?? {}) });
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  return registry;
}

/**
 * Prometheus registry per process (prom-client). Metric names are in metric-names.ts; this sets
 * the `component` label and the default process metrics (CPU, memory, event loop lag).
 */
import { collectDefaultMetrics, Registry } from "prom-client";

/**
 * A registry with the label `component` (e.g. "coordinator", "node-agent") on every metric and
 * prom-client's default process metrics (CPU, memory, event loop lag) named
 * `factsweep_<component>_process_...` (the prefix the coordinator and dashboards use; `-` becomes
 * `_`), so processes sharing a Prometheus do not collide on the bare default names.
 *
 * @example
 * const registry = createRegistry("coordinator");
 * const cells = new Counter({ name: METRICS.cellsTotal, help: "cells by status", labelNames: ["status"], registers: [registry] });
 */
export function createRegistry(
  component: string,
  opts: { defaultMetrics?: boolean; defaultMetricsPrefix?: string; labels?: Record<string, string> } = {},
): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ component, ...(opts.labels ?? {}) });
  const prefix = opts.defaultMetricsPrefix ?? `factsweep_${component.replace(/[^A-Za-z0-9_]/g, "_")}_`;
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix });
  return registry;
}

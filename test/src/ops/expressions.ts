/**
 * Every PromQL expression the project ships — dashboard panel targets, dashboard variable
 * queries and alert rules — read from the committed files, each with where it came from.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import { METRICS } from "@factsweep/shared";
import { grafanaDashboardsDir, prometheusDir } from "./paths.js";
import { labelValuesSelector } from "./promql.js";

/** A Grafana dashboard as far as the tests read it. */
export interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query?: unknown; current?: { value?: unknown }; datasource?: { uid?: string } }> };
}

/** A Grafana panel as far as the tests read it. */
export interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: Array<{ refId: string; expr?: string; datasource?: { type?: string; uid?: string } }>;
}

/** An alert or recording rule. */
export interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** The dashboards under dashboards/grafana/dashboards, by file name. */
export function loadDashboards(): Map<string, Dashboard> {
  const out = new Map<string, Dashboard>();
  for (const f of readdirSync(grafanaDashboardsDir)
    .filter((f) => f.endsWith(".json"))
    .sort()) {
    out.set(f, JSON.parse(readFileSync(join(grafanaDashboardsDir, f), "utf8")) as Dashboard);
  }
  return out;
}

/** The rule files under dashboards/prometheus/rules, by file name. */
export function loadRules(): Map<string, Rule[]> {
  const dir = join(prometheusDir, "rules");
  const out = new Map<string, Rule[]>();
  for (const f of readdirSync(dir)
    .filter((f) => f.endsWith(".yml") || f.endsWith(".yaml"))
    .sort()) {
    const doc = parse(readFileSync(join(dir, f), "utf8")) as { groups: Array<{ name: string; rules: Rule[] }> };
    out.set(
      f,
      doc.groups.flatMap((g) => g.rules),
    );
  }
  return out;
}

/** One shipped expression and where it is. */
export interface ShippedExpression {
  /** e.g. `sweep-overview.json › ETA › A` or `factsweep-alerts.yml › FactsweepAgentDown`. */
  origin: string;
  kind: "panel" | "variable" | "alert" | "record";
  expr: string;
}

/** Every expression of every dashboard (panel targets and variable queries) and rule file. */
export function shippedExpressions(): ShippedExpression[] {
  const out: ShippedExpression[] = [];
  for (const [file, d] of loadDashboards()) {
    for (const p of d.panels) {
      for (const t of p.targets ?? []) out.push({ origin: `${file} › ${p.title} › ${t.refId}`, kind: "panel", expr: t.expr ?? "" });
    }
    for (const v of d.templating.list) {
      if (v.type !== "query") continue;
      const q = typeof v.query === "string" ? v.query : (v.query as { query?: string } | undefined)?.query;
      // label_values(selector, label) is Grafana's; Prometheus answers the selector.
      out.push({ origin: `${file} › variable ${v.name}`, kind: "variable", expr: labelValuesSelector(q ?? "") ?? q ?? "" });
    }
  }
  for (const [file, rules] of loadRules()) {
    for (const r of rules) out.push({ origin: `${file} › ${r.alert ?? r.record}`, kind: r.alert ? "alert" : "record", expr: r.expr });
  }
  return out;
}

/** The project's metric names (shared/src/metric-names.ts). */
export const PROJECT_METRICS: ReadonlySet<string> = new Set(Object.values(METRICS));

/**
 * Metrics the expressions may use besides the project's: prom-client's default process and Node
 * metrics, exported with the prefix `factsweep_<component>_` (shared's createRegistry:
 * `factsweep_coordinator_`, `factsweep_node_agent_`), and Prometheus' own per-target `up`.
 */
export const DEFAULT_METRICS: ReadonlySet<string> = new Set([
  "up",
  "factsweep_coordinator_process_resident_memory_bytes",
  "factsweep_coordinator_nodejs_eventloop_lag_p99_seconds",
  "factsweep_coordinator_nodejs_heap_size_used_bytes",
  "factsweep_node_agent_process_resident_memory_bytes",
  "factsweep_node_agent_process_cpu_seconds_total",
]);

/** Metrics that Prometheus itself attaches to every target, so no /metrics page lists them. */
export const SYNTHETIC_METRICS: ReadonlySet<string> = new Set(["up"]);

#!/usr/bin/env node
// long-file: one description per dashboard and panel, in dashboard order, is easier to review than a split by dashboard.
// Writes the Grafana dashboards in grafana/dashboards/ from one description per panel, so every
// panel gets the same datasource reference, ids and layout. Run `node dashboards/generate.mjs`
// after editing; `--check` exits 1 when the committed JSON differs from what this file produces.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outDir = join(here, "grafana", "dashboards");

/** The uid of the datasource provisioned by grafana/provisioning/datasources/prometheus.yaml. */
const DATASOURCE_UID = "factsweep-prometheus";
/** Every panel and target refers to the datasource through this dashboard variable. */
const ds = { type: "prometheus", uid: "${DS_PROMETHEUS}" };

const AGENT = 'job="factsweep-agent"';
const COORD = 'job="factsweep-coordinator"';
const RI = "$__rate_interval";

const datasourceVar = {
  name: "DS_PROMETHEUS",
  label: "Prometheus",
  type: "datasource",
  query: "prometheus",
  current: { selected: false, text: "factsweep Prometheus", value: DATASOURCE_UID },
  hide: 0,
  refresh: 1,
  regex: "",
  skipUrlSync: false,
};

function queryVar(name, label, query) {
  return {
    name,
    label,
    type: "query",
    datasource: ds,
    definition: query,
    query: { query, refId: `${name}-query` },
    refresh: 2,
    includeAll: true,
    multi: true,
    allValue: ".*",
    current: { selected: true, text: ["All"], value: ["$__all"] },
    sort: 1,
    hide: 0,
    regex: "",
    skipUrlSync: false,
  };
}

/** One panel: `targets` is a list of [expr, legend]. */
function panel(type, title, description, unit, targets, w = 12, h = 8, extra = {}) {
  return { type, title, description, unit, targets, w, h, extra };
}

function build(uid, title, description, variables, rows) {
  const panels = [];
  let id = 1;
  let y = 0;
  for (const row of rows) {
    let x = 0;
    let rowHeight = 0;
    for (const p of row) {
      const fieldConfig = { defaults: { unit: p.unit }, overrides: [] };
      if (p.extra.min !== undefined) fieldConfig.defaults.min = p.extra.min;
      if (p.extra.max !== undefined) fieldConfig.defaults.max = p.extra.max;
      if (p.type === "timeseries") fieldConfig.defaults.custom = { drawStyle: "line", lineWidth: 1, fillOpacity: 10, showPoints: "never" };
      panels.push({
        id: id++,
        type: p.type,
        title: p.title,
        description: p.description,
        datasource: ds,
        gridPos: { h: p.h, w: p.w, x, y },
        fieldConfig,
        options:
          p.type === "timeseries"
            ? { legend: { displayMode: "list", placement: "bottom", showLegend: true }, tooltip: { mode: "multi", sort: "desc" } }
            : { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, orientation: "auto" },
        targets: p.targets.map(([expr, legendFormat], i) => ({
          refId: String.fromCharCode(65 + i),
          datasource: ds,
          expr,
          legendFormat,
          range: p.type === "timeseries",
          instant: p.type !== "timeseries",
        })),
      });
      x += p.w;
      rowHeight = Math.max(rowHeight, p.h);
    }
    y += rowHeight;
  }
  return {
    uid,
    title,
    description,
    tags: ["factsweep"],
    editable: true,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    refresh: "10s",
    time: { from: "now-1h", to: "now" },
    timepicker: {},
    timezone: "",
    annotations: { list: [] },
    links: [{ type: "dashboards", tags: ["factsweep"], asDropdown: false, title: "factsweep", includeVars: false, keepTime: true }],
    templating: { list: [datasourceVar, ...variables] },
    panels,
  };
}

const rate = (metric, sel = "") => `rate(${metric}${sel ? `{${sel}}` : ""}[${RI}])`;
// Counters with a label only exist once an event happened; a panel shows 0 instead of "No data".
const orZero = (expr) => `(${expr}) or vector(0)`;
const quantiles = (metric, sel, by = "le") =>
  [0.5, 0.9, 0.99].map((q) => [
    `histogram_quantile(${q}, sum by (${by}) (${rate(`${metric}_bucket`, sel)}))`,
    `p${q * 100}${by === "le" ? "" : " {{instance}}"}`,
  ]);

const sweepOverview = build(
  "factsweep-sweep-overview",
  "factsweep / Sweep overview",
  "Progress, throughput and ETA of the running sweeps; failed and retried shards and lease expirations.",
  [queryVar("sweep", "Sweep", "label_values(factsweep_sweep_progress_ratio, sweep)")],
  [
    [
      panel(
        "bargauge",
        "Progress",
        "Done cells / planned cells per sweep.",
        "percentunit",
        [['factsweep_sweep_progress_ratio{sweep=~"$sweep"}', "{{sweep}}"]],
        12,
        8,
        { min: 0, max: 1 },
      ),
      panel(
        "stat",
        "ETA",
        "Cells still to do in the selected sweeps divided by the current rate of done cells.",
        "s",
        [
          [
            `sum((1 - factsweep_sweep_progress_ratio{sweep=~"$sweep"}) * factsweep_cells_planned{sweep=~"$sweep"}) / sum(${rate("factsweep_cells_total", 'status="done"')})`,
            "ETA",
          ],
        ],
        6,
      ),
      panel("stat", "Active sweeps", "Sweeps the coordinator is running.", "none", [["sum(factsweep_sweeps_active)", "active"]], 6),
    ],
    [
      panel("timeseries", "Cells per second", "Cells finished per second, cluster-wide (coordinator's count of consumed results).", "cps", [
        [`sum by (status) (${rate("factsweep_cells_total")})`, "{{status}}"],
      ]),
      panel("stat", "Cells done / planned", "Cells done so far and planned in the selected sweeps.", "short", [
        ['sum(factsweep_sweep_progress_ratio{sweep=~"$sweep"} * factsweep_cells_planned{sweep=~"$sweep"})', "done"],
        ['sum(factsweep_cells_planned{sweep=~"$sweep"})', "planned"],
      ]),
    ],
    [
      panel(
        "timeseries",
        "Shards per second by outcome",
        "Shards done, failed (attempts exhausted) and retried.",
        "ops",
        [[`sum by (status) (${rate("factsweep_shards_total")})`, "{{status}}"]],
        8,
      ),
      panel(
        "stat",
        "Failed shards (1h)",
        "Shards that failed in the last hour.",
        "short",
        [[orZero('sum(increase(factsweep_shards_total{status="failed"}[1h]))'), "failed"]],
        4,
      ),
      panel(
        "stat",
        "Retried shards (1h)",
        "Shard re-leases after a failure or an expired lease in the last hour.",
        "short",
        [["sum(increase(factsweep_shard_retries_total[1h]))", "retried"]],
        4,
      ),
      panel(
        "timeseries",
        "Lease expirations",
        "Leases that expired because an agent stopped renewing them (agent died or stalled).",
        "ops",
        [[`sum(${rate("factsweep_lease_expirations_total")})`, "expired/s"]],
        8,
      ),
    ],
  ],
);

const agentsGpus = build(
  "factsweep-agents-gpus",
  "factsweep / Agents and GPUs",
  "Per-agent throughput, engine batch latency, engine cache and GPU memory.",
  [queryVar("instance", "Agent", `label_values(up{${AGENT}}, instance)`)],
  [
    [
      panel("timeseries", "Cells per second per agent", "Cells computed by each agent's engine workers.", "cps", [
        [`sum by (instance) (${rate("factsweep_agent_cells_total", `${AGENT}, instance=~"$instance"`)})`, "{{instance}}"],
      ]),
      panel("stat", "Agents up", "Agent /metrics endpoints Prometheus reaches.", "none", [[`sum(up{${AGENT}, instance=~"$instance"})`, "up"]], 4),
      panel(
        "stat",
        "Workers ready",
        "Engine workers ready to take batches.",
        "none",
        [[`sum(factsweep_workers_ready{${AGENT}, instance=~"$instance"})`, "ready"]],
        4,
      ),
      panel(
        "stat",
        "Worker restarts (1h)",
        "Engine workers restarted after dying.",
        "short",
        [[orZero(`sum(increase(factsweep_worker_restarts_total{${AGENT}, instance=~"$instance"}[1h]))`), "restarts"]],
        4,
      ),
    ],
    [
      panel(
        "timeseries",
        "Worker busy ratio",
        "Share of the last minute each engine worker (GPU) had a request in flight: its engine was computing. Below 1 while shards wait: the worker idles between engine calls (prepare, agent round trips, no work leased).",
        "percentunit",
        [[`max by (instance, worker) (factsweep_agent_worker_busy_ratio{${AGENT}, instance=~"$instance"})`, "{{instance}} w{{worker}}"]],
        24,
        8,
        { min: 0, max: 1 },
      ),
    ],
    [
      panel(
        "timeseries",
        "Engine batch latency",
        "Quantiles of the time a worker takes for one batch of cells.",
        "s",
        quantiles("factsweep_engine_batch_seconds", `${AGENT}, instance=~"$instance"`),
      ),
      panel(
        "timeseries",
        "Shard duration",
        "Quantiles of lease-to-publish time of one shard.",
        "s",
        quantiles("factsweep_shard_duration_seconds", `${AGENT}, instance=~"$instance"`),
      ),
    ],
    [
      panel(
        "timeseries",
        "Cache hit ratio",
        "Share of cell batches whose prompt's clean and corrupted runs were already cached.",
        "percentunit",
        [
          [
            `sum by (instance) (${rate("factsweep_cache_hits_total", `${AGENT}, instance=~"$instance"`)}) / (sum by (instance) (${rate("factsweep_cache_hits_total", `${AGENT}, instance=~"$instance"`)}) + sum by (instance) (${rate("factsweep_cache_misses_total", `${AGENT}, instance=~"$instance"`)}))`,
            "{{instance}}",
          ],
        ],
        8,
        8,
        { min: 0, max: 1 },
      ),
      panel(
        "timeseries",
        "Cache bytes",
        "Bytes held by each worker's run cache.",
        "bytes",
        [[`sum by (instance, worker) (factsweep_cache_bytes{${AGENT}, instance=~"$instance"})`, "{{instance}} w{{worker}}"]],
        8,
      ),
      panel(
        "timeseries",
        "GPU memory used",
        "Device memory in use by each worker.",
        "bytes",
        [[`sum by (instance, worker) (factsweep_gpu_memory_used_bytes{${AGENT}, instance=~"$instance"})`, "{{instance}} w{{worker}}"]],
        8,
      ),
    ],
    [
      panel("timeseries", "Shards per second per agent", "Shards each agent finished, by outcome.", "ops", [
        [`sum by (instance, outcome) (${rate("factsweep_shard_duration_seconds_count", `${AGENT}, instance=~"$instance"`)})`, "{{instance}} {{outcome}}"],
      ]),
      panel("timeseries", "JetStream publish latency per agent", "p99 of the publish round trip of each agent's shard results.", "s", [
        [`histogram_quantile(0.99, sum by (le, instance) (${rate("factsweep_publish_seconds_bucket", `${AGENT}, instance=~"$instance"`)}))`, "{{instance}}"],
      ]),
    ],
    [
      panel("timeseries", "Agent resident memory", "Resident memory of each agent's Node process (engine workers are separate processes).", "bytes", [
        [`factsweep_node_agent_process_resident_memory_bytes{${AGENT}, instance=~"$instance"}`, "{{instance}}"],
      ]),
      panel("timeseries", "Agent CPU", "CPU seconds per second used by each agent's Node process.", "percentunit", [
        [rate("factsweep_node_agent_process_cpu_seconds_total", `${AGENT}, instance=~"$instance"`), "{{instance}}"],
      ]),
    ],
  ],
);

const coordinator = build(
  "factsweep-coordinator",
  "factsweep / Coordinator",
  "The coordinator itself: queue, leases, agents, result consumption and JetStream publish latency.",
  [],
  [
    [
      panel("timeseries", "Queue depth and shards in flight", "Shards waiting for a lease and shards leased to agents.", "short", [
        [`sum(factsweep_queue_depth{${COORD}})`, "queued"],
        [`sum(factsweep_shards_in_flight{${COORD}})`, "in flight"],
      ]),
      panel("timeseries", "Connected agents", "Agents with an open lease stream.", "none", [[`sum(factsweep_agents_connected{${COORD}})`, "agents"]], 6),
      panel("stat", "Coordinator up", "1 while Prometheus reaches the coordinator's /metrics.", "none", [[`up{${COORD}}`, "{{instance}}"]], 6),
    ],
    [
      panel(
        "timeseries",
        "Results consumed",
        "Shard results read from JetStream per second; duplicates are redeliveries or retried shards already counted.",
        "ops",
        [[`sum by (duplicate) (${rate("factsweep_results_consumed_total", COORD)})`, "duplicate={{duplicate}}"]],
      ),
      panel(
        "timeseries",
        "JetStream publish latency",
        "Quantiles of the publish round trip of shard results (acked by JetStream).",
        "s",
        quantiles("factsweep_publish_seconds", ""),
      ),
    ],
    [
      panel(
        "timeseries",
        "Results refused and reports ignored",
        "Results refused (forged, broken, of no lease; each is in the FACTSWEEP_RESULTS_DEAD stream), done/failed reports for leases the agent does not hold, and shards reported done whose result never came (leased again), per second.",
        "ops",
        [
          [`sum by (reason) (${rate("factsweep_results_rejected_total", COORD)})`, "refused: {{reason}}"],
          [`sum by (report) (${rate("factsweep_lease_reports_ignored_total", COORD)})`, "ignored {{report}}"],
          [`sum(${rate("factsweep_shards_uncounted_total", COORD)})`, "done, never counted"],
        ],
        24,
      ),
    ],
    [
      panel(
        "timeseries",
        "ROME covariances",
        "Edit sweeps' key covariances C: merged from their covariance shards by the coordinator (once per cluster), and used by edit shards on the agents, fetched from the object store or from the agent's own copy, per second.",
        "ops",
        [
          [`sum(${rate("factsweep_covariances_total", COORD)})`, "computed"],
          [`sum by (source) (${rate("factsweep_agent_covariances_total", AGENT)})`, "agents: {{source}}"],
        ],
        24,
      ),
    ],
    [
      panel(
        "timeseries",
        "Lease expirations and retries",
        "Leases expired and shards re-leased per second.",
        "ops",
        [
          [`sum(${rate("factsweep_lease_expirations_total", COORD)})`, "lease expirations"],
          [`sum(${rate("factsweep_shard_retries_total", COORD)})`, "retries"],
        ],
        8,
      ),
      panel(
        "timeseries",
        "Event loop lag",
        "p99 lag of the coordinator's Node event loop; high values delay heartbeats and leases.",
        "s",
        [[`factsweep_coordinator_nodejs_eventloop_lag_p99_seconds{${COORD}}`, "p99"]],
        8,
      ),
      panel(
        "timeseries",
        "Coordinator memory",
        "Resident memory and V8 heap used (prom-client defaults, prefixed factsweep_coordinator_).",
        "bytes",
        [
          [`factsweep_coordinator_process_resident_memory_bytes{${COORD}}`, "resident"],
          [`factsweep_coordinator_nodejs_heap_size_used_bytes{${COORD}}`, "heap used"],
        ],
        8,
      ),
    ],
  ],
);

const dashboards = { "sweep-overview.json": sweepOverview, "agents-gpus.json": agentsGpus, "coordinator.json": coordinator };

const check = process.argv.includes("--check");
let stale = [];
for (const [file, dash] of Object.entries(dashboards)) {
  const text = JSON.stringify(dash, null, 2) + "\n";
  const path = join(outDir, file);
  if (check) {
    let old = "";
    try {
      old = readFileSync(path, "utf8");
    } catch {}
    if (old !== text) stale.push(path);
  } else writeFileSync(path, text);
}
if (stale.length) {
  console.error(`dashboards out of date: ${stale.join(", ")}; run: node dashboards/generate.mjs`);
  process.exit(1);
}

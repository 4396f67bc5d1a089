/**
 * The coordinator's Prometheus metrics (names from METRICS in @factsweep/shared). Gauges read the
 * live state at scrape time; no per-prompt, per-layer or per-shard labels.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import { METRICS } from "@factsweep/shared";
import { REJECT_REASONS } from "./result-check.js";

/** Live numbers the gauges read at scrape time. */
export interface GaugeSource {
  shardsInFlight(): number;
  queueDepth(): number;
  agentsConnected(): number;
  sweeps(): { sweepId: string; active: boolean; plannedCells: number; doneCells: number }[];
}

/** Counters the coordinator bumps, and gauges bound to a {@link GaugeSource}. */
export class CoordinatorMetrics {
  readonly cells: Counter<"status">;
  readonly shards: Counter<"status">;
  readonly leaseExpirations: Counter;
  readonly retries: Counter;
  readonly resultsConsumed: Counter<"duplicate">;
  readonly resultsRejected: Counter<"reason">;
  readonly leaseReportsIgnored: Counter<"report">;
  readonly shardsUncounted: Counter;
  readonly covariances: Counter<"source">;

  constructor(registry: Registry, source: GaugeSource) {
    const registers = [registry];
    this.cells = new Counter({
      name: METRICS.cellsTotal,
      help: "Cells finished, by status (done: result aggregated; failed: shard gave up)",
      labelNames: ["status"],
      registers,
    });
    this.shards = new Counter({ name: METRICS.shardsTotal, help: "Shards finished or retried, by status", labelNames: ["status"], registers });
    this.leaseExpirations = new Counter({
      name: METRICS.leaseExpirations,
      help: "Leases that expired without a heartbeat, or were revoked after the maximum lease time (--max-lease-ms)",
      registers,
    });
    this.retries = new Counter({ name: METRICS.retries, help: "Shards re-queued for another attempt (expiry, retryable failure, agent loss)", registers });
    this.resultsConsumed = new Counter({
      name: METRICS.resultsConsumed,
      help: "ShardResults read from the results stream; duplicate=true ones were ignored",
      labelNames: ["duplicate"],
      registers,
    });
    this.resultsRejected = new Counter({
      name: METRICS.resultsRejected,
      help: "Messages of the results stream refused (forged, broken, of no lease) and dead-lettered, by reason",
      labelNames: ["reason"],
      registers,
    });
    this.leaseReportsIgnored = new Counter({
      name: METRICS.leaseReportsIgnored,
      help: "ShardDone/ShardFailed reports for a lease the reporting agent does not hold, ignored",
      labelNames: ["report"],
      registers,
    });
    this.shardsUncounted = new Counter({
      name: METRICS.shardsUncounted,
      help: "Shards reported done whose result was not counted in time, leased again",
      registers,
    });
    this.covariances = new Counter({
      name: METRICS.covariances,
      help: "ROME key covariances merged from their covariance shards and stored in the object store (computed once per cluster)",
      labelNames: ["source"],
      registers,
    });
    this.covariances.inc({ source: "computed" }, 0);
    // Start every labelled counter at 0 so dashboards and rate() see the series from the start.
    for (const status of ["done", "failed"]) this.cells.inc({ status }, 0);
    for (const status of ["done", "failed", "retried"]) this.shards.inc({ status }, 0);
    for (const duplicate of ["true", "false"]) this.resultsConsumed.inc({ duplicate }, 0);
    for (const reason of REJECT_REASONS) this.resultsRejected.inc({ reason }, 0);
    for (const report of ["done", "failed"]) this.leaseReportsIgnored.inc({ report }, 0);
    new Gauge({
      name: METRICS.shardsInFlight,
      help: "Shards leased to agents",
      registers,
      collect() {
        this.set(source.shardsInFlight());
      },
    });
    new Gauge({
      name: METRICS.queueDepth,
      help: "Shards of active sweeps waiting for a lease",
      registers,
      collect() {
        this.set(source.queueDepth());
      },
    });
    new Gauge({
      name: METRICS.agentsConnected,
      help: "Agents with a live stream",
      registers,
      collect() {
        this.set(source.agentsConnected());
      },
    });
    new Gauge({
      name: METRICS.sweepsActive,
      help: "Sweeps running",
      registers,
      collect() {
        this.set(source.sweeps().filter((s) => s.active).length);
      },
    });
    new Gauge({
      name: METRICS.cellsPlanned,
      help: "Cells planned per sweep",
      labelNames: ["sweep"],
      registers,
      collect() {
        this.reset();
        for (const s of source.sweeps()) this.set({ sweep: s.sweepId }, s.plannedCells);
      },
    });
    new Gauge({
      name: METRICS.sweepProgress,
      help: "Aggregated cells / planned cells per sweep",
      labelNames: ["sweep"],
      registers,
      collect() {
        this.reset();
        for (const s of source.sweeps()) this.set({ sweep: s.sweepId }, s.plannedCells > 0 ? s.doneCells / s.plannedCells : 0);
      },
    });
  }
}

#!/usr/bin/env node
// Prints the rows of a coordinator-load results file (run.mjs --out) as a Markdown table.
//
//   node bench/coordinator-load/table.mjs bench/results/coordinator-load-cpu.json
import { readFileSync } from "node:fs";

const out = JSON.parse(readFileSync(process.argv[2], "utf8"));
const cols = [
  ["agents", (r) => r.agents],
  ["shards", (r) => r.shards.toLocaleString("en")],
  ["counted (window s)", (r) => `${r.shards_done.toLocaleString("en")}${r.complete ? " (all)" : ""} (${r.window_s.toFixed(0)})`],
  ["launch s", (r) => r.launch_s.toFixed(1)],
  ["results/s", (r) => Math.round(r.results_per_s).toLocaleString("en")],
  ["coord cores", (r) => r.coord_cpu_cores?.toFixed(2)],
  ["results/s per coord core", (r) => (r.results_per_s_per_coord_core ? Math.round(r.results_per_s_per_coord_core).toLocaleString("en") : "–")],
  ["lease p50 / p99 ms", (r) => `${r.lease_p50_ms?.toFixed(0)} / ${r.lease_p99_ms?.toFixed(0)}`],
  ["publish p50 / p99 ms", (r) => `${r.publish_p50_ms?.toFixed(0)} / ${r.publish_p99_ms?.toFixed(0)}`],
  ["coord RSS MB (heap at end)", (r) => `${Math.round(r.rss_mb)} (${r.heap_used_end_mb == null ? "–" : Math.round(r.heap_used_end_mb)})`],
  ["nats cores / RSS MB", (r) => `${r.nats_cpu_cores?.toFixed(2)} / ${Math.round(r.nats_rss_mb)}`],
  ["generator cores", (r) => r.gen_cpu_cores?.toFixed(2)],
  ["NATS store MB", (r) => Math.round(r.nats_storage_mb)],
  ["× baseline results/s", (r) => r.vs_baseline?.results_per_s?.toFixed(2)],
];
console.log(`| ${cols.map((c) => c[0]).join(" | ")} |`);
console.log(`|${cols.map(() => "---").join("|")}|`);
for (const r of out.rows) console.log(`| ${cols.map((c) => c[1](r)).join(" | ")} |`);

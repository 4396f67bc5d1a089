#!/usr/bin/env node
// Writes bench/results/coordinator-load.json, the stable figures issue 16 asks for so runs can be
// compared: one row per load run {agents, shards, results_per_s, lease_p99_ms, rss_mb} (from a
// run.mjs output) and {restart_1m_s, launch_1m_s} (from a restart.mjs output with a 1M row).
//
//   node bench/coordinator-load/stable.mjs <run.mjs output json> <restart.mjs output json> [--out bench/results/coordinator-load.json]
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: { out: { type: "string", default: join(root, "bench/results/coordinator-load.json") } },
});
if (positionals.length !== 2) {
  console.error("usage: stable.mjs <run.mjs output json> <restart.mjs output json> [--out file]");
  process.exit(2);
}
const read = (p) => {
  try {
    return JSON.parse(readFileSync(p, "utf8"));
  } catch (err) {
    console.error(`${p}: not a readable JSON file (${err.message})`);
    process.exit(2);
  }
};
const load = read(positionals[0]);
const restart = read(positionals[1]);
if (load.bench !== "coordinator-load" || !Array.isArray(load.rows))
  throw new Error(`${positionals[0]}: not a run.mjs output (bench "coordinator-load" with rows)`);
if (restart.bench !== "coordinator-restart" || !Array.isArray(restart.rows))
  throw new Error(`${positionals[1]}: not a restart.mjs output (bench "coordinator-restart" with rows)`);
const big = restart.rows.find((r) => r.shards >= 1_000_000);
if (!big) throw new Error(`${positionals[1]}: no row of 1M shards (run restart.mjs --shards 1000000)`);
const rows = load.rows.map((r) => ({ agents: r.agents, shards: r.shards, results_per_s: r.results_per_s, lease_p99_ms: r.lease_p99_ms, rss_mb: r.rss_mb }));
const out = [...rows, { restart_1m_s: big.current_restart_s, launch_1m_s: big.launch_s }];
writeFileSync(resolve(opt.out), JSON.stringify(out, null, 1) + "\n");
console.log(JSON.stringify(out));

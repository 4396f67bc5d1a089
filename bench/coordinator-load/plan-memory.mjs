#!/usr/bin/env node
// Heap a launch's plan holds at once (issue 16, what the 1M run's RSS peak is made of): planSweep of the
// load sweep (spec.mjs) returns every shard as a sweep.Shard object before the coordinator hands them
// to the scheduler 1,024 at a time; heap after a forced GC, with the plan alive, per shard. Against it,
// planSweepLazy (what the coordinator now plans with): its shards made a prompt at a time as they are walked.
//
//   node --expose-gc bench/coordinator-load/plan-memory.mjs [--shards 1000000] [--mode both|array|lazy]
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { DEFAULT_PLAN_LIMITS, parseSweepSpec, planSweep, planSweepLazy } from "@factsweep/planning";
import { writeLoadSpec } from "./spec.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { values: opt } = parseArgs({ options: { shards: { type: "string", default: "1000000" }, mode: { type: "string", default: "both" } } });
if (typeof global.gc !== "function") throw new Error("run with node --expose-gc");
const written = writeLoadSpec(mkdtempSync(join(tmpdir(), "plan-memory-")), join(root, "models/mamba-facts"), Number(opt.shards));
const path = written.path;
// The limits run.mjs gives the coordinator for sweeps over 200k shards.
const limits = { ...DEFAULT_PLAN_LIMITS, maxShards: 2_000_000, maxSpecBytes: 512 * 1024 };
const spec = parseSweepSpec(readFileSync(path, "utf8"), { baseDir: dirname(path), limits });
const mb = (b) => Math.round((b / 2 ** 20) * 10) / 10;
const heap = () => {
  global.gc();
  return process.memoryUsage().heapUsed;
};

// The array (planSweep, the launch before the lazy plan): every shard alive once planned.
function arrayPlan() {
  const m0 = heap();
  const t0 = performance.now();
  const p = planSweep(spec, "coordinator-load-abc123", { limits });
  const ms = performance.now() - t0;
  const held = heap() - m0;
  const t1 = performance.now();
  let n = 0;
  for (const sh of p.shards) n += sh.cells.length; // walked as the launch walks them
  const walkMs = performance.now() - t1;
  return {
    shards: p.shards.length,
    cells: n,
    plan_heap_mb: mb(held),
    heap_bytes_per_shard: Math.round(held / p.shards.length),
    plan_and_walk_ms: Math.round(ms + walkMs),
    plan_ms: Math.round(ms),
  };
}

// The lazy plan (planSweepLazy, the coordinator's launch and restart): heap held after planning, and
// the most held while walking it (a forced GC every 65,536 shards, the walk's shards let go as the launch does).
function lazyPlan() {
  const m0 = heap();
  const t0 = performance.now();
  const p = planSweepLazy(spec, "coordinator-load-abc123", { limits });
  const ms = performance.now() - t0;
  const held = heap() - m0;
  const t1 = performance.now();
  let peak = held;
  let n = 0;
  let i = 0;
  let gcMs = 0;
  for (const sh of p.shards) {
    n += sh.cells.length;
    if (++i % 65536 === 0) {
      const g0 = performance.now();
      peak = Math.max(peak, heap() - m0);
      gcMs += performance.now() - g0;
    }
  }
  return {
    shards: p.shards.length,
    cells: n,
    plan_heap_mb: mb(held),
    walk_peak_heap_mb: mb(peak),
    plan_and_walk_ms: Math.round(ms + performance.now() - t1 - gcMs),
    plan_ms: Math.round(ms),
  };
}

const array = opt.mode === "lazy" ? undefined : arrayPlan();
const lazy = opt.mode === "array" ? undefined : lazyPlan();
console.log(
  JSON.stringify({
    ...(array ? { array } : {}),
    ...(lazy ? { lazy } : {}),
    ...(array && lazy
      ? {
          lazy_over_array: {
            walk_peak_heap: +(lazy.walk_peak_heap_mb / array.plan_heap_mb).toFixed(3),
            plan_and_walk_time: +(lazy.plan_and_walk_ms / array.plan_and_walk_ms).toFixed(2),
          },
        }
      : {}),
    rss_mb: mb(process.memoryUsage().rss),
  }),
);

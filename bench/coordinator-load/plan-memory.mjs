#!/usr/bin/env node
// Heap a launch's plan holds at once (issue 16, what the 1M run's RSS peak is made of): planSweep of the
// load sweep (spec.mjs) returns every shard as a sweep.Shard object before the coordinator hands them
// to the scheduler 1,024 at a time; heap after a forced GC, with the plan alive, per shard.
//
//   node --expose-gc bench/coordinator-load/plan-memory.mjs [--shards 1000000]
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { DEFAULT_PLAN_LIMITS, parseSweepSpec, planSweep } from "@factsweep/planning";
import { writeLoadSpec } from "./spec.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { values: opt } = parseArgs({ options: { shards: { type: "string", default: "1000000" } } });
if (typeof global.gc !== "function") throw new Error("run with node --expose-gc");
const written = writeLoadSpec(mkdtempSync(join(tmpdir(), "plan-memory-")), join(root, "models/mamba-facts"), Number(opt.shards));
const path = written.path;
// The limits run.mjs gives the coordinator for sweeps over 200k shards.
const limits = { ...DEFAULT_PLAN_LIMITS, maxShards: 2_000_000, maxSpecBytes: 512 * 1024 };
const spec = parseSweepSpec(readFileSync(path, "utf8"), { baseDir: dirname(path), limits });
global.gc();
const m0 = process.memoryUsage().heapUsed;
const p = planSweep(spec, "coordinator-load-abc123", { limits });
global.gc();
const m1 = process.memoryUsage().heapUsed;
const mb = (b) => Math.round(b / 2 ** 20);
console.log(
  JSON.stringify({
    shards: p.shards.length,
    plan_heap_mb: mb(m1 - m0),
    heap_bytes_per_shard: Math.round((m1 - m0) / p.shards.length),
    rss_mb: mb(process.memoryUsage().rss),
  }),
);

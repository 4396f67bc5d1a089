#!/usr/bin/env node
// One sweep through the whole system, timed as a user sees it: runs `sweepctl launch <spec> --detach`
// against a running coordinator (agents already connected) and polls the coordinator's Get every
// 100 ms from the moment the command starts, until the sweep ends. Prints one JSON object:
//   launch_s        sweepctl launch started -> it returned (spec parsed, planned, shards durable)
//   first_result_s  sweepctl launch started -> the first cells counted done by the coordinator
//   done_s          sweepctl launch started -> the sweep done (the last result aggregated)
//   coordinator_s   the coordinator's own createdMs -> finishedMs
//   steady_cells_per_s  cells done after the first result / (done - first result)
//
//   node bench/scaleout/system.mjs --coordinator 127.0.0.1:7070 --spec spec.json --id sweep-1 [--timeout 600]
import { spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { control } from "@factsweep/proto";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const coordinator = flag("--coordinator", "127.0.0.1:7070");
const spec = resolve(flag("--spec"));
const id = flag("--id");
const timeoutS = Number(flag("--timeout", "600"));
if (!flag("--spec") || !id) {
  console.error("usage: node bench/scaleout/system.mjs --coordinator host:port --spec spec.json --id sweep-id [--timeout s]");
  process.exit(2);
}

const client = new control.SweepServiceClient(coordinator, grpc.credentials.createInsecure());
const get = () => new Promise((res) => client.get({ sweepId: id }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => res(e ? undefined : r)));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const t0 = Date.now();
const cli = spawn(process.execPath, [join(root, "sweepctl/dist/cli.js"), "--coordinator", coordinator, "launch", spec, "--id", id, "--detach", "--quiet"], {
  stdio: ["ignore", "ignore", "pipe"],
});
let cliErr = "";
cli.stderr.on("data", (d) => (cliErr += d));
let launchMs;
let launchCode;
cli.on("exit", (code) => {
  launchMs = Date.now() - t0;
  launchCode = code;
});

let firstMs;
let firstCells = 0;
let last;
const timeline = [];
for (;;) {
  const info = await get();
  const now = Date.now() - t0;
  if (info) {
    last = info;
    const done = Number(info.counts?.doneCells ?? 0);
    if (firstMs === undefined && done > 0) {
      firstMs = now;
      firstCells = done;
    }
    if (timeline.length === 0 || now - timeline[timeline.length - 1][0] >= 1000) timeline.push([now, done]);
    if (["done", "failed", "cancelled"].includes(info.state)) break;
  }
  if (launchCode !== undefined && launchCode !== 0) {
    console.error(`sweepctl launch exited ${launchCode}: ${cliErr.trim()}`);
    break;
  }
  if (now > timeoutS * 1000) {
    console.error(`sweep ${id} not finished after ${timeoutS} s`);
    break;
  }
  await sleep(100);
}
const doneMs = Date.now() - t0;
client.close();
const c = last?.counts ?? {};
const cells = Number(c.doneCells ?? 0);
const out = {
  sweep_id: id,
  state: last?.state ?? "unknown",
  planned_cells: Number(c.plannedCells ?? 0),
  cells,
  shards: c.shardsTotal,
  shards_failed: c.shardsFailed,
  retries: c.retries,
  prompt_errors: last?.promptErrors?.length ?? 0,
  launch_s: launchMs === undefined ? null : launchMs / 1000,
  first_result_s: firstMs === undefined ? null : firstMs / 1000,
  done_s: doneMs / 1000,
  coordinator_s: last && Number(last.finishedMs) > 0 ? (Number(last.finishedMs) - Number(last.createdMs)) / 1000 : null,
  cells_per_s: cells / (doneMs / 1000),
  steady_cells_per_s: firstMs !== undefined && doneMs > firstMs ? (cells - firstCells) / ((doneMs - firstMs) / 1000) : null,
  timeline,
};
console.log(JSON.stringify(out));
process.exit(out.state === "done" ? 0 : 1);

#!/usr/bin/env node
// Coordinator restart with S aggregated results (issue 16): how long a restarted coordinator takes
// to be ready (every running sweep's shard records and stored results loaded, its aggregate rebuilt)
// and its RSS then, against a baseline coordinator build over the same NATS state.
//
//   node bench/coordinator-load/restart.mjs [--shards 100000,1000000] [--baseline <coordinator/dist/main.js>]
//        [--out bench/results/coordinator-restart-cpu.json] [--note "..."] [--repeat N]
//
// Per size: a fresh nats-server; the coordinator launches the load spec of S one-cell shards
// (spec.mjs; the launch time is recorded: durable when the RPC returns) and is SIGKILLed; then every
// shard gets its result as agents would leave it (the `fakeEngine` test double's ShardResult in
// the aggregates bucket, in batches of 1,024 as the coordinator stores them, no shard record: a
// counted shard needs none; `--legacy-records` stores one result a key and one record per shard,
// done and counted, as coordinators before batches and the plan-derived shard state did; a
// --baseline older than f5ccb83 reads no batches, so pair it with --legacy-records),
// written straight through the coordinator's own StateStore; the sweep stays `running`, as after a crash a moment before its
// last result, so a restart must load all of it. Then the baseline build (if given) and this build
// are started in turn over that state; each reports the seconds from spawn to "ready", its RSS
// then, and the sweep's counted cells, which must equal the planned ones. This build runs twice:
// "full" finds no aggregate snapshot (the seeded state has none) and reads every stored result,
// then appends them to the sweep's snapshot (the script waits until the manifest covers all S, the
// seconds are `snapshot_write_s`); "current" then restarts from that snapshot and its tail.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { SNAPSHOTS_BUCKET } from "@factsweep/shared";
import { control, sweep } from "@factsweep/proto";
import { fakeEngine, freePort, startNatsServer } from "@factsweep/testing";
import { StateStore } from "@factsweep/coordinator";
import { DEFAULT_PLAN_LIMITS, parseSweepSpec, planSweep } from "@factsweep/planning";
import { procSample } from "./procstat.mjs";
import { writeLoadSpec } from "./spec.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { values: opt } = parseArgs({
  options: {
    shards: { type: "string", default: "100000,1000000" },
    baseline: { type: "string", default: "" },
    out: { type: "string", default: join(root, "bench/results/coordinator-restart-cpu.json") },
    note: { type: "string", default: "" },
    // A nats-server already holding the seeded state of a run stopped after seeding (launch and seeding of 1M take minutes): only the restarts.
    "nats-url": { type: "string", default: "" },
    // With --nats-url: launch and seed the sweep on that server and stop (later runs with --nats-url alone restart over it).
    "seed-only": { type: "boolean", default: false },
    // Profile this build's restart (stopped by SIGTERM so the profile is written).
    "cpu-prof-dir": { type: "string", default: "" },
    // Also seed one shard record per shard (done, counted): the state an older coordinator left.
    "legacy-records": { type: "boolean", default: false },
    // Restarts from the snapshot per build: the baseline (if given) and this build alternate, so pairs share the machine's noise.
    repeat: { type: "string", default: "1" },
  },
});
const sizes = opt.shards.split(",").map(Number);
const baseline = opt.baseline;
const outPath = resolve(opt.out);
const note = opt.note;
const profDir = opt["cpu-prof-dir"];
const current = join(root, "coordinator/dist/main.js");
const mb = (b) => Math.round((b / 2 ** 20) * 10) / 10;
const r2 = (x) => Math.round(x * 100) / 100;
const call = (c, m, req) => new Promise((res, rej) => m.call(c, req, new grpc.Metadata(), { deadline: Date.now() + 900_000 }, (e, r) => (e ? rej(e) : res(r))));

/** Starts a coordinator build; resolves with the seconds to "ready" and the process. */
async function startCoordinator(main, natsUrl, shards, prof = "") {
  const grpcPort = await freePort();
  const big = shards > 200_000;
  const argv = [
    ...(big ? ["--max-old-space-size=8192"] : []),
    ...(prof ? ["--cpu-prof", "--cpu-prof-dir", prof] : []),
    main,
    ...["--nats-url", natsUrl, "--grpc-port", String(grpcPort), "--http-port", "0", "--model-root", join(root, "models")],
    ...["--max-shards", "2000000", "--max-spec-bytes", String(2 ** 19)], // the coordinator's highest: the 1M load spec is 431 KB
    ...["--results-max-bytes", String((big ? 4096 : 1024) * 2 ** 20), "--kv-max-bytes", String((big ? 4096 : 1024) * 2 ** 20)],
  ];
  const t0 = performance.now();
  const child = spawn(process.execPath, argv, { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  await new Promise((res, rej) => {
    child.stderr.on("data", (d) => {
      log = (log + d.toString()).slice(-20_000);
      if (/ready: gRPC/.test(log)) res();
    });
    child.on("exit", (code) => rej(new Error(`coordinator ${main} exited ${code}:\n${log}`)));
  });
  const readyS = (performance.now() - t0) / 1000;
  child.removeAllListeners("exit");
  const exited = new Promise((r) => child.on("exit", r));
  const stop = async () => {
    child.kill(prof ? "SIGTERM" : "SIGKILL");
    await exited;
  };
  return { child, readyS, rss: procSample(child.pid)?.rss ?? 0, addr: `127.0.0.1:${grpcPort}`, stop, log: () => log };
}

/** Every shard of the sweep done and counted, its result stored: what the agents would have left. */
async function seedResults(natsUrl, sweepId, shards, specText, specDir) {
  const nc = await connect({ servers: natsUrl });
  // The bucket limits the coordinator runs with (a smaller one here would shrink the buckets).
  const big = shards > 200_000;
  const limits = {
    replicas: 1,
    resultsMaxBytes: (big ? 4096 : 1024) * 2 ** 20,
    resultsMaxAgeMs: 30 * 24 * 3600_000,
    kvMaxBytes: (big ? 4096 : 1024) * 2 ** 20,
  };
  const store = await StateStore.open(nc, { limits });
  // The shards are the plan of the sweep's spec (the coordinator stores no record per shard).
  const planned = planSweep(
    parseSweepSpec(specText, { baseDir: specDir, limits: { ...DEFAULT_PLAN_LIMITS, maxShards: 2_000_000, maxSpecBytes: 8 * 2 ** 20 } }),
    sweepId,
  ).shards;
  const t0 = performance.now();
  // A busy machine: a KV put may time out; storing a result again is harmless (the fold counts it once).
  const retry = async (f) => {
    for (let tries = 1; ; tries++) {
      try {
        return await f();
      } catch (err) {
        if (tries >= 5) throw err;
      }
    }
  };
  const encode = (shard) => sweep.ShardResult.encode(fakeEngine({ ...shard, sweepId, attempt: 1 }, "bench")).finish();
  // As the coordinator stores them: a batch per consumer flush of 1,024 (StateStore.saveResults); with
  // --legacy-records one put per result under its shard id and a record per shard, as coordinators did before.
  if (!opt["legacy-records"]) {
    for (let i = 0; i < planned.length; i += 8 * 1024) {
      await Promise.all(
        Array.from({ length: 8 }, (_, k) => planned.slice(i + k * 1024, i + (k + 1) * 1024))
          .filter((b) => b.length > 0)
          .map((b) => retry(() => store.saveResults(sweepId, b.map(encode)))),
      );
    }
  }
  for (let i = 0; opt["legacy-records"] && i < planned.length; i += 128) {
    await Promise.all(
      planned.slice(i, i + 128).map(async (shard) => {
        await retry(() => store.saveResult(shard.shardId, encode(shard)));
        const entry = {
          shardId: shard.shardId,
          sweepId,
          promptKey: shard.prompt.promptKey,
          cells: shard.cells.length,
          leaseId: "",
          leaseExpiresMs: 0,
          notBeforeMs: 0,
          lastError: "",
        };
        const prompt = sweep.PromptSpec.fromPartial({ index: shard.prompt.index, promptKey: shard.prompt.promptKey });
        const body = Buffer.from(sweep.Shard.encode({ ...shard, prompt }).finish()).toString("base64");
        store.saveShard({ ...entry, shard: body, state: "done", attempts: 1, agentId: "bench", resultConsumed: true });
      }),
    );
    if (i % 65_536 === 0) await store.flush();
  }
  await store.flush();
  await nc.close();
  return { shards: planned.length, seconds: (performance.now() - t0) / 1000 };
}

/** Seconds until the sweep's snapshot manifest covers `results` results. */
async function waitForSnapshot(natsUrl, sweepId, results, timeoutMs = 600_000) {
  const nc = await connect({ servers: natsUrl });
  const t0 = performance.now();
  try {
    const kv = await new Kvm(nc).open(SNAPSHOTS_BUCKET);
    for (;;) {
      const e = await kv.get(`${sweepId}.m`);
      if (e?.operation === "PUT" && JSON.parse(e.string()).data.results >= results) return (performance.now() - t0) / 1000;
      if (performance.now() - t0 > timeoutMs) throw new Error(`no snapshot of ${results} results within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await nc.close();
  }
}

const rows = [];
for (const shards of sizes) {
  const work = mkdtempSync(join(tmpdir(), "coord-restart-"));
  const spec = writeLoadSpec(work, join(root, "models/mamba-facts"), shards);
  const nats = opt["nats-url"] ? { url: opt["nats-url"], stop: async () => undefined } : await startNatsServer({ readyTimeoutMs: 30_000 });
  try {
    const row = { shards: spec.shards, launch_s: null };
    if (!opt["nats-url"] || opt["seed-only"]) {
      const first = await startCoordinator(current, nats.url, spec.shards);
      const client = new control.SweepServiceClient(first.addr, grpc.credentials.createInsecure());
      const tl = performance.now();
      await call(client, client.launch, { spec: spec.text, specDir: work, sweepId: "restart" });
      const launchS = (performance.now() - tl) / 1000;
      client.close();
      await first.stop();
      console.error(`${spec.shards} shards: launched (durable) in ${launchS.toFixed(1)} s; seeding results`);
      const seeded = await seedResults(nats.url, "restart", spec.shards, spec.text, work);
      console.error(`  ${seeded.shards} results written (and shard records with --legacy-records) in ${seeded.seconds.toFixed(1)} s`);
      row.launch_s = r2(launchS);
      if (opt["seed-only"]) continue;
    }
    // The baseline's first start reads every stored result (no snapshot yet); then this build's
    // ("full", which writes the snapshot); then from that snapshot, alternately, `--repeat` times each.
    const starts = [...(baseline ? [["baseline", baseline]] : []), ["full", current]];
    for (let i = 0; i < Number(opt.repeat); i++) starts.push(...(baseline ? [["baseline_snapshot", baseline]] : []), ["current", current]);
    const runs = {};
    for (const [name, main] of starts) {
      const c = await startCoordinator(main, nats.url, spec.shards, name === "current" ? profDir : "");
      const cl = new control.SweepServiceClient(c.addr, grpc.credentials.createInsecure());
      const info = await call(cl, cl.get, { sweepId: "restart" });
      cl.close();
      if (name === "full") {
        row.snapshot_write_s = r2(await waitForSnapshot(nats.url, "restart", spec.shards));
        console.error(`  full: snapshot of ${spec.shards} results stored ${row.snapshot_write_s} s after ready`);
      }
      await c.stop();
      const counted = Number(info.counts?.doneCells ?? 0);
      for (const l of c.log().split("\n")) if (/restart: .* shard record|snapshot|restored in/.test(l)) console.error(`  ${name}: ${l.trim()}`);
      console.error(`  ${name}: ready in ${c.readyS.toFixed(2)} s, RSS ${mb(c.rss)} MB, ${counted}/${info.counts?.plannedCells} cells counted`);
      if (counted !== spec.shards) throw new Error(`${name}: ${counted} cells counted after the restart, ${spec.shards} stored`);
      (runs[name] ??= []).push({ s: r2(c.readyS), rss: mb(c.rss) });
    }
    // One figure per build: the median of its runs (each run is in `<name>_restart_runs_s`).
    const median = (xs) => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];
    for (const [name, rs] of Object.entries(runs)) {
      row[`${name}_restart_s`] = median(rs.map((r) => r.s));
      row[`${name}_rss_mb`] = median(rs.map((r) => r.rss));
      if (rs.length > 1) row[`${name}_restart_runs_s`] = rs.map((r) => r.s);
    }
    if (baseline) row.speedup = r2(row.baseline_restart_s / row.current_restart_s);
    if (baseline) row.snapshot_restart_ratio = r2(row.current_restart_s / row.baseline_snapshot_restart_s);
    row.snapshot_speedup = r2(row.full_restart_s / row.current_restart_s);
    rows.push(row);
  } finally {
    await nats.stop();
  }
}
const out = {
  bench: "coordinator-restart",
  command: `node bench/coordinator-load/restart.mjs --shards ${sizes.join(",")}${baseline ? ` --baseline ${baseline}` : ""}${opt["legacy-records"] ? " --legacy-records" : ""}${opt.repeat !== "1" ? ` --repeat ${opt.repeat}` : ""}`,
  hardware: `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}`,
  date: new Date().toISOString(),
  note,
  rows,
};
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, JSON.stringify(out, null, 2) + "\n");
console.table(rows);
console.error(`written ${outPath}`);

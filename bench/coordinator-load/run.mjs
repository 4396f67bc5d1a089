#!/usr/bin/env node
// Coordinator at cluster scale (issue 16): N simulated agents (sim-agent.mjs: the real agent's
// CoordinatorLink and ResultPublisher, the `fakeEngine` test double as engine) against the real
// coordinator (coordinator/dist/main.js, its own process) and a real nats-server on loopback, one
// sweep of S one-cell shards per run (spec.mjs). Each run starts a fresh nats-server and coordinator.
//
//   node bench/coordinator-load/run.mjs [--runs 10x10000,100x10000,...] [--max-seconds 90]
//        [--split coord=1,nats=0,gen=0] [--cpu-prof 1000x100000] [--agents-per-nats 1]
//        [--engine-ms 0] [--gen-procs 1] [--order connect-first|launch-first] [--sample-ms 250] [--out bench/results/coordinator-load-cpu.json] [--note "..."]
//
// --split names the CPUs (taskset lists) of the coordinator, nats-server and generator; --gen-procs K
// spreads the simulated agents over K child processes (generator.mjs) for hosts with more cores than
// one generator process can use.
//
// Reported per run: shard results aggregated per second (the coordinator's own count of counted
// shards, sampled every --sample-ms; over the window: from the launch call with every agent already
// connected (--order connect-first) to the sweep's end or --max-seconds; "steady": the same from a
// second after the launch returned), lease round trip (an agent's
// Credit sent → the LeaseGrant that spends it, p50/p99), JetStream publish → ack, coordinator RSS
// (peak) and CPU (cores busy over the window; results/s per coordinator core = rate / cores),
// nats-server CPU and RSS, the generator's CPU, NATS storage (bytes of its store folder at the end).
// The first run is the baseline: each row also carries its ratios to it (machines here are noisy).
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, existsSync, readdirSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { control } from "@factsweep/proto";
import { startNatsServer, freePort } from "@factsweep/testing";
import { dirBytes, pin, procSample } from "./procstat.mjs";
import { generatorCpu, startGenerator } from "./generator.mjs";
import { writeLoadSpec } from "./spec.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : dflt;
};
const runs = flag("--runs", "10x10000,100x10000,1000x10000,10x100000,100x100000,1000x100000,10x1000000,100x1000000,1000x1000000")
  .split(",")
  .map((r) => r.split("x").map(Number));
const maxSeconds = Number(flag("--max-seconds", "90"));
const split = Object.fromEntries(
  flag("--split", "coord=1,nats=0,gen=0")
    .split(",")
    .map((kv) => kv.split("=")),
);
const profileRun = flag("--cpu-prof", "");
const profRoot = resolve(flag("--prof-dir", join(tmpdir(), "coordinator-load-prof")));
const perNats = Number(flag("--agents-per-nats", "1"));
const engineMs = Number(flag("--engine-ms", "0"));
const genProcs = Number(flag("--gen-procs", "1"));
const order = flag("--order", "connect-first");
if (order !== "connect-first" && order !== "launch-first") throw new Error(`--order: connect-first or launch-first, got ${order}`);
const sampleMs = Number(flag("--sample-ms", "250"));
const sites = Number(flag("--sites", "4"));
const outPath = resolve(flag("--out", join(root, "bench/results/coordinator-load-cpu.json")));
const note = flag("--note", "");
const coordMain = resolve(flag("--coordinator", join(root, "coordinator/dist/main.js")));
const label = flag("--label", "");
const coordFlags = (flag("--coord-flags", "") || "").split(" ").filter(Boolean);

const INCLUSIVE = "counts,shardsChanged,saveSweep,saveShard,saveResult,persist,tick,schedule,done,resultConsumed,add,handle,flush,encode,decode,info";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const call = (c, m, req, deadlineS = Number(process.env.LAUNCH_DEADLINE_S ?? 600)) =>
  new Promise((res, rej) => m.call(c, req, new grpc.Metadata(), { deadline: Date.now() + deadlineS * 1000 }, (e, r) => (e ? rej(e) : res(r))));
const mb = (b) => Math.round((b / 2 ** 20) * 10) / 10;
const r3 = (x) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000);

if (split.gen) pin(process.pid, split.gen);

/** Starts the coordinator process and resolves with its ports once it logs "ready". */
async function startCoordinator(natsUrl, profDir, shards) {
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const nodeArgs = profDir ? ["--cpu-prof", "--cpu-prof-dir", profDir] : [];
  const big = shards > 200_000;
  const argv = [
    ...nodeArgs,
    coordMain,
    "--nats-url",
    natsUrl,
    "--grpc-port",
    String(grpcPort),
    "--http-port",
    String(httpPort),
    "--model-root",
    join(root, "models"),
    "--max-shards",
    "2000000",
    "--max-spec-bytes",
    String(2 ** 19), // the coordinator's highest: the 1M load spec is 431 KB
    "--results-max-bytes",
    String((big ? 4096 : 1024) * 2 ** 20),
    "--kv-max-bytes",
    String((big ? 4096 : 1024) * 2 ** 20),
    ...coordFlags,
  ];
  const cmd = split.coord ? ["taskset", ["-c", split.coord, process.execPath, ...argv]] : [process.execPath, argv];
  const child = spawn(cmd[0], cmd[1], { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  await new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`coordinator not ready in 60 s:\n${log}`)), 60_000);
    child.stderr.on("data", (d) => {
      log += d.toString();
      if (log.length > 50_000) log = log.slice(-50_000);
      if (/ready: gRPC/.test(log)) {
        clearTimeout(t);
        res();
      }
    });
    child.on("exit", (code) => {
      clearTimeout(t);
      rej(new Error(`coordinator exited ${code}:\n${log}`));
    });
  });
  child.removeAllListeners("exit");
  const exited = new Promise((r) => child.on("exit", r));
  return { child, grpcPort, httpPort, exited, log: () => log };
}

async function oneRun(agents, shards) {
  const work = mkdtempSync(join(tmpdir(), "coord-load-"));
  const spec = writeLoadSpec(work, join(root, "models/mamba-facts"), shards, sites);
  const nats = await startNatsServer({ readyTimeoutMs: 30_000 });
  if (split.nats) pin(nats.pid, split.nats);
  const profDir = profileRun === `${agents}x${shards}` ? join(profRoot, `${agents}x${shards}-${Date.now()}`) : undefined;
  if (profDir) mkdirSync(profDir, { recursive: true });
  const coord = await startCoordinator(nats.url, profDir, spec.shards);
  const addr = `127.0.0.1:${coord.grpcPort}`;
  const client = new control.SweepServiceClient(addr, grpc.credentials.createInsecure());
  // connect-first (default): every agent connected and idle, then the launch; the window runs from the
  // launch call, so each result of the sweep is counted while all N agents are there (on a 16-core host
  // the sweep of 100k ran out while 1,000 agents were still connecting). launch-first: the launch
  // (parse, plan, durable) before the agents connect, the window from the last connect (the runs of
  // 2026-11-30 and before).
  let gen;
  let connectS;
  const connectAgents = async () => {
    gen = await startGenerator({ agents, procs: genProcs, coordinator: addr, natsUrl: nats.url, perNats, engineMs, cpus: split.gen });
    const t0c = Date.now();
    while (gen.stats.connected < agents && Date.now() - t0c < 60_000) await sleep(50);
    connectS = (Date.now() - t0c) / 1000;
    console.error(`  ${gen.stats.connected} of ${agents} agents connected in ${connectS.toFixed(1)} s`);
  };
  if (order === "connect-first") await connectAgents();
  const rss0 = procSample(coord.child.pid)?.rss ?? 0;
  const sampleCpu = () => ({ c: procSample(coord.child.pid), n: procSample(nats.pid), g: gen ? generatorCpu(gen.pids()) : 0 });
  // Credits the idle agents sent before the launch wait for a sweep to exist, not for the coordinator.
  gen?.untime();
  let start = sampleCpu();
  let tStart = performance.now();
  const tl = performance.now();
  const info0 = await call(client, client.launch, { spec: spec.text, specDir: work, sweepId: "load" }).catch((err) => {
    console.error(`launch failed: ${err.message}\ncoordinator log (tail):\n${coord.log().slice(-3000)}`);
    throw err;
  });
  const launchS = (performance.now() - tl) / 1000;
  const total = info0.counts.shardsTotal;
  console.error(`  launched ${total} shards (${spec.prompts} prompts, spec ${mb(spec.bytes)} MB) in ${launchS.toFixed(2)} s`);
  const rssLaunched = procSample(coord.child.pid)?.rss ?? 0;
  let doneAtStart = 0;
  if (order === "launch-first") {
    await connectAgents();
    doneAtStart = (await call(client, client.get, { sweepId: "load" }, 60)).counts.shardsDone;
    start = sampleCpu();
    tStart = performance.now();
  }
  const stats = gen.stats;
  const samples = [{ t: 0, done: doneAtStart }];
  const c0 = start.c;
  const n0 = start.n;
  const g0 = start.g;
  let peakRss = 0;
  let peakNatsRss = 0;
  let last;
  for (;;) {
    await sleep(sampleMs);
    const info = await call(client, client.get, { sweepId: "load" }, 60);
    const t = (performance.now() - tStart) / 1000;
    const c = procSample(coord.child.pid);
    const n = procSample(nats.pid);
    peakRss = Math.max(peakRss, c?.rss ?? 0);
    peakNatsRss = Math.max(peakNatsRss, n?.rss ?? 0);
    last = {
      t,
      done: info.counts.shardsDone,
      leased: info.counts.shardsLeased,
      pending: info.counts.shardsPending,
      failed: info.counts.shardsFailed,
      retries: info.counts.retries,
      state: info.state,
      c,
      n,
      g: generatorCpu(gen.pids()),
    };
    samples.push(last);
    if (samples.length % Math.round(10_000 / sampleMs) === 0)
      console.error(`  t=${t.toFixed(0)} s done ${last.done}/${total} leased ${last.leased} rss ${mb(c?.rss ?? 0)} MB`);
    if (info.state !== "running" || t >= maxSeconds) break;
  }
  // Rate: from all agents connected to the last sample (sweep ended, or the window's end).
  const window = last.t;
  const rate = (last.done - samples[0].done) / window;
  // Steady: from the first sample a second after the launch returned (connect-first) or after the
  // start (launch-first) to the last, so neither the launch nor the first grants weigh in.
  const from = samples.find((x) => x.t >= (order === "connect-first" ? launchS : 0) + 1);
  const steady = from && last.t > from.t ? (last.done - from.done) / (last.t - from.t) : null;
  const wall = last.t;
  const coordCores = last.c && c0 ? (last.c.cpu - c0.cpu) / wall : null;
  const natsCores = last.n && n0 ? (last.n.cpu - n0.cpu) / wall : null;
  const genCores = (last.g - g0) / wall;

  // The coordinator's V8 heap in use (its default metrics), to tell live data from what RSS keeps.
  const heapUsed = await fetch(`http://127.0.0.1:${coord.httpPort}/metrics`)
    .then((r) => r.text())
    .then((t) => Number(/^factsweep_coordinator_nodejs_heap_size_used_bytes(?:\{[^}]*\})? (\S+)/m.exec(t)?.[1] ?? NaN))
    .catch(() => NaN);
  await gen.stop();
  client.close();
  coord.child.kill("SIGTERM");
  await Promise.race([coord.exited, sleep(30_000)]);
  coord.child.kill("SIGKILL");
  const storage = dirBytes(nats.storeDir);
  let profile = null;
  if (profDir) {
    const file = readdirSync(profDir).find((f) => f.endsWith(".cpuprofile"));
    if (file) {
      profile = join(profDir, file);
      const summary = execFileSync(process.execPath, [
        join(root, "bench/coordinator-load/profile-top.mjs"),
        profile,
        "--top",
        "25",
        "--inclusive",
        INCLUSIVE,
      ]).toString();
      const to = join(dirname(outPath), `coordinator-load-profile-${agents}x${shards}.txt`);
      writeFileSync(to, `# node bench/coordinator-load/profile-top.mjs <profile> --top 25 --inclusive ${INCLUSIVE}\n${summary}`);
      console.error(summary);
    }
  }
  await nats.stop();

  const row = {
    agents,
    shards: total,
    prompts: spec.prompts,
    complete: last.state === "done",
    state: last.state,
    launch_s: r3(launchS),
    window_s: r3(window),
    shards_done: last.done,
    results_per_s: r3(rate),
    results_per_s_steady: r3(steady),
    connect_s: r3(connectS),
    lease_p50_ms: r3(stats.leaseRtt.quantile(0.5)),
    lease_p99_ms: r3(stats.leaseRtt.quantile(0.99)),
    publish_p50_ms: r3(stats.publishAck.quantile(0.5)),
    publish_p99_ms: r3(stats.publishAck.quantile(0.99)),
    rss_mb: mb(peakRss),
    rss_before_launch_mb: mb(rss0),
    rss_after_launch_mb: mb(rssLaunched),
    heap_used_end_mb: Number.isFinite(heapUsed) ? mb(heapUsed) : null,
    coord_cpu_cores: r3(coordCores),
    results_per_s_per_coord_core: coordCores ? r3(rate / coordCores) : null,
    nats_cpu_cores: r3(natsCores),
    nats_rss_mb: mb(peakNatsRss),
    gen_cpu_cores: r3(genCores),
    nats_storage_mb: mb(storage),
    retries: last.retries,
    failed: last.failed,
    published: stats.published,
    publish_duplicates: stats.duplicates,
    cancels: stats.cancels,
    agent_errors: stats.errors,
    cpu_profile: profile,
  };
  console.error(`  -> ${JSON.stringify(row)}`);
  return row;
}

const rows = [];
for (const [agents, shards] of runs) {
  console.error(`run: ${agents} agents, ${shards} shards`);
  rows.push(await oneRun(agents, shards));
}
const base = rows[0];
for (const r of rows) {
  r.vs_baseline = {
    results_per_s: base.results_per_s ? r3(r.results_per_s / base.results_per_s) : null,
    rss_mb: base.rss_mb ? r3(r.rss_mb / base.rss_mb) : null,
    lease_p99_ms: base.lease_p99_ms ? r3(r.lease_p99_ms / base.lease_p99_ms) : null,
  };
}
const cmdline = `node bench/coordinator-load/run.mjs ${process.argv.slice(2).join(" ")}`.trim();
const out = {
  bench: "coordinator-load",
  command: cmdline,
  date: new Date().toISOString(),
  note,
  machine: { cpus: cpus().length, cpu: cpus()[0]?.model, mem_gb: Math.round(totalmem() / 2 ** 30), node: process.version },
  split: { coordinator: split.coord ?? "any", nats_server: split.nats ?? "any", generator: split.gen ?? "any" },
  label,
  coordinator: coordMain.startsWith(root) ? coordMain.slice(root.length + 1) : coordMain,
  options: {
    max_seconds: maxSeconds,
    generator_processes: genProcs,
    agents_per_nats_connection: perNats,
    engine_ms: engineMs,
    sites,
    coordinator_flags: coordFlags,
  },
  baseline: `${base.agents}x${base.shards}`,
  rows,
};
mkdirSync(dirname(outPath), { recursive: true });
if (existsSync(outPath) && process.env.APPEND) {
  const prev = JSON.parse(readFileSync(outPath, "utf8"));
  out.previous = prev;
}
writeFileSync(outPath, JSON.stringify(out, null, 1) + "\n");
console.log(JSON.stringify(out, null, 1));
const hdr = "agents shards  done%  launch_s  res/s  res/s/core  lease_p50  lease_p99  rss_mb  coord_cores nats_cores gen_cores storage_mb  x_base";
console.error(hdr);
for (const r of rows) {
  console.error(
    [
      r.agents,
      r.shards,
      ((100 * r.shards_done) / r.shards).toFixed(0),
      r.launch_s,
      r.results_per_s,
      r.results_per_s_per_coord_core,
      r.lease_p50_ms,
      r.lease_p99_ms,
      r.rss_mb,
      r.coord_cpu_cores,
      r.nats_cpu_cores,
      r.gen_cpu_cores,
      r.nats_storage_mb,
      r.vs_baseline.results_per_s,
    ].join("  "),
  );
}
process.exit(0);

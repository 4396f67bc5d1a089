// The load generator of run.mjs: N simulated agents (sim-agent.mjs), in this process or spread over
// K child processes (`--gen-procs K`). One Node process runs 1,000 agents on one core, which on a
// host with more cores bounds the load before the coordinator does; children (this file run as a
// script) each run a contiguous slice of the agents and report their counters and latency samples
// to the parent over the IPC channel.
import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { natsConnections, newStats, Samples, SimAgent } from "./sim-agent.mjs";
import { pin, procSample } from "./procstat.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const COUNTERS = ["granted", "published", "duplicates", "done", "cancels", "errors", "connected"];

/** Starts agents `from`..`to`-1 here, in batches of 50 as a cluster's agents come up. */
async function startAgents({ coordinator, natsUrl, from, to, perNats, engineMs, stats }) {
  const n = to - from;
  const ncs = await natsConnections(natsUrl, n, perNats);
  const sims = [];
  for (let i = 0; i < n; i++) {
    const nc = ncs[Math.floor(i / Math.max(1, perNats))];
    sims.push(new SimAgent({ agentId: `sim-${from + i}`, coordinator, nc, stats, engineMs }));
  }
  for (let i = 0; i < n; i += 50) {
    for (const s of sims.slice(i, i + 50)) s.start();
    await sleep(20);
  }
  return {
    untime: () => sims.forEach((s) => s.untimeCredits()),
    stop: async () => {
      await Promise.all(sims.map((s) => s.stop()));
      await Promise.all(ncs.map((nc) => nc.close().catch(() => undefined)));
    },
  };
}

/**
 * Starts `agents` simulated agents, in this process (`procs` ≤ 1) or over `procs` children pinned to
 * `cpus` (taskset list, or undefined). Returns the live stats (counters summed over the children,
 * refreshed every 200 ms; the latency reservoirs merged at `stop`), the pids to sample for CPU,
 * `untime` and `stop`.
 */
export async function startGenerator({ agents, procs, coordinator, natsUrl, perNats, engineMs, cpus }) {
  const stats = newStats();
  if (procs <= 1) {
    const { untime, stop } = await startAgents({ coordinator, natsUrl, from: 0, to: agents, perNats, engineMs, stats });
    return { stats, pids: () => [process.pid], untime, stop };
  }
  const children = [];
  const per = Math.ceil(agents / procs);
  for (let k = 0; k < procs && k * per < agents; k++) {
    const child = fork(fileURLToPath(import.meta.url), ["--child"], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    if (cpus) pin(child.pid, cpus);
    const slot = { child, counters: Object.fromEntries(COUNTERS.map((c) => [c, 0])), final: null };
    child.on("message", (m) => {
      if (m.type === "counters") slot.counters = m.counters;
      if (m.type === "final") slot.final = m;
    });
    child.send({ type: "start", coordinator, natsUrl, from: k * per, to: Math.min(agents, (k + 1) * per), perNats, engineMs });
    children.push(slot);
  }
  const sum = () => {
    for (const c of COUNTERS) stats[c] = children.reduce((s, x) => s + (x.counters[c] ?? 0), 0);
  };
  const timer = setInterval(sum, 200);
  return {
    stats,
    pids: () => [process.pid, ...children.map((c) => c.child.pid)],
    /** Leaves the credits sent so far out of the lease round trip (sent before the sweep was launched). */
    untime: () => children.forEach((c) => c.child.send({ type: "untime" })),
    /** Stops every agent; the children's final counters and latency samples land in `stats`. */
    stop: async () => {
      clearInterval(timer);
      await Promise.all(
        children.map(
          (c) =>
            new Promise((res) => {
              c.child.once("exit", res);
              c.child.send({ type: "stop" });
            }),
        ),
      );
      for (const c of children) if (c.final) c.counters = c.final.counters;
      sum();
      // Each child's reservoir is a uniform sample of its own agents' latencies, and the children
      // run equal slices: their union stands for the whole.
      for (const key of ["leaseRtt", "publishAck"]) {
        const merged = new Samples(Number.MAX_SAFE_INTEGER);
        for (const c of children) for (const x of c.final?.[key] ?? []) merged.add(x);
        stats[key] = merged;
      }
    },
  };
}

/** CPU seconds of the generator's processes, summed (children and this process). */
export function generatorCpu(pids) {
  let cpu = 0;
  for (const pid of pids) cpu += procSample(pid)?.cpu ?? 0;
  return cpu;
}

// Child: run a slice of the agents until the parent says stop.
if (process.argv.includes("--child") && process.send) {
  const stats = newStats();
  let agents;
  const report = () => process.send({ type: "counters", counters: Object.fromEntries(COUNTERS.map((c) => [c, stats[c]])) });
  const timer = setInterval(report, 200);
  process.on("message", async (m) => {
    if (m.type === "start") agents = await startAgents({ ...m, stats });
    if (m.type === "untime") agents?.untime();
    if (m.type === "stop") {
      clearInterval(timer);
      await agents?.stop();
      const counters = Object.fromEntries(COUNTERS.map((c) => [c, stats[c]]));
      process.send({ type: "final", counters, leaseRtt: stats.leaseRtt.xs, publishAck: stats.publishAck.xs }, () => process.exit(0));
    }
  });
}

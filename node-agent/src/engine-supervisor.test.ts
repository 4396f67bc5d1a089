import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineSupervisor } from "./engine-supervisor.js";
import { EngineVersionMismatchError, WorkerStartError } from "./errors.js";
import { cpuSlots } from "./gpu-discovery.js";
import { createAgentMetrics } from "./metrics.js";
import { ResultPublisher } from "./result-publisher.js";
import { runShard } from "./shard-runner.js";
import { engineCommand, goldenSwapShard, REPO_ROOT, skipWithoutGolden, storedResults } from "@factsweep/testing";
import { memoryLogger } from "./log.js";
import { resultsNatsForFile } from "./test-support.js";

const skip = skipWithoutGolden();
const env = resultsNatsForFile(skip);

test("a SIGKILLed engine worker is restarted and the shard it was running still completes once, equal to the reference", { skip }, async () => {
  const metrics = createAgentMetrics();
  const log = memoryLogger();
  const sup = new EngineSupervisor({ slots: cpuSlots(1), command: await engineCommand(), metrics, log, restartInitialMs: 100 });
  await sup.start();
  try {
    const worker = sup.workers[0]!;
    const firstPid = worker.pid;
    const { shard, reference } = goldenSwapShard("sw-kill");
    let killed = false;
    const out = await runShard({
      shard,
      worker,
      publisher: new ResultPublisher(env.nats.nc, { metrics, log }),
      agentId: "agent-k",
      metrics,
      log,
      batchSize: 4,
      onProgress: (n) => {
        if (n === 8 && !killed) {
          killed = true;
          process.kill(worker.pid!, "SIGKILL");
        }
      },
    });
    assert.ok(killed);
    assert.notEqual(worker.pid, firstPid, "a new worker process runs");
    assert.equal(worker.state, "ready");
    const restarts = (await metrics.workerRestarts.get()).values.reduce((s, v) => s + v.value, 0);
    assert.equal(restarts, 1, "factsweep_worker_restarts_total counted the restart");
    assert.ok(
      log.lines.some((l) => /worker process died \(signal SIGKILL\)/.test(l)),
      "the death is logged",
    );
    assert.ok(
      log.lines.some((l) => l.includes("[worker cpu:0]")),
      "worker stderr is forwarded with its prefix",
    );

    const stored = await storedResults(env.nats.jsm, "sw-kill");
    assert.equal(stored.length, 1);
    assert.equal(stored[0]!.seq, out.published.seq);
    const r = stored[0]!.result;
    assert.equal(r.cells.length, 28);
    for (const c of r.cells) assert.ok(Math.abs(c.p - reference[c.cell!.layer]![c.cell!.token]!) <= 1e-5, `p at (${c.cell!.layer}, ${c.cell!.token})`);
  } finally {
    await sup.stop();
  }
});

test("an engine command that cannot start is a clear startup error naming the command", async () => {
  const metrics = createAgentMetrics();
  const sup = new EngineSupervisor({
    slots: cpuSlots(1),
    command: { file: "/nonexistent/python3", args: ["-m", "engine"], env: { PYTHONPATH: REPO_ROOT } },
    metrics,
    log: memoryLogger(),
  });
  await assert.rejects(sup.start(), (e: unknown) => e instanceof WorkerStartError && /\/nonexistent\/python3 -m engine --device cpu/.test(e.message));
  await sup.stop();
});

test("CPU workers start with --device cpu and no visible GPU, and stop() shuts them down", { skip }, async () => {
  const metrics = createAgentMetrics();
  const sup = new EngineSupervisor({ slots: cpuSlots(2), command: await engineCommand(), metrics, log: memoryLogger() });
  await sup.start();
  assert.equal((await metrics.workersReady.get()).values[0]!.value, 2);
  const pids = sup.workers.map((w) => w.pid!);
  // A CPU worker is told its device and sees no GPU.
  for (const pid of pids) {
    const { readFileSync } = await import("node:fs");
    assert.ok(readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes("CUDA_VISIBLE_DEVICES="));
    assert.match(readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" "), /-m engine --device cpu/);
  }
  await sup.stop();
  for (const pid of pids) assert.throws(() => process.kill(pid, 0), /ESRCH/, `worker ${pid} exited`);
  assert.equal((await metrics.workersReady.get()).values[0]!.value, 0);
});

test("an engine worker of another protocol version is a fatal error naming both versions", { skip }, async () => {
  const fatal: Error[] = [];
  const sup = new EngineSupervisor({
    slots: cpuSlots(1),
    command: await engineCommand(),
    metrics: createAgentMetrics(),
    log: memoryLogger(),
    protocolVersion: 99, // the real worker (version 3) must refuse this agent
    onFatal: (e) => fatal.push(e),
    restartInitialMs: 50,
  });
  await assert.rejects(
    sup.start(),
    (e: unknown) => e instanceof EngineVersionMismatchError && /expects 99/.test(e.message) && /worker said: .*VERSION_MISMATCH/.test(e.message),
  );
  assert.equal(fatal.length, 1, "the agent is told to stop");
  assert.equal(sup.workers[0]!.state, "fatal", "no restart loop");
  await sup.stop();
});

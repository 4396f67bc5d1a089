import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { EngineSupervisor } from "./engine-supervisor.js";
import { WorkerStartError } from "./errors.js";
import { cpuSlots } from "./gpu-discovery.js";
import { createAgentMetrics } from "./metrics.js";
import { ResultPublisher } from "./result-publisher.js";
import { runShard } from "./shard-runner.js";
import { engineCommand, goldenSwapShard, memoryLogger, REPO_ROOT, skipWithoutGolden, startResultsNats, storedResults } from "./test-support.js";

const skip = skipWithoutGolden();
let nats: Awaited<ReturnType<typeof startResultsNats>>;

before(async () => {
  if (!skip) nats = await startResultsNats();
});
after(async () => {
  await nats?.stop();
});

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
      publisher: new ResultPublisher(nats.nc, { metrics, log }),
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
    assert.ok(log.lines.some((l) => /worker process died \(signal SIGKILL\)/.test(l)), "the death is logged");
    assert.ok(log.lines.some((l) => l.includes("[worker cpu:0]")), "worker stderr is forwarded with its prefix");

    const stored = await storedResults(nats.jsm, "sw-kill");
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

test("stop() asks workers to shut down and they exit", { skip }, async () => {
  const metrics = createAgentMetrics();
  const sup = new EngineSupervisor({ slots: cpuSlots(2), command: await engineCommand(), metrics, log: memoryLogger() });
  await sup.start();
  assert.equal((await metrics.workersReady.get()).values[0]!.value, 2);
  const pids = sup.workers.map((w) => w.pid!);
  await sup.stop();
  for (const pid of pids) assert.throws(() => process.kill(pid, 0), /ESRCH/, `worker ${pid} exited`);
  assert.equal((await metrics.workersReady.get()).values[0]!.value, 0);
});

/**
 * Device-sized engine calls and the next shard's prepare overlapping the running grid, on an
 * in-process Agent with a real CPU engine worker, a real nats-server and the scripted coordinator.
 * A "GPU-sized" worker is a CPU slot with `cellsPerCall: 0` (a whole shard per RunCells call).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { sweep } from "@factsweep/proto";
import { engineCommand, goldenSwapShard, ScriptedCoordinator, skipWithoutGolden, storedResults } from "@factsweep/testing";
import { Agent } from "./agent.js";
import type { EngineActivity } from "./engine-client.js";
import { cpuSlots } from "./gpu-discovery.js";
import { memoryLogger } from "./log.js";
import { resultsNatsForFile } from "./test-support.js";

const skip = skipWithoutGolden();
const env = resultsNatsForFile(skip);

interface Run {
  /** Every request the worker was sent and every answer, in the order the agent saw them. */
  events: EngineActivity[];
  results: sweep.ShardResult[];
  metrics: string;
}

/** Leases two shards of different prompts at once to a one-worker agent whose worker calls the engine with `cellsPerCall` cells. */
async function runTwoShards(tag: string, cellsPerCall: number): Promise<Run> {
  const coord = new ScriptedCoordinator();
  const port = await coord.start();
  const agent = new Agent({
    agentId: `agent-${tag}`,
    coordinator: `127.0.0.1:${port}`,
    natsUrl: env.nats.server.url,
    slots: cpuSlots(1, cellsPerCall),
    engineCommand: await engineCommand(),
    httpPort: 0,
    httpHost: "127.0.0.1",
    log: memoryLogger(tag),
  });
  const events: EngineActivity[] = [];
  agent.supervisor.workers[0]!.on("activity", (e: EngineActivity) => events.push(e));
  await agent.start();
  try {
    const s = await coord.nextStream(0);
    await s.next("hello");
    s.send({ $case: "welcome", welcome: { sessionId: "s1", leaseTtlMs: 30_000, heartbeatIntervalMs: 100, natsResultsSubjectPrefix: "" } });
    assert.equal((await s.next("credit")).credit.slots, 2, "one running and one more lease per worker");
    const shards = [goldenSwapShard(`pipe-${tag}-a`).shard, goldenSwapShard(`pipe-${tag}-b`).shard];
    shards.forEach((shard, i) => s.send({ $case: "lease", lease: { leaseId: `L${i + 1}`, shard, ttlMs: 30_000 } }));
    await s.next("done", (d) => d.done.leaseId === "L1");
    await s.next("done", (d) => d.done.leaseId === "L2");
    const results = await Promise.all(shards.map(async (sh) => (await storedResults(env.nats.jsm, sh.sweepId)).map((r) => r.result)));
    assert.deepEqual(
      results.map((r) => r.length),
      [1, 1],
      "one result per shard",
    );
    return { events, results: results.flat(), metrics: await agent.metrics.registry.metrics() };
  } finally {
    await agent.stop();
    coord.kill();
  }
}

const sent = (run: Run, request: string) => run.events.filter((e) => e.phase === "sent" && e.request === request);
const indexOf = (run: Run, phase: EngineActivity["phase"], requestId: number) => run.events.findIndex((e) => e.phase === phase && e.requestId === requestId);

/** The second shard's PreparePrompt went out after the first shard's last RunCells was sent and before that call was answered, its first RunCells right behind it. */
function assertPrepareOverlapsLastCall(run: Run, callsPerShard: number): void {
  const prepares = sent(run, "preparePrompt");
  const calls = sent(run, "runCells");
  assert.equal(prepares.length, 2, "one PreparePrompt per shard");
  assert.equal(calls.length, 2 * callsPerShard, `${callsPerShard} RunCells per shard`);
  assert.equal(sent(run, "loadModel").length, 1, "the model is loaded once");
  const lastOfFirst = calls[callsPerShard - 1]!;
  const nextPrepare = indexOf(run, "sent", prepares[1]!.requestId);
  assert.ok(nextPrepare > indexOf(run, "sent", lastOfFirst.requestId), "the next prepare follows the first shard's last call");
  assert.ok(
    nextPrepare < indexOf(run, "answered", lastOfFirst.requestId),
    `the next prepare is sent before the first shard's last RunCells is answered: ${run.events.map((e) => `${e.phase} ${e.request}#${e.requestId}`).join(", ")}`,
  );
  // The first RunCells of a shard is written right behind its PreparePrompt (the worker answers in
  // order), so the shard's last call, and with it the next shard's prepare, goes out at once.
  const firstOfSecond = calls[callsPerShard]!;
  assert.ok(indexOf(run, "sent", firstOfSecond.requestId) > nextPrepare, "the second shard's cells follow its prepare");
  assert.ok(
    indexOf(run, "sent", firstOfSecond.requestId) < indexOf(run, "answered", prepares[1]!.requestId),
    "the second shard's first RunCells is sent without waiting for its prepare's answer",
  );
  assert.ok(
    calls.slice(callsPerShard + 1).every((c) => indexOf(run, "sent", c.requestId) > indexOf(run, "answered", prepares[1]!.requestId)),
    "its later batches after the prepare's answer",
  );
}

test(
  "a GPU-sized worker runs a whole shard in one RunCells call, a CPU-sized one in slices; the next shard's prepare is sent while the last call runs; results are equal",
  { skip },
  async () => {
    const { shard, reference } = goldenSwapShard("pipe-ref");
    const gpu = await runTwoShards("gpu", 0);
    assertPrepareOverlapsLastCall(gpu, 1);
    const cpu = await runTwoShards("cpu", 8);
    assertPrepareOverlapsLastCall(cpu, Math.ceil(shard.cells.length / 8));

    for (const r of [...gpu.results, ...cpu.results]) {
      assert.equal(r.cells.length, shard.cells.length);
      assert.deepEqual(
        r.cells.map((c) => c.cell),
        shard.cells,
        "every cell in the shard's order",
      );
      for (const c of r.cells) assert.ok(Math.abs(c.p - reference[c.cell!.layer]![c.cell!.token]!) <= 1e-5, `p at (${c.cell!.layer}, ${c.cell!.token})`);
    }
    const values = (r: sweep.ShardResult) => ({ answerId: r.answerId, pClean: r.pClean, pCorrupt: r.pCorrupt, cells: r.cells.map((c) => [c.p, c.logit]) });
    assert.deepEqual(values(gpu.results[0]!), values(cpu.results[0]!), "one call or slices: the same numbers");
    assert.deepEqual(values(gpu.results[1]!), values(cpu.results[1]!));
    assert.deepEqual(values(gpu.results[0]!), values(gpu.results[1]!), "the same prompt under two keys");

    const busy = /^factsweep_agent_worker_busy_ratio\{[^}]*worker="cpu:0"[^}]*\} (\S+)$/m.exec(gpu.metrics)?.[1];
    assert.ok(busy !== undefined, "the busy-ratio gauge is exported per worker");
    assert.ok(Number(busy) > 0 && Number(busy) <= 1, `busy ratio ${busy} in (0, 1]`);
  },
);

test("two workers in one agent: each worker's next shard is queued behind its running grid (both workers' lookahead counts high)", { skip }, async () => {
  const coord = new ScriptedCoordinator();
  const port = await coord.start();
  const log = memoryLogger("two");
  const cmd = await engineCommand();
  const agent = new Agent({
    agentId: "agent-two",
    coordinator: `127.0.0.1:${port}`,
    natsUrl: env.nats.server.url,
    slots: cpuSlots(2, 0), // GPU-sized calls: a shard is released as soon as its one RunCells is sent
    // Grids as a GPU's big ones, one pass each: these tiny ones would otherwise be packed (tested below).
    engineCommand: { ...cmd, args: [...cmd.args, "--pack-below", "0"] },
    httpPort: 0,
    httpHost: "127.0.0.1",
    log,
  });
  await agent.start();
  const total = 12;
  try {
    const s = await coord.nextStream(0);
    await s.next("hello");
    s.send({ $case: "welcome", welcome: { sessionId: "s1", leaseTtlMs: 30_000, heartbeatIntervalMs: 100, natsResultsSubjectPrefix: "" } });
    const slots = (await s.next("credit")).credit.slots;
    assert.equal(slots, 4, "one running and one more lease per worker");
    // A grid long enough (the golden cells 12 times) that a lease granted when one ends arrives while the worker's next grid runs.
    const lease = (i: number) => {
      const { shard } = goldenSwapShard(`two-${i}`);
      shard.cells = Array.from({ length: 12 }, () => shard.cells).flat();
      s.send({ $case: "lease", lease: { leaseId: `L${i}`, shard, ttlMs: 30_000 } });
    };
    let sent = 0;
    while (sent < slots) lease(sent++);
    const done = new Set<string>();
    while (done.size < total) {
      const d = await s.next("done", (b) => !done.has(b.done.leaseId));
      done.add(d.done.leaseId);
      if (sent < total) lease(sent++); // as the coordinator does on the credit each ended lease returns
    }
  } finally {
    await agent.stop(); // the workers log their lookahead counts at exit
    coord.kill();
  }
  const counts = log.lines
    .map((l) => /\[worker (cpu:\d)\].*prepare ran behind (\d+) of (\d+) grids/.exec(l))
    .filter((m) => m !== null)
    .map((m) => ({ worker: m[1]!, behind: Number(m[2]), grids: Number(m[3]) }));
  assert.equal(counts.length, 2, `both workers log their lookahead at exit: ${JSON.stringify(counts)}`);
  assert.equal(
    counts.reduce((a, c) => a + c.grids, 0),
    total,
    "every shard is one grid",
  );
  for (const c of counts) {
    assert.ok(c.grids >= 3, `${c.worker} ran ${c.grids} of ${total} shards: both workers share the work`);
    // Only a worker's first grid has nothing queued behind it for sure; allow one more miss for timing.
    assert.ok(c.behind >= c.grids - 2, `${c.worker}: the next prepare ran behind ${c.behind} of ${c.grids} grids`);
  }
});

test("small grids stacked on one worker (--prefetch 7) are packed into one engine pass, and each shard's values are its own", { skip }, async () => {
  const coord = new ScriptedCoordinator();
  const port = await coord.start();
  const log = memoryLogger("pack");
  const agent = new Agent({
    agentId: "agent-pack",
    coordinator: `127.0.0.1:${port}`,
    natsUrl: env.nats.server.url,
    slots: cpuSlots(1, 0),
    prefetch: 7,
    engineCommand: await engineCommand(),
    httpPort: 0,
    httpHost: "127.0.0.1",
    log,
  });
  await agent.start();
  const shards = Array.from({ length: 8 }, (_, i) => goldenSwapShard(`pack-${i}`));
  try {
    const s = await coord.nextStream(0);
    await s.next("hello");
    s.send({ $case: "welcome", welcome: { sessionId: "s1", leaseTtlMs: 30_000, heartbeatIntervalMs: 100, natsResultsSubjectPrefix: "" } });
    assert.equal((await s.next("credit")).credit.slots, 8, "one running and seven more leases on the worker");
    shards.forEach(({ shard }, i) => s.send({ $case: "lease", lease: { leaseId: `P${i}`, shard, ttlMs: 30_000 } }));
    const done = new Set<string>();
    while (done.size < shards.length) done.add((await s.next("done", (b) => !done.has(b.done.leaseId))).done.leaseId);
    for (const { shard, reference } of shards) {
      const [stored] = await storedResults(env.nats.jsm, shard.sweepId);
      const r = stored!.result;
      assert.deepEqual(
        r.cells.map((c) => c.cell),
        shard.cells,
        "every cell once, in the shard's order",
      );
      for (const c of r.cells)
        assert.ok(Math.abs(c.p - reference[c.cell!.layer]![c.cell!.token]!) <= 1e-5, `${shard.shardId} p at (${c.cell!.layer}, ${c.cell!.token})`);
    }
  } finally {
    await agent.stop(); // the worker logs its packed count at exit
    coord.kill();
  }
  const packed = log.lines.map((l) => /(\d+) small grids ran packed in (\d+) passes/.exec(l)).find((m) => m !== null);
  assert.ok(packed, `the worker packed grids that arrived together:\n${log.lines.filter((l) => l.includes("worker")).join("\n")}`);
  assert.ok(Number(packed[1]) >= 2, `${packed[1]} grids in ${packed[2]} passes`);
});

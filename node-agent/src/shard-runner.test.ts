import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineClient } from "./engine-client.js";
import { ShardError } from "./errors.js";
import { ResultPublisher } from "./result-publisher.js";
import { runShard } from "./shard-runner.js";
import { engineCommand, goldenSwapShard, skipWithoutGolden, storedResults } from "@factsweep/testing";
import { engineWorkerForFile } from "./test-support.js";

const skip = skipWithoutGolden();
const env = engineWorkerForFile(skip);
const { metrics, log } = env;

test("a shard runs on a real engine worker and publishes exactly one ShardResult equal to the engine's own answers", { skip }, async () => {
  const { shard, reference } = goldenSwapShard("sw-e2e");
  const publisher = new ResultPublisher(env.nats.nc, { metrics, log });
  const progress: number[] = [];
  const worker = env.sup.workers[0]!;
  const out = await runShard({ shard, worker, publisher, agentId: "agent-t", metrics, log, batchSize: 8, onProgress: (n) => progress.push(n) });

  // Progress advanced batch by batch (28 cells, 8 per RunCells).
  assert.deepEqual(progress, [8, 16, 24, 28]);
  const stored = await storedResults(env.nats.jsm, "sw-e2e");
  assert.equal(stored.length, 1, "exactly one result in JetStream");
  assert.equal(stored[0]!.msgId, `${shard.shardId}/${stored[0]!.result.attempt}`, "Nats-Msg-Id is the shard id and attempt");
  assert.equal(stored[0]!.seq, out.published.seq);
  const r = stored[0]!.result;
  assert.equal(r.agentId, "agent-t");
  assert.equal(r.attempt, 1);
  assert.equal(r.worker, "cpu:0");
  assert.equal(r.cells.length, shard.cells.length);
  assert.ok(r.engineSeconds > 0);

  // The same cells asked of the engine directly (a second, independent worker process).
  const cmd = await engineCommand();
  const { execa } = await import("execa");
  const child = execa(cmd.file, cmd.args, { env: cmd.env, stdin: "pipe", stdout: "pipe", stderr: "ignore", buffer: false, encoding: "buffer" });
  const direct = new EngineClient({ stdin: child.stdin!, stdout: child.stdout! });
  await direct.hello();
  await direct.loadModel({ modelId: "m", path: shard.model!.path });
  const info = await direct.preparePrompt({
    modelId: "m",
    promptKey: "k",
    inputIds: shard.prompt!.inputIds,
    subjectStart: 1,
    subjectEnd: 3,
    corruption: shard.prompt!.corruption,
  });
  const cells = await direct.runCells({ modelId: "m", promptKey: "k", cells: shard.cells });
  await direct.shutdown();
  await child;

  assert.equal(r.answerId, info.answerId);
  assert.equal(r.pClean, info.pClean);
  assert.equal(r.pCorrupt, info.pCorrupt);
  r.cells.forEach((c, i) => {
    assert.deepEqual(c.cell, shard.cells[i], `cell ${i} is the cell that was asked`);
    assert.equal(c.p, cells.p[i]!, `p of cell ${i}`);
    assert.equal(c.logit, cells.logit[i]!, `logit of cell ${i}`);
  });
  // And against the transformers reference grid of the golden file.
  for (const c of r.cells) assert.ok(Math.abs(c.p - reference[c.cell!.layer]![c.cell!.token]!) <= 1e-5, `p at (${c.cell!.layer}, ${c.cell!.token})`);

  // Publishing the same shard again (a retry) is deduplicated by JetStream.
  const again = await publisher.publish(r);
  assert.equal(again.duplicate, true);
  assert.equal(again.seq, out.published.seq);
  assert.equal((await storedResults(env.nats.jsm, "sw-e2e")).length, 1);
});

test("a prompt the engine refuses as invalid fails the shard as not retryable with the engine's message", { skip }, async () => {
  const { shard } = goldenSwapShard("sw-bad");
  shard.prompt!.subjectEnd = 99; // subject span outside the 7-token prompt
  const publisher = new ResultPublisher(env.nats.nc, { metrics, log });
  await assert.rejects(
    runShard({ shard, worker: env.sup.workers[0]!, publisher, agentId: "agent-t", metrics, log }),
    (e: unknown) => e instanceof ShardError && !e.retryable && /INVALID_ARGUMENT/.test(e.message) && /subject/.test(e.message),
  );
  assert.equal((await storedResults(env.nats.jsm, "sw-bad")).length, 0, "nothing published for a failed shard");
});

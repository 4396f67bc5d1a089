import { test } from "node:test";
import assert from "node:assert/strict";
import { ShardError } from "./errors.js";
import { ResultPublisher } from "./result-publisher.js";
import { runShard } from "./shard-runner.js";
import { goldenSwapShard, skipWithoutGolden, storedResults } from "@factsweep/testing";
import { engineWorkerForFile } from "./test-support.js";

const skip = skipWithoutGolden();
const env = engineWorkerForFile(skip);
const { metrics, log } = env;

test("a sever shard prepares its prompt, runs RunExperiment and publishes the engine's result_json with no cells", { skip }, async () => {
  const { shard, reference } = goldenSwapShard("ex-sever");
  // Freezing no path is plain restoration: the residual trace's golden values.
  const cells = [
    { token: 2, layer: 1, path: "none" },
    { token: 4, layer: 0, path: "none" },
    { token: 4, layer: 0, path: "ssm" },
  ];
  const publisher = new ResultPublisher(env.nats.nc, { metrics, log });
  const out = await runShard({
    shard: { ...shard, kind: "sever", cells: [], paramsJson: JSON.stringify({ cells }) },
    worker: env.sup.workers[0]!,
    publisher,
    agentId: "a",
    metrics,
    log,
  });
  const stored = await storedResults(env.nats.jsm, "ex-sever");
  assert.equal(stored.length, 1);
  const r = stored[0]!.result;
  assert.equal(r.cells.length, 0);
  assert.equal(r.resultJson, out.result.resultJson);
  const json = JSON.parse(r.resultJson) as { p: number[]; p_clean: number };
  assert.equal(json.p.length, 3);
  assert.ok(Math.abs(json.p[0]! - reference[1]![2]!) < 1e-5, `${json.p[0]} vs golden ${reference[1]![2]}`);
  assert.ok(Math.abs(json.p[1]! - reference[0]![4]!) < 1e-5, `${json.p[1]} vs golden ${reference[0]![4]}`);
  assert.ok(Math.abs(r.pClean - json.p_clean) < 1e-12);
});

test("an experiment shard whose params the engine refuses fails as not retryable, naming the field", { skip }, async () => {
  const { shard } = goldenSwapShard("ex-bad");
  const publisher = new ResultPublisher(env.nats.nc, { metrics, log });
  await assert.rejects(
    runShard({
      shard: { ...shard, kind: "sever", cells: [], paramsJson: JSON.stringify({ cells: [{ token: 0, layer: 99, path: "none" }] }) },
      worker: env.sup.workers[0]!,
      publisher,
      agentId: "a",
      metrics,
      log,
    }),
    (e: ShardError) => e instanceof ShardError && e.retryable === false && /params\.cells\[0\]\.layer/.test(e.message),
  );
  assert.equal((await storedResults(env.nats.jsm, "ex-bad")).length, 0, "nothing published");
});

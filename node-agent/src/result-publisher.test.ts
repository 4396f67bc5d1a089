import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "@nats-io/transport-node";
import { engine, sweep } from "@factsweep/proto";
import { ShardError } from "./errors.js";
import { ResultPublisher } from "./result-publisher.js";
import { memoryLogger } from "./log.js";
import { startResultsNats, storedResults } from "@factsweep/testing";

function result(shardId: string, cells = 3): sweep.ShardResult {
  return sweep.ShardResult.fromPartial({
    sweepId: "sw-pub",
    shardId,
    promptIndex: 0,
    agentId: "a",
    attempt: 1,
    answerId: 5,
    pClean: 0.9,
    pCorrupt: 0.1,
    cells: Array.from({ length: cells }, (_, i) => ({ cell: { site: engine.Site.SITE_RESIDUAL, layer: i, token: 0, window: 1 }, p: i / 10, logit: i })),
    engineSeconds: 0.01,
    worker: "cpu:0",
  });
}

test("a publish while nats-server is down is retried until the server is back, and stored once", async () => {
  const nats = await startResultsNats();
  const nc = await connect({ servers: nats.server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  const log = memoryLogger();
  try {
    const publisher = new ResultPublisher(nc, { log, timeoutMs: 1_000, retryMaxMs: 300 });
    nats.server.kill("SIGKILL");
    const pending = publisher.publish(result("sw-pub.0.0"));
    // Let it fail at least once against the dead server before the server comes back.
    while (!log.lines.some((l) => /retrying/.test(l))) await new Promise((r) => setTimeout(r, 50));
    await nats.server.restart();
    const published = await pending;
    assert.equal(published.duplicate, false);
    const stored = await storedResults(nats.jsm, "sw-pub");
    assert.deepEqual(
      stored.map((s) => [s.msgId, s.seq]),
      [["sw-pub.0.0/1", published.seq]],
    );
  } finally {
    await nc.close();
    await nats.stop();
  }
});

test("a result larger than the server's max_payload is refused as not retryable, naming the fix", async () => {
  const nats = await startResultsNats();
  try {
    const publisher = new ResultPublisher(nats.nc);
    // 1 MiB default max_payload; each cell is ~30 bytes.
    await assert.rejects(
      publisher.publish(result("sw-pub.9.0", 60_000)),
      (e: unknown) => e instanceof ShardError && !e.retryable && /max_payload/.test(e.message) && /smaller shards/.test(e.message),
    );
  } finally {
    await nats.stop();
  }
});

test("forLease stamps each result with the lease id current when it is published", async () => {
  const nats = await startResultsNats();
  try {
    let lease = "L1";
    const publisher = new ResultPublisher(nats.nc).forLease(() => lease);
    await publisher.publish(result("sw-pub.1.0"));
    lease = "L2"; // re-leased while running: the next publish carries the new lease
    await publisher.publish(result("sw-pub.2.0"));
    const stored = await storedResults(nats.jsm, "sw-pub");
    assert.deepEqual(
      stored.map((s) => [s.result.shardId, s.result.leaseId]),
      [
        ["sw-pub.1.0", "L1"],
        ["sw-pub.2.0", "L2"],
      ],
    );
  } finally {
    await nats.stop();
  }
});

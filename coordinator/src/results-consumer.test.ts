import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { sweep } from "@factsweep/proto";
import { RESULTS_CONSUMER, RESULTS_STREAM, resultsSubject } from "@factsweep/shared";
import { ResultAggregator } from "@factsweep/planning";
import { startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { ResultsConsumer } from "./results-consumer.js";
import { fakeEngine, until } from "@factsweep/testing";

let nats: NatsServerHandle;
let nc: NatsConnection;
before(async () => {
  nats = await startNatsServer();
  nc = await connect({ servers: nats.url });
});
after(async () => {
  await nc.close();
  await nats.stop();
});

const prompt = sweep.PromptSpec.fromPartial({ index: 0, promptKey: "rc/0", subject: "s", inputIds: [1, 2, 3, 4], subjectStart: 1, subjectEnd: 2 });
const shard = (part: number): sweep.Shard =>
  sweep.Shard.fromPartial({
    sweepId: "rc",
    shardId: `rc.0.${part}`,
    kind: "trace",
    prompt,
    attempt: 1,
    cells: [0, 1, 2, 3].map((token) => ({ site: 2, layer: part, token, window: 1 })),
  });

test("a result redelivered while its persistence is failing is aggregated once and acked once durable", async () => {
  const agg = new ResultAggregator({ sweepId: "rc", prompts: [prompt] });
  let duplicates = 0;
  let persistCalls = 0;
  const failUntil = Date.now() + 1500;
  const consumer = new ResultsConsumer(nc, {
    ackWaitMs: 400,
    sink: {
      add: (r) => (agg.add(r) ? "added" : "duplicate"),
      // Test double for a fault that cannot be caused otherwise without losing the server: KV writes failing for 1.5 s.
      persist: async () => {
        persistCalls++;
        if (Date.now() < failUntil) throw new Error("injected KV write failure");
      },
    },
    onConsumed: (dup) => {
      if (dup) duplicates++;
    },
  });
  await consumer.start();
  const js = jetstream(nc);
  for (const part of [0, 1, 2]) {
    const data = sweep.ShardResult.encode(fakeEngine(shard(part), "x")).finish();
    await js.publish(resultsSubject("rc"), data, { msgID: `rc.0.${part}` });
    const again = await js.publish(resultsSubject("rc"), data, { msgID: `rc.0.${part}` });
    assert.equal(again.duplicate, true, "JetStream drops the same message id");
  }
  const jsm = await jetstreamManager(nc);
  await until(async () => {
    const ci = await jsm.consumers.info(RESULTS_STREAM, RESULTS_CONSUMER);
    return ci.num_ack_pending === 0 && ci.delivered.stream_seq >= 3 && Date.now() > failUntil;
  }, "every result acked after persistence recovered");
  await consumer.stop();
  assert.ok(duplicates > 0, "JetStream redelivered unacked results and they were recognised as duplicates");
  assert.ok(persistCalls > 1, "persistence was retried");
  assert.equal(agg.shardCount, 3);
  assert.equal(agg.cells, 12, "each cell aggregated once");
});

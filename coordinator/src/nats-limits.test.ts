// The coordinator's stream limits: a results stream made before them (no limits, delete and purge
// allowed) is brought in line at start; what a server refuses to change (e.g. replicas) is logged, the rest applied.
import { test } from "node:test";
import assert from "node:assert/strict";
import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { RESULTS_STREAM, RESULTS_SUBJECT_PREFIX } from "@factsweep/shared";
import { startNatsServer } from "@factsweep/testing";
import { natsLimits } from "./nats-limits.js";
import { ensureResultsStream } from "./results-consumer.js";

test("limits are checked and name the flag of a bad one", () => {
  assert.deepEqual(natsLimits({ replicas: 3, kvMaxBytes: undefined }).replicas, 3);
  assert.throws(() => natsLimits({ replicas: 2 }), /--nats-replicas must be 1, 3 or 5/);
  assert.throws(() => natsLimits({ resultsMaxBytes: 0 }), /--results-max-bytes must be a positive integer/);
  assert.throws(() => natsLimits({ resultsMaxAgeMs: 60_000 }), /--results-max-age-ms must be at least the results stream's duplicate window \(600000 ms\)/);
});

test("an existing results stream gets the configured bounds and deny delete/purge; the change is logged", async () => {
  const nats = await startNatsServer();
  try {
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: RESULTS_STREAM, subjects: [`${RESULTS_SUBJECT_PREFIX}.>`], storage: StorageType.File });
    const log: string[] = [];
    await ensureResultsStream(jsm, natsLimits({ replicas: 3, resultsMaxBytes: 10_000_000, resultsMaxAgeMs: 3_600_000 }), (m) => log.push(m));
    const cfg = (await jsm.streams.info(RESULTS_STREAM)).config;
    assert.equal(cfg.deny_delete, true, log.join("\n"));
    assert.equal(cfg.deny_purge, true);
    assert.equal(cfg.max_bytes, 10_000_000);
    assert.equal(cfg.max_age, 3_600_000 * 1e6);
    // nats-server 2.9 standalone keeps a requested replica count in the config (it runs R1); a server that refuses it gets the rest.
    assert.match(log.join("\n"), /stream FACTSWEEP_RESULTS (updated|: cannot change .*applied all but num_replicas)/);
    await assert.rejects(jsm.streams.purge(RESULTS_STREAM), /purge/i);
    await nc.close();
  } finally {
    await nats.stop();
  }
});

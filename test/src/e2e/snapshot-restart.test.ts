/**
 * Restart from an aggregate snapshot (issue 16): the coordinator is SIGKILLed mid-sweep once a
 * snapshot of the sweep is stored; the restarted one folds the snapshot and only the results stored
 * after its sequence, and every cell ends counted once and equal to the engine-alone reference.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { AGGREGATES_BUCKET, SNAPSHOTS_BUCKET } from "@factsweep/shared";
import { Cluster, engineReference, goldenMambaSpec } from "./cluster.js";
import { assertCompleteAndEqual } from "./assertions.js";

/** The sweep's snapshot manifest as stored (the epoch envelope's data), once one covers some results. */
async function waitForSnapshot(natsUrl: string, sweepId: string, timeoutMs = 60_000): Promise<{ seq: number; results: number }> {
  const nc = await connect({ servers: natsUrl });
  try {
    const kv = await new Kvm(nc).open(SNAPSHOTS_BUCKET);
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const e = await kv.get(`${sweepId}.m`);
      if (e?.operation === "PUT") {
        const m = (JSON.parse(e.string()) as { data: { seq: number; results: number } }).data;
        if (m.results > 0) return m;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`no snapshot of ${sweepId} within ${timeoutMs} ms`);
  } finally {
    await nc.close();
  }
}

/** Results in one stored value: a batch (`<sweep>.b.…`) frames several as `u32 length, bytes`; an older key holds one. */
function resultsIn(sweepId: string, key: string, value: Uint8Array): number {
  if (!key.startsWith(`${sweepId}.b.`)) return 1;
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  let n = 0;
  for (let at = 0; at + 4 <= value.length; at += 4 + view.getUint32(at)) n++;
  return n;
}

/** Waits until the aggregates bucket holds more than `than` stored results of the sweep; resolves with their number. */
async function waitForStoredResults(natsUrl: string, sweepId: string, than: number, timeoutMs = 60_000): Promise<number> {
  const nc = await connect({ servers: natsUrl });
  try {
    const kv = await new Kvm(nc).open(AGGREGATES_BUCKET);
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      let n = 0;
      for await (const key of await kv.keys(`${sweepId}.>`)) {
        const e = await kv.get(key);
        if (e?.operation === "PUT") n += resultsIn(sweepId, key, e.value);
      }
      if (n > than) return n;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no more than ${than} stored results of ${sweepId} within ${timeoutMs} ms`);
  } finally {
    await nc.close();
  }
}

test("the coordinator SIGKILLed after a snapshot restarts from it plus the results stored after it; every cell counted once", async (t) => {
  // Snapshots every second: one is stored well before the sweep ends, and the kill comes between two.
  const cluster = await new Cluster({ agents: 3, leaseTtlMs: 2000, coordinatorArgs: ["--snapshot-ms", "1000"] }).start();
  const id = "snap-restart";
  try {
    const spec = cluster.writeSpec(`${id}.yaml`, goldenMambaSpec({ prompts: 30, name: id }));
    const launched = await cluster.sweepctl("launch", spec, "--id", id, "--detach");
    assert.equal(launched.exitCode, 0, launched.stderr);
    const m = await waitForSnapshot(cluster.nats.url, id);
    // Results stored after the snapshot: a tail for the restart to read.
    const stored = await waitForStoredResults(cluster.nats.url, id, m.results);
    const before = await cluster.waitFor(id, () => true);
    assert.equal(before.state, "running", "the sweep must still run when the coordinator is killed");
    cluster.coordinator.kill("SIGKILL");
    await cluster.coordinator.catch(() => undefined);
    const from = cluster.coordinatorLog.length;
    await cluster.startCoordinator();
    const restart = cluster.coordinatorLog.slice(from).join("");
    const loaded = /sweep snap-restart: (\d+) result\(s\) from its snapshot \(to sequence (\d+)\), (\d+) stored after it/.exec(restart);
    assert.ok(loaded, `the restart did not load the snapshot:\n${restart.slice(-3000)}`);
    const [fromSnapshot, seq, tail] = [Number(loaded[1]), Number(loaded[2]), Number(loaded[3])];
    assert.ok(fromSnapshot >= m.results, "the snapshot read holds at least what it held before the kill");
    assert.ok(fromSnapshot + tail >= stored, `snapshot ${fromSnapshot} + tail ${tail} results read, ${stored} were stored before the kill`);
    // No later snapshot before the kill: the results stored after this one came from the tail.
    if (seq === m.seq) assert.ok(tail >= stored - m.results, `tail ${tail}: ${stored - m.results} were stored after the snapshot`);
    const done = await cluster.waitFor(id, (s) => s.state === "done", 240_000);
    t.diagnostic(
      `killed at ${before.counts.doneCells}/${before.counts.plannedCells} cells (${stored} results stored, ${m.results} in the snapshot seen); restart read ${fromSnapshot} results from the snapshot (to sequence ${seq}) and ${tail} after it`,
    );
    await assertCompleteAndEqual(cluster, id, await engineReference(spec), done.counts.shardsTotal);
  } catch (err) {
    console.error(cluster.logs());
    throw err;
  } finally {
    await cluster.stop();
  }
});

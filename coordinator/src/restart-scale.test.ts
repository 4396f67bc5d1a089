// Issue 16: every cell still counted once after a coordinator crash in the middle of a large sweep
// (19,200 one-cell shards), with the shard state that is not a record per shard: the restarted
// coordinator re-plans, restores the lease journals and counts from the stored results. Real
// nats-server and coordinator; the agents' engine is the named test double `fakeEngine`.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import type { control } from "@factsweep/proto";
import { SHARDS_BUCKET } from "@factsweep/shared";
import { siteToEnum, type SiteName } from "@factsweep/planning";
import { fakeP, FakeAgents, goldenSpec, GOLDEN_DIR, startHarness, until, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

let h: Harness<Coordinator, CoordinatorOptions> | undefined;
const fleet = new FakeAgents();
afterEach(async () => {
  await fleet.killAll();
  await h?.close();
  h = undefined;
});

const PROMPTS = 800; // × 4 layers × 6 tokens of the tiny golden Mamba, one cell a shard
const CELLS = PROMPTS * 4 * 6;

test(`a coordinator crashed in the middle of a ${CELLS}-shard sweep restarts from the plan, journals and stored results; every cell is counted once`, async () => {
  h = await startHarness(Coordinator.start);
  const id = "big";
  const startAgents = async () => {
    for (let i = 0; i < 4; i++) await fleet.start(h!, { agentId: `a${i}`, slots: 8, workers: 4 });
  };
  await h.coord.launch({ spec: goldenSpec({ prompts: PROMPTS, shardCells: 1 }), sweepId: id, specDir: GOLDEN_DIR });
  await startAgents();
  await until(() => (h!.coord.get(id).counts?.doneCells ?? 0) >= CELLS * 0.4, "40% of the cells counted", 120_000);
  const before = h.coord.get(id).counts?.doneCells ?? 0;
  await h.restart("crash"); // no flush: whatever was written, was written
  await fleet.killAll();
  const after = h.coord.get(id);
  assert.equal(after.counts?.shardsTotal, CELLS, "every planned shard is back (re-planned: no record per shard)");
  assert.ok(
    (after.counts?.doneCells ?? 0) >= before,
    `a counted cell is stored before it counts: ${after.counts?.doneCells} counted after the restart, ${before} before`,
  );
  // The store holds no record per shard: a healthy run writes lease journals and failure records only.
  const nc = await connect({ servers: h.nats.url });
  let records = 0;
  try {
    for await (const k of await (await new Kvm(nc).open(SHARDS_BUCKET)).keys(`${id}.>`)) if (k.split(".")[1] !== "L") records++;
  } finally {
    await nc.close();
  }
  assert.ok(records < CELLS / 100, `${records} shard records for ${CELLS} shards`);
  await startAgents();
  await until(() => h!.coord.get(id).state !== "running", "the sweep to end", 180_000);
  const end = h.coord.get(id);
  assert.equal(end.state, "done");
  assert.equal(end.counts?.doneCells, CELLS);
  const rows: control.ResultRow[] = [...h.coord.results(id)];
  assert.equal(rows.length, CELLS, "one row per planned cell");
  const keys = new Set(rows.map((r) => `${r.promptIndex}/${r.site}/${r.layer}/${r.token}/${r.window}`));
  assert.equal(keys.size, CELLS, "no cell twice");
  for (const r of rows) assert.equal(r.p, fakeP(r.promptIndex, siteToEnum(r.site as SiteName), r.layer, r.token, r.window));
});

// Issue 15 (bounds): each prompt stored once per sweep, finished sweeps let go from memory and
// loaded on demand, and `delete` of a finished sweep's state and results; against a real
// nats-server and coordinator with the fake agent.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { control } from "@factsweep/proto";
import { AGGREGATES_BUCKET, SHARDS_BUCKET, SWEEPS_BUCKET } from "@factsweep/shared";
import { call, FakeAgents, goldenSpec, GOLDEN_DIR, startHarness, until, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

let h: Harness<Coordinator, CoordinatorOptions> | undefined;
const fleet = new FakeAgents();
afterEach(async () => {
  await fleet.killAll();
  await h?.close();
  h = undefined;
});

const launch = (spec: string, sweepId: string) => h!.coord.launch({ spec, sweepId, specDir: GOLDEN_DIR });
const ended = (id: string) => until(() => ["done", "failed", "cancelled"].includes(h!.coord.get(id).state), `sweep ${id} to end`);

/** Keys of a KV bucket under a sweep (`<sweep>.>`), or the sweep's own key in the sweeps bucket. */
async function kvKeys(bucket: string, filter: string): Promise<string[]> {
  const nc = await connect({ servers: h!.nats.url });
  try {
    const kv = await new Kvm(nc).open(bucket);
    const out: string[] = [];
    for await (const k of await kv.keys(filter)) {
      const e = await kv.get(k);
      if (e?.operation === "PUT") out.push(k);
    }
    return out;
  } finally {
    await nc.close();
  }
}

/** Every ResultRow of a sweep through the SweepService (which loads a finished sweep on demand). */
function rowsOverGrpc(sweepId: string): Promise<control.ResultRow[]> {
  return new Promise((res, rej) => {
    const rows: control.ResultRow[] = [];
    const s = h!.sweeps.results({ sweepId });
    s.on("data", (r: control.ResultRow) => rows.push(r));
    s.on("end", () => res(rows));
    s.on("error", rej);
  });
}

test("each prompt is stored once per sweep: no record per shard (the plan is the sweep record's), open leases in a journal per agent, grants carry the whole prompt", async () => {
  h = await startHarness(Coordinator.start);
  const holder = await fleet.start(h, { agentId: "holder", hold: true, slots: 8, workers: 2 });
  // 4 layers x 6 tokens = 24 cells a prompt, 6 a shard: four shards share each prompt.
  await launch(goldenSpec({ prompts: 2, shardCells: 6 }), "once");
  await until(() => holder.heldLeases().length === 8, "every shard granted");
  for (const l of holder.heldLeases()) assert.ok((l.shard?.prompt?.inputIds.length ?? 0) > 0, `grant of ${l.shard?.shardId} carries the prompt's tokens`);
  await h.coord.stop(); // flush the journal
  const nc = await connect({ servers: h.nats.url });
  try {
    const kvm = new Kvm(nc);
    const shards = await kvm.open(SHARDS_BUCKET);
    const keys: string[] = [];
    for await (const k of await shards.keys("once.>")) keys.push(k);
    const key = `once.L.${Buffer.from("holder").toString("base64url")}`;
    assert.deepEqual(
      keys.sort(),
      [key, "once.P.0"].sort(),
      "a launch and its grants write no shard record, only the sweep's prompts and the agent's lease journal",
    );
    const journal = JSON.parse((await shards.get(key))!.string()).data as [string, string, number, string, string][];
    assert.deepEqual(
      journal.map((l) => l[0]).sort(),
      holder
        .heldLeases()
        .map((l) => l.shard!.shardId)
        .sort(),
      "every open lease is in the journal",
    );
    for (const l of journal) assert.equal(l[4], "holder");
    assert.ok(JSON.stringify(journal).length < 2000, "the journal holds no prompt");
    const prompts = JSON.parse((await shards.get("once.P.0"))!.string()).data as { inputIds: number[] }[];
    assert.equal(prompts.length, 2, "the sweep's prompts are stored once");
    assert.ok(prompts.every((p) => p.inputIds.length > 0));
  } finally {
    await nc.close();
  }
  h.coord = await Coordinator.start({ ...h.opts, grpcPort: 0 }); // for close()
});

test("finished sweeps beyond --keep-finished leave memory, are listed from their summary and loaded on demand, also after a restart", async () => {
  h = await startHarness(Coordinator.start, { keepFinished: 1 });
  await fleet.start(h, { agentId: "worker" });
  for (const id of ["old", "new"]) {
    await launch(goldenSpec({ prompts: 2, shardCells: 24 }), id);
    await ended(id);
  }
  assert.equal(h.coord.get("old").state, "done", "a let-go sweep still answers Get from its summary");
  assert.equal(h.coord.get("old").counts?.doneCells, 48);
  assert.deepEqual(
    h.coord.list().map((s) => s.sweepId),
    ["old", "new"],
  );
  assert.throws(() => [...h!.coord.results("old")], /not held in memory/, "its aggregate has left memory");
  assert.equal([...h.coord.results("new")].length, 48, "the most recent one is held");
  assert.equal((await rowsOverGrpc("old")).length, 48, "the SweepService loads it on demand");
  assert.equal([...h.coord.results("old")].length, 48, "now held");
  assert.throws(() => [...h!.coord.results("new")], /not held in memory/, "and the other one let go (keep 1)");

  await h.restart("graceful");
  assert.deepEqual(
    h.coord.list().map((s) => [s.sweepId, s.state, s.counts?.doneCells]),
    [
      ["old", "done", 48],
      ["new", "done", 48],
    ],
  );
  assert.throws(() => [...h!.coord.results("old")], /not held in memory/, "a restart loads no finished sweep's shards or results");
  assert.equal((await rowsOverGrpc("new")).length, 48);
  const report = (await call(h.sweeps, h.sweeps.report, { sweepId: "old" })) as control.ReportData;
  assert.equal(report.kind, "trace");
  assert.ok(report.traceJson.length > 0);
});

test("delete removes a finished or cancelled sweep's record, shard records and stored results; a running one is refused", async () => {
  h = await startHarness(Coordinator.start);
  const holder = await fleet.start(h, { agentId: "holder", hold: true, slots: 1 });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "busy");
  await until(() => holder.heldLeases().length === 1, "a shard held");
  await assert.rejects(call(h.sweeps, h.sweeps.delete, { sweepId: "busy" }), (e: grpc.ServiceError) => {
    assert.equal(e.code, grpc.status.FAILED_PRECONDITION);
    assert.match(e.details, /running; cancel it first \(sweepctl cancel busy\)/);
    return true;
  });
  await assert.rejects(call(h.sweeps, h.sweeps.delete, { sweepId: "nosuch" }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  await fleet.killAll();
  await fleet.start(h, { agentId: "worker" });
  await launch(goldenSpec({ prompts: 2, shardCells: 24 }), "gone");
  await ended("gone");
  h.coord.cancel("busy");
  await h.restart("graceful"); // every record durable, then a fresh coordinator
  await fleet.killAll();
  const stored = await kvKeys(AGGREGATES_BUCKET, "gone.>");
  assert.ok(stored.length > 0 && stored.every((k) => k.startsWith("gone.b.")), `results stored in batches: ${stored.join(", ")}`);
  const reply = await call(h.sweeps, h.sweeps.delete, { sweepId: "gone" });
  assert.deepEqual(reply, { sweepId: "gone", shardsRemoved: 2, resultsRemoved: 2 });
  const cancelled = (await call(h.sweeps, h.sweeps.delete, { sweepId: "busy" })) as control.DeleteReply;
  assert.equal(cancelled.shardsRemoved, 2);
  for (const id of ["gone", "busy"]) {
    assert.deepEqual(await kvKeys(SWEEPS_BUCKET, id), [], `${id}: record removed`);
    assert.deepEqual(await kvKeys(SHARDS_BUCKET, `${id}.>`), [], `${id}: shard records removed`);
    assert.deepEqual(await kvKeys(AGGREGATES_BUCKET, `${id}.>`), [], `${id}: stored results removed`);
  }
  assert.deepEqual(
    h.coord.list().map((s) => s.sweepId),
    [],
  );
  await assert.rejects(call(h.sweeps, h.sweeps.get, { sweepId: "gone" }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  // The id is free again, and a restart does not bring the deleted sweeps back.
  await fleet.start(h, { agentId: "worker2" });
  await launch(goldenSpec({ prompts: 1, shardCells: 24 }), "gone");
  await ended("gone");
  await h.restart("graceful");
  assert.deepEqual(
    h.coord.list().map((s) => [s.sweepId, s.counts?.doneCells]),
    [["gone", 24]],
  );
});

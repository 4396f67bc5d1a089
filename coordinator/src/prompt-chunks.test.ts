// A sweep's prompts are stored beside its record, in chunks under NATS' 1 MiB max_payload: a record
// that held them all capped a sweep at a few thousand prompts (issue 16). Real nats-server and
// coordinator; the agents' engine is the named test double `fakeEngine`.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { SHARDS_BUCKET, SWEEPS_BUCKET } from "@factsweep/shared";
import { FakeAgents, REPO_ROOT, startHarness, until, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";
import { promptsKey } from "./state-store.js";

let h: Harness<Coordinator, CoordinatorOptions> | undefined;
const fleet = new FakeAgents();
afterEach(async () => {
  await fleet.killAll();
  await h?.close();
  h = undefined;
});

const FACTS = 12_000; // ~3 MB of prompts as proto JSON: three times what one KV value may hold

/** A relation file of FACTS facts of the tiny world's first relation, its subjects numbered so each prompt differs. */
function bigRelation(dir: string): string {
  const rel = JSON.parse(readFileSync(join(REPO_ROOT, "models/world/relations/company_country.json"), "utf8")) as {
    samples: { subject: string; object: string }[];
  };
  const samples = Array.from({ length: FACTS }, (_, i) => ({
    ...rel.samples[i % rel.samples.length]!,
    subject: `${rel.samples[i % rel.samples.length]!.subject} ${i}`,
  }));
  const file = join(dir, "many.json");
  writeFileSync(file, JSON.stringify({ ...rel, samples }));
  return file;
}

/** A trace spec over the relation file: one one-cell shard a fact. */
const relationSpec = (name: string, relation: string): string =>
  [
    `name: ${name}`,
    "kind: trace",
    `model: { id: m, path: ${join(REPO_ROOT, "models/mamba-facts")} }`,
    `dataset: { relations: [${relation}], per_relation: ${FACTS} }`,
    "corruption: { kind: noise, samples: 2, seed: 3 }",
    "grid: [{ site: residual, window: 1 }]",
    "layers: [0]",
    "tokens: [last]",
  ].join("\n");

test(`a sweep of ${FACTS} prompts launches, restarts after a crash with every prompt as planned, and runs to the end`, async () => {
  const dir = mkdtempSync(join(tmpdir(), "factsweep-many-"));
  const relation = bigRelation(dir);
  h = await startHarness(Coordinator.start, { modelRoots: [join(REPO_ROOT, "models")], dataRoots: [dir] });
  const id = "many";
  await h.coord.launch({ spec: relationSpec("many prompts", relation), sweepId: id, specDir: dir });
  assert.equal(h.coord.get(id).counts?.shardsTotal, FACTS, "one one-cell shard a fact");

  const nc = await connect({ servers: h.nats.url });
  try {
    const kvm = new Kvm(nc);
    const record = (await (await kvm.open(SWEEPS_BUCKET)).get(id))!;
    assert.ok(record.length < 64 * 1024, `the sweep record is ${record.length} bytes: its prompts are not in it`);
    const shards = await kvm.open(SHARDS_BUCKET);
    const chunks: string[] = [];
    for await (const k of await shards.keys(`${id}.P.*`)) chunks.push(k);
    assert.ok(chunks.length >= 3, `${chunks.length} prompt chunks`);
    for (const k of chunks) assert.ok((await shards.get(k))!.length < 512 * 1024, `${k} fits a KV value`);
  } finally {
    await nc.close();
  }

  await fleet.start(h, { agentId: "a0", slots: 8, workers: 4 });
  await until(() => (h!.coord.get(id).counts?.doneCells ?? 0) >= 500, "some shards counted", 120_000);
  await h.restart("crash");
  await fleet.killAll();
  const after = h.coord.get(id);
  assert.equal(after.state, "running", "re-planned from the stored prompts (other prompts than stored would fail the sweep)");
  assert.equal(after.counts?.shardsTotal, FACTS);
  await fleet.start(h, { agentId: "a1", slots: 8, workers: 4 });
  await until(() => h!.coord.get(id).state !== "running", "the sweep to end", 240_000);
  assert.equal(h.coord.get(id).state, "done");
  assert.equal(h.coord.get(id).counts?.doneCells, FACTS, "every fact's cell counted once");
  assert.equal(new Set([...h.coord.results(id)].map((r) => r.promptIndex)).size, FACTS, "a row for every prompt");
});

test("a sweep whose stored prompts lost a chunk is skipped at a restart with a message naming the key; other sweeps load", async () => {
  const dir = mkdtempSync(join(tmpdir(), "factsweep-many-"));
  const relation = bigRelation(dir);
  const logs: string[] = [];
  h = await startHarness(Coordinator.start, { modelRoots: [join(REPO_ROOT, "models")], dataRoots: [dir], log: (m) => logs.push(m) });
  await h.coord.launch({ spec: relationSpec("hurt", relation), sweepId: "hurt", specDir: dir });
  await h.coord.launch({ spec: relationSpec("whole", relation), sweepId: "whole", specDir: dir });
  const nc = await connect({ servers: h.nats.url });
  try {
    await (await new Kvm(nc).open(SHARDS_BUCKET)).purge(promptsKey("hurt", 1));
  } finally {
    await nc.close();
  }
  await h.restart("graceful");
  assert.ok(
    logs.some((m) => m.includes("sweep hurt: its stored prompts are incomplete") && m.includes(promptsKey("hurt", 1))),
    logs.filter((m) => m.includes("hurt")).join("\n"),
  );
  assert.equal(h.coord.get("whole").counts?.shardsTotal, FACTS, "the other sweep loads");
  // What the message says to do works: the skipped sweep can be deleted, and its id launched again.
  await h.coord.delete("hurt");
  await h.coord.launch({ spec: relationSpec("hurt", relation), sweepId: "hurt", specDir: dir });
  assert.equal(h.coord.get("hurt").counts?.shardsTotal, FACTS);
});

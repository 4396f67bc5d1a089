/**
 * Issue 17 item 2: ROME's key covariance C once per cluster, with real processes (nats-server,
 * coordinator, two agents, engine workers) on the shipped tiny Mamba. A 2-agent edit sweep computes
 * each C once (covariance shards, merged by the coordinator into the object store; metric: one
 * computed per C, every edit's C fetched), gives the scores of a single agent whose engine computes C
 * itself, and a later sweep needing the same C plans no covariance shard.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { KindRow } from "@factsweep/planning";
import { Cluster, REPO } from "./cluster.js";

const MODELS = join(REPO, "models");
const RELATION = join(MODELS, "world/relations/company_country.json");

let cluster: Cluster;
before(async () => {
  cluster = await new Cluster({ agents: 2, modelRoots: [MODELS] }).start();
});
after(async () => {
  await cluster?.stop();
});

/** An edit sweep of 2 cases × (W_o, W_a) at one layer: two distinct C (out_proj's and in_proj's input). */
const spec = (covShards: number, layer = 2) => `kind: edit
model: { id: mamba-facts, path: ${join(MODELS, "mamba-facts")} }
dataset: { relations: [${RELATION}] }
edit: { cases: 2, matrices: [W_o, W_a], max_corpus: 64, cov_shards: ${covShards}, paraphrases: 1, neighbours: 1, hparams: { v_num_grad_steps: 3, context_template_length_params: [[5, 2]], cov_ridge: 0.01 } }
layers: [${layer}]
`;

async function launch(id: string, body: string): Promise<void> {
  const path = cluster.writeSpec(`${id}.yaml`, `name: ${id}\n${body}`);
  const launched = await cluster.sweepctl("launch", path, "--id", id, "--detach");
  assert.equal(launched.exitCode, 0, `launch failed: ${launched.stderr}\n${cluster.logs()}`);
}

async function run(id: string, body: string): Promise<{ rows: KindRow[]; shards: number }> {
  await launch(id, body);
  return await finished(id);
}

async function finished(id: string): Promise<{ rows: KindRow[]; shards: number }> {
  const info = await cluster.waitFor(id, (s) => s.state !== "running", 600_000);
  assert.equal(info.state, "done", `${id}: ${JSON.stringify(info)}\n${cluster.logs()}`);
  const out = await cluster.sweepctl("results", id, "--format", "jsonl");
  assert.equal(out.exitCode, 0, out.stderr);
  const rows = out.stdout
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as KindRow)
    .sort((a, b) => Number(a.case) - Number(b.case) || String(a.matrix).localeCompare(String(b.matrix)));
  // No retry: no edit ran before its C was stored (it would have failed to fetch it).
  assert.equal(info.counts.retries ?? 0, 0, `${id}: ${JSON.stringify(info)}\n${cluster.logs()}`);
  return { rows, shards: info.counts.shardsTotal };
}

/** A counter's value by label set from a /metrics text (0 when absent). */
async function counter(port: number, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels)); // after the registry's default labels
  return line ? Number(line.split(" ").pop()) : 0;
}

const agentPort = (i: number): number => Number(/http_port=(\d+)/.exec(cluster.agents[i]!.log.join(""))?.[1]);

test("a 2-agent edit sweep computes each C once, every edit fetches it, and the scores equal a single agent's that computes C itself", async () => {
  const two = await run("cov-two", spec(2));
  // 4 edits + 2 C × 2 covariance shards
  assert.equal(two.shards, 8);
  assert.equal(await counter(cluster.httpPort, "factsweep_covariances_total", 'source="computed"'), 2, cluster.logs());
  const used = { fetched: 0, local: 0 };
  for (const i of [0, 1]) {
    for (const source of ["fetched", "local"] as const) used[source] += await counter(agentPort(i), "factsweep_agent_covariances_total", `source="${source}"`);
  }
  assert.equal(used.fetched + used.local, 4, `every edit used a stored C: ${JSON.stringify(used)}`);
  assert.ok(used.fetched >= 2 && used.fetched <= 4, `each agent fetches a C at most once: ${JSON.stringify(used)}`);

  // The same C again: nothing computed, no covariance shard planned.
  const again = await run("cov-again", spec(2));
  assert.equal(again.shards, 4);
  assert.equal(await counter(cluster.httpPort, "factsweep_covariances_total", 'source="computed"'), 2);

  // One agent, its engine computing C from the whole corpus in one go (cov_shards 0).
  const second = cluster.agents[1]!.child;
  second.kill("SIGTERM");
  await second;
  const one = await run("cov-one", spec(0));
  assert.equal(one.shards, 4);
  assertSameScores(two.rows, one.rows, "two agents");
  assertSameScores(again.rows, one.rows, "again");
});

function assertSameScores(rows: KindRow[], ref: KindRow[], what: string): void {
  assert.equal(rows.length, ref.length);
  rows.forEach((row, i) => {
    const want = ref[i]!;
    assert.equal(row.matrix, want.matrix);
    assert.equal(row.case, want.case);
    for (const m of ["ES", "PS", "NS", "S", "pre_ES", "pre_PS", "pre_NS"]) assert.equal(row[m], want[m], `${what} row ${i} ${m}`);
    for (const m of ["EM", "PM", "NM"]) {
      assert.ok(Math.abs(Number(row[m]) - Number(want[m])) <= 1e-4 * Math.max(1, Math.abs(Number(want[m]))), `${what} row ${i} ${m}: ${row[m]} vs ${want[m]}`);
    }
    assert.equal(row.restored, true);
  });
}

test("a coordinator restarted while the edits wait for their C still holds them, and the sweep ends with a single agent's scores", async () => {
  // No agent: the covariance shards stay pending and the edits held while the coordinator dies.
  const first = cluster.agents[0]!.child;
  first.kill("SIGTERM");
  await first;
  await launch("cov-restart", spec(2, 5));
  cluster.coordinator.kill("SIGKILL");
  await cluster.coordinator;
  await cluster.startCoordinator();
  const agent = await cluster.startAgent("agent-3");
  const restarted = await finished("cov-restart");
  assert.equal(restarted.shards, 8);
  assert.equal(await counter(cluster.httpPort, "factsweep_covariances_total", 'source="computed"'), 2, cluster.logs());
  const port = Number(/http_port=(\d+)/.exec(agent.log.join(""))?.[1]);
  assert.equal(await counter(port, "factsweep_agent_covariances_total", 'source="fetched"'), 2);
  assertSameScores(restarted.rows, (await run("cov-restart-one", spec(0, 5))).rows, "after a restart");
});

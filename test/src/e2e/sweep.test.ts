import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Cluster, engineReference, goldenMambaSpec, GOLDEN, REPO } from "./cluster.js";
import { assertCompleteAndEqual } from "./assertions.js";
import { join } from "node:path";
import { readFileSync } from "node:fs";

let cluster: Cluster;
before(async () => {
  cluster = await new Cluster({ agents: 3, modelRoots: [GOLDEN, join(REPO, "models")] }).start();
});
after(async () => {
  await cluster?.stop();
});

test("coordinator and three agents, as separate processes over a real nats-server, complete a sweep equal to the engine run alone", async (t) => {
  const spec = cluster.writeSpec("sweep.yaml", goldenMambaSpec({ prompts: 6 }));
  const launched = await cluster.sweepctl("launch", spec, "--id", "e2e-happy", "--quiet");
  assert.equal(launched.exitCode, 0, `launch failed: ${launched.stderr}\n${cluster.logs()}`);
  const info = await cluster.waitFor("e2e-happy", (s) => s.state === "done");
  const reference = await engineReference(spec);
  assert.equal(info.counts.plannedCells, reference.size);
  const rows = await assertCompleteAndEqual(cluster, "e2e-happy", reference, info.counts.shardsTotal);
  // Work was spread: more than one agent did shards.
  const agents = JSON.parse((await cluster.sweepctl("agents", "--json")).stdout) as { agents: { agentId: string; shardsDone: number }[] };
  const busy = agents.agents.filter((a) => a.shardsDone > 0);
  t.diagnostic(`cells ${rows.length}, shards ${info.counts.shardsTotal}, agents with work: ${busy.map((a) => `${a.agentId}=${a.shardsDone}`).join(" ")}`);
  assert.ok(busy.length >= 2, `only ${busy.length} agent(s) got work`);
});

test("sweepctl report draws a finished sweep from the coordinator: one heatmap per site with every layer", async () => {
  const out = join(cluster.dir, "report");
  const r = await cluster.sweepctl("report", "e2e-happy", "--out", out);
  assert.equal(r.exitCode, 0, r.stderr);
  const html = readFileSync(join(out, "report.html"), "utf8");
  const figures = [
    ...html.matchAll(/<figure class="heatmap" data-model="[^"]*" data-site="([a-z_]+)" data-window="(\d+)" data-groups="(\d+)" data-layers="(\d+)"/g),
  ];
  assert.deepEqual(figures.map((f) => f[1]).sort(), ["gate", "mixer", "residual", "ssm"]);
  for (const f of figures) assert.equal(Number(f[4]), 4, `site ${f[1]}: every layer of mamba-tiny`);
  const csv = readFileSync(join(out, "report.csv"), "utf8").trim().split("\n");
  assert.ok(csv.length > 1 && csv[0]!.startsWith("model,model_type,sweep_id"));
  const unknown = await cluster.sweepctl("report", "no-such-sweep", "--out", out);
  assert.equal(unknown.exitCode, 3, unknown.stderr);
});

test("noise corruption sweeps also match the engine run alone", async () => {
  const spec = cluster.writeSpec("noise.yaml", goldenMambaSpec({ prompts: 2, corruption: "{ kind: noise, scale: 3, samples: 4, seed: 7 }" }));
  const launched = await cluster.sweepctl("launch", spec, "--id", "e2e-noise", "--quiet");
  assert.equal(launched.exitCode, 0, launched.stderr);
  const info = await cluster.waitFor("e2e-noise", (s) => s.state === "done");
  await assertCompleteAndEqual(cluster, "e2e-noise", await engineReference(spec), info.counts.shardsTotal);
});

test("bad input gets a clear error, loses nothing, and the coordinator keeps serving", async () => {
  const first = cluster.writeSpec("first.yaml", goldenMambaSpec({ prompts: 1 }));
  assert.equal((await cluster.sweepctl("launch", first, "--id", "e2e-first", "--quiet")).exitCode, 0);
  const before = await cluster.results("e2e-first");

  const malformed = cluster.writeSpec("bad.yaml", "name: bad\nkind: trace\nmodel: { id: m, path: x }\ngrid: [{ site: residual, window: -1 }]\n");
  let r = await cluster.sweepctl("launch", malformed);
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /dataset|grid/);

  const unknownModel = cluster.writeSpec("nomodel.yaml", goldenMambaSpec().replace(join(GOLDEN, "mamba-tiny"), join(GOLDEN, "no-such-model")));
  r = await cluster.sweepctl("launch", unknownModel);
  assert.equal(r.exitCode, 3, r.stderr);
  assert.match(r.stderr, /no-such-model/);

  const outside = cluster.writeSpec("outside.yaml", goldenMambaSpec().replace(join(GOLDEN, "mamba-tiny"), "/etc"));
  r = await cluster.sweepctl("launch", outside);
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /model root/i);

  const dup = cluster.writeSpec("dup.yaml", goldenMambaSpec({ prompts: 1 }));
  r = await cluster.sweepctl("launch", dup, "--id", "e2e-first");
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /e2e-first/);
  assert.match(r.stderr, /exist/i);

  // A prompt whose subject is not in the text is reported and skipped; the others run.
  const rel = JSON.parse(readFileSync(join(REPO, "models/world/relations/person_occupation.json"), "utf8")) as {
    prompt_templates: string[];
    samples: { subject: string }[];
  };
  const subject = rel.samples[0]!.subject;
  const fact = { subject, text: rel.prompt_templates[0]!.replace("{}", subject) };
  const textSpec = cluster.writeSpec(
    "subject.yaml",
    `name: subj
kind: trace
model: { id: mamba-facts, path: ${join(REPO, "models", "mamba-facts")} }
dataset:
  prompts:
    - { text: "${fact.text}", subject: "${fact.subject}" }
    - { text: "${fact.text}", subject: "Big Ben" }
corruption: { kind: noise, samples: 2, seed: 1 }
grid: [{ site: residual, window: 1 }]
layers: all
tokens: [subject_last, last]
`,
  );
  r = await cluster.sweepctl("launch", textSpec, "--id", "e2e-subject", "--quiet");
  assert.match(r.stderr, /Big Ben/);
  const subj = await cluster.waitFor("e2e-subject", (s) => s.state !== "running");
  assert.equal(subj.promptErrors.length, 1);
  assert.equal(subj.promptErrors[0]?.promptIndex, 1);
  assert.ok(subj.counts.doneCells > 0);

  // Nothing computed before was lost and the coordinator still answers.
  assert.deepEqual(await cluster.results("e2e-first"), before);
  assert.equal((await cluster.sweepctl("list")).exitCode, 0);
});

test("sweepctl delete removes a finished sweep's state and results, and refuses a running one until it is cancelled", async () => {
  const small = cluster.writeSpec("del.yaml", goldenMambaSpec({ prompts: 1 }));
  assert.equal((await cluster.sweepctl("launch", small, "--id", "e2e-del", "--quiet")).exitCode, 0);
  const del = await cluster.sweepctl("delete", "e2e-del");
  assert.equal(del.exitCode, 0, del.stderr);
  assert.match(del.stdout, /sweep e2e-del deleted: \d+ shard record\(s\), \d+ stored result\(s\)/);
  assert.equal((await cluster.sweepctl("status", "e2e-del")).exitCode, 3, "gone");
  const list = JSON.parse((await cluster.sweepctl("list", "--json")).stdout) as { sweeps?: { sweepId: string }[] };
  assert.ok(!(list.sweeps ?? []).some((s) => s.sweepId === "e2e-del"));

  const big = cluster.writeSpec("del-running.yaml", goldenMambaSpec({ prompts: 30 }));
  assert.equal((await cluster.sweepctl("launch", big, "--id", "e2e-del-run", "--detach")).exitCode, 0);
  const refused = await cluster.sweepctl("delete", "e2e-del-run");
  assert.notEqual(refused.exitCode, 0);
  assert.match(refused.stderr, /running; cancel it first \(sweepctl cancel e2e-del-run\)/);
  assert.equal((await cluster.sweepctl("cancel", "e2e-del-run")).exitCode, 0);
  assert.equal((await cluster.sweepctl("delete", "e2e-del-run")).exitCode, 0);
});

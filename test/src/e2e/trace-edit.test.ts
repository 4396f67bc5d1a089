/**
 * Tracing chooses the edit (issue 17 item 3), through the whole system: a trace sweep of the tiny
 * Mamba runs on real agents and engine workers, then an edit sweep with `layers: { from_trace }`
 * (the trace's sweep id, then its archived run folder) edits each case at its fact's peak IE at the
 * last subject token on `mixer` (W_o's site), and every row says so. The peaks are recomputed here
 * from the trace's exported cells, not taken from the coordinator's choice.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Cluster, REPO } from "./cluster.js";

const MODELS = join(REPO, "models");
// company_hq_city: on the tiny Mamba its two first facts peak at different mixer layers (window 2), one with IE 0.12.
const REL = join(MODELS, "world/relations/company_hq_city.json");
const RUNS = mkdtempSync(join(tmpdir(), "factsweep-trace-edit-"));

let cluster: Cluster;
before(async () => {
  // The run folder of the archived trace lies under a data root (the data roots default to the model roots).
  cluster = await new Cluster({ agents: 1, modelRoots: [MODELS, RUNS] }).start();
});
after(async () => {
  await cluster?.stop();
});

type Row = Record<string, unknown>;

async function jsonl(id: string): Promise<Row[]> {
  const out = await cluster.sweepctl("results", id, "--format", "jsonl");
  assert.equal(out.exitCode, 0, out.stderr);
  return out.stdout
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Row);
}

async function run(id: string, body: string): Promise<Row[]> {
  const spec = cluster.writeSpec(`${id}.yaml`, `name: ${id}\n${body}`);
  const launched = await cluster.sweepctl("launch", spec, "--id", id, "--quiet");
  assert.equal(launched.exitCode, 0, `launch failed: ${launched.stderr}\n${cluster.logs()}`);
  const info = await cluster.waitFor(id, (s) => s.state !== "running", 600_000);
  assert.equal(info.state, "done", `${id}: ${JSON.stringify(info)}\n${cluster.logs()}`);
  return jsonl(id);
}

const editSpec = (from: string) => `kind: edit
model: { id: mamba-facts, path: ${join(MODELS, "mamba-facts")} }
dataset: { relations: [${REL}], per_relation: 2 }
edit: { cases: 2, matrices: [W_o], max_corpus: 32, paraphrases: 1, neighbours: 1, hparams: { v_num_grad_steps: 3, context_template_length_params: [[5, 1]], cov_ridge: 0.01 } }
layers: { from_trace: ${from} }
`;

test("an edit sweep with layers: { from_trace } edits each case at its trace peak layer (sweep id and archived run folder), and its rows say so", async () => {
  const traceSpec = `kind: trace
model: { id: mamba-facts, path: ${join(MODELS, "mamba-facts")} }
dataset: { relations: [${REL}], per_relation: 2 }
grid: [{ site: mixer, window: 2 }]
tokens: all
`;
  const traceRows = await run("e2e-fromtrace-trace", traceSpec);
  // Each fact's peak: the highest IE at its last subject token on mixer (a tie: the lowest layer).
  const want = new Map<string, { layer: number; ie: number }>();
  for (const r of traceRows) {
    if (r.site !== "mixer" || r.token_group !== "subject_last" || typeof r.ie !== "number") continue;
    const cur = want.get(String(r.subject));
    const layer = Number(r.layer);
    if (!cur || r.ie > cur.ie || (r.ie === cur.ie && layer < cur.layer)) want.set(String(r.subject), { layer, ie: r.ie });
  }
  assert.equal(want.size, 2, JSON.stringify([...want]));

  const check = (rows: Row[], what: string) => {
    assert.equal(rows.length, 2, `${what}: one row per case (one matrix): ${JSON.stringify(rows)}`);
    for (const r of rows) {
      const w = want.get(String(r.subject));
      assert.ok(w, `${what}: case ${String(r.subject)} was not traced`);
      assert.equal(r.matrix, "W_o");
      assert.equal(r.layer, w.layer, `${what}: ${String(r.subject)} edited at layer ${String(r.layer)}, its trace peak is ${w.layer}`);
      assert.equal(r.trace_layer, w.layer);
      assert.ok(Math.abs(Number(r.trace_ie) - w.ie) < 1e-9, `${what}: trace_ie ${String(r.trace_ie)} vs ${w.ie}`);
      assert.equal(r.restored, true);
      assert.equal(typeof r.ES, "number");
    }
  };
  check(await run("e2e-fromtrace-edit", editSpec("e2e-fromtrace-trace")), "by sweep id");

  // The report data carries the trace curve beside the scores (the figure-4 panel).
  const rep = await cluster.sweepctl("report", "e2e-fromtrace-edit", "--out", join(cluster.dir, "report"));
  assert.equal(rep.exitCode, 0, rep.stderr);
  const html = readFileSync(join(cluster.dir, "report", "report.html"), "utf8");
  assert.match(html, /causal trace beside the edit, per layer \(figure 4\)/);
  assert.match(html, /layers from trace sweep e2e-fromtrace-trace/);

  // Offline: the trace archived to a run folder (kept on the coordinator) chooses the same layers.
  const folder = join(RUNS, "trace");
  const arch = await cluster.sweepctl("archive", "e2e-fromtrace-trace", "--keep", "--out", folder, "--spec", join(cluster.dir, "e2e-fromtrace-trace.yaml"));
  assert.equal(arch.exitCode, 0, arch.stderr);
  check(await run("e2e-fromtrace-folder", editSpec(folder)), "by run folder");
  // `sweepctl plan` reads the folder on this machine and shows the cases per chosen layer; a sweep id it cannot look up.
  const planned = await cluster.sweepctl("plan", cluster.writeSpec("plan.yaml", `name: plan\n${editSpec(folder)}`));
  assert.equal(planned.exitCode, 0, planned.stderr);
  const perLayer = new Map<number, number>();
  for (const w of want.values()) perLayer.set(w.layer, (perLayer.get(w.layer) ?? 0) + 1);
  const shown = [...perLayer].sort((a, b) => a[0] - b[0]).map(([l, n]) => `layer ${l} × ${n}`);
  assert.match(planned.stdout, new RegExp(`W_o ← mixer \\(window 2\\): ${shown.join(", ")}\n`));
  const byId = await cluster.sweepctl("plan", cluster.writeSpec("plan-id.yaml", `name: plan\n${editSpec("e2e-fromtrace-trace")}`));
  assert.notEqual(byId.exitCode, 0);
  assert.match(byId.stderr, /layers\.from_trace: "e2e-fromtrace-trace" is a sweep id, which only the coordinator that ran it can look up/);

  // Refused at launch, naming the field: an unknown id, and a sweep that is not a trace.
  const bad = async (from: string, re: RegExp) => {
    const spec = cluster.writeSpec("bad.yaml", `name: bad\n${editSpec(from)}`);
    const r = await cluster.sweepctl("launch", spec, "--quiet");
    assert.notEqual(r.exitCode, 0);
    assert.match(r.stderr, re);
  };
  await bad("no-such-sweep", /layers\.from_trace: no sweep "no-such-sweep" on this coordinator/);
  await bad("e2e-fromtrace-edit", /layers\.from_trace: trace sweep e2e-fromtrace-edit is kind edit, not trace/);

  // The edit sweep keeps the launch's choice: with the trace deleted and the coordinator SIGKILLed and
  // restarted (its aggregate rebuilt from the stored results and record), the rows still say so.
  assert.equal((await cluster.sweepctl("delete", "e2e-fromtrace-trace")).exitCode, 0);
  cluster.coordinator.kill("SIGKILL");
  await cluster.coordinator.catch(() => undefined);
  await cluster.startCoordinator();
  check(await jsonl("e2e-fromtrace-edit"), "after the trace's deletion and a coordinator restart");
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { sweep } from "@factsweep/proto";
import { ResultAggregator } from "../aggregator.js";
import { SpecError } from "../errors.js";
import { modelFingerprint } from "../fingerprint.js";
import { planSweep, type SweepPlan } from "../plan.js";
import { siteFromEnum } from "../sites.js";
import { parseSweepSpec, type SweepSpec } from "../spec.js";
import { peakLayer } from "./edit-trace.js";
import { traceEvidenceFromAggregator, type TraceEvidence } from "./trace-evidence.js";
import { KindAggregator } from "./aggregate.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const MAMBA = join(REPO, "models/mamba-facts");
const REL = join(REPO, "models/world/relations/company_country.json");
const spec = (body: string): SweepSpec => parseSweepSpec(`name: t\n${body}`, { baseDir: REPO });

test("the peak layer is the highest defined IE; a tie goes to the lowest layer; no defined IE, no peak", () => {
  assert.deepEqual(peakLayer([0, 1, 2, 3], [0.1, 0.7, 0.2, 0.3]), { layer: 1, ie: 0.7 });
  assert.deepEqual(peakLayer([2, 4, 6], [0.5, null, 0.5]), { layer: 2, ie: 0.5 });
  assert.deepEqual(peakLayer([6, 4, 2], [0.5, 0.1, 0.5]), { layer: 2, ie: 0.5 }, "ties by layer number, not by position");
  assert.deepEqual(peakLayer([0, 1], [-0.2, -0.1]), { layer: 1, ie: -0.1 });
  assert.equal(peakLayer([0, 1], [null, NaN]), null);
});

/**
 * A trace sweep of the tiny Mamba (mixer, ssm, gate; window 1; every layer and token), its cells
 * given p = IE (p_clean 1, p_corrupt 0) chosen per (prompt, site, layer) at the last subject token:
 * the peak of prompt i on site k is layer (i + 2k) % 8, a tie with a later layer on mixer for
 * prompt 0, and every other token higher still (so reading the wrong token picks another layer).
 */
function syntheticTrace(opts: { extraWindow?: boolean } = {}): { plan: SweepPlan; agg: ResultAggregator; peaks: Map<string, Record<string, number>> } {
  const grid = ["mixer", "ssm", "gate"].map((s) => `{ site: ${s}, window: 1 }`);
  if (opts.extraWindow) grid.push("{ site: mixer, window: 3 }");
  const plan = planSweep(
    spec(`kind: trace\nmodel: { id: mamba-facts, path: ${MAMBA} }\ndataset: { relations: [${REL}], per_relation: 4 }\ngrid: [${grid.join(", ")}]\n`),
    "tr",
  );
  const agg = new ResultAggregator({ sweepId: "tr", prompts: plan.prompts, model: "mamba-facts" });
  const siteIndex: Record<string, number> = { mixer: 0, ssm: 1, gate: 2 };
  const peaks = new Map<string, Record<string, number>>();
  for (const p of plan.prompts) peaks.set(p.subject, { mixer: p.index % 8, ssm: (p.index + 2) % 8, gate: (p.index + 4) % 8 });
  for (const sh of plan.shards) {
    const p = sh.prompt!;
    const cells = sh.cells.map((cell) => {
      const site = siteFromEnum(cell.site);
      const peak = (p.index + 2 * siteIndex[site]!) % 8;
      let v = cell.layer === peak ? 0.8 : 0.05 * cell.layer;
      if (p.index === 0 && site === "mixer" && cell.layer === 6) v = 0.8; // tie with layer 0: the lower wins
      if (cell.token !== p.subjectEnd - 1) v = cell.layer === 7 ? 0.99 : 0.9;
      return { cell, p: v, logit: 0 };
    });
    agg.add({
      sweepId: "tr",
      shardId: sh.shardId,
      promptIndex: p.index,
      agentId: "",
      attempt: 0,
      answerId: 1,
      pClean: 1,
      pCorrupt: 0,
      cells,
      engineSeconds: 0,
      worker: "",
      resultJson: "",
      leaseId: "",
    });
  }
  return { plan, agg, peaks };
}

const evidence = (t: ReturnType<typeof syntheticTrace>, over: Partial<TraceEvidence> = {}): TraceEvidence => ({
  ...traceEvidenceFromAggregator(t.agg, t.plan.prompts, {
    sweepId: "tr",
    state: "done",
    kind: "trace",
    model: { id: "mamba-facts", modelType: "mamba", numLayers: 8, path: MAMBA },
  }),
  ...over,
});

const editSpec = (layers: string, extra = "") =>
  spec(
    `kind: edit\nmodel: { id: mamba-facts, path: ${MAMBA} }\ndataset: { relations: [${REL}] }\nedit: { cases: 6, max_corpus: 4, cov_shards: 0${extra} }\nlayers: ${layers}\n`,
  );

/** Each planned case's (matrix → layer) from its shards' params. */
function editedLayers(plan: SweepPlan): Map<string, Record<string, number>> {
  const out = new Map<string, Record<string, number>>();
  for (const sh of plan.shards) {
    const { matrix, layer } = JSON.parse(sh.paramsJson) as { matrix: string; layer: number };
    out.set(sh.prompt!.subject, { ...out.get(sh.prompt!.subject), [matrix]: layer });
  }
  return out;
}

test("layers: { from_trace } edits each case at its fact's peak IE at the last subject token, per matrix's site; untraced facts are skipped with the reason", () => {
  const t = syntheticTrace();
  const plan = planSweep(editSpec("{ from_trace: tr }"), "ed", { traceEvidence: evidence(t) });
  assert.equal(plan.prompts.length, 4, "only the 4 traced facts of the relation can be edited");
  const got = editedLayers(plan);
  for (const p of plan.prompts) {
    const want = t.peaks.get(p.subject)!;
    assert.deepEqual(got.get(p.subject), { W_o: want.mixer, W_a: want.ssm, W_g: want.gate }, p.subject);
    assert.equal(plan.shards.filter((s) => s.prompt!.index === p.index).length, 3, "one shard per matrix");
  }
  const tied = t.plan.prompts.find((p) => p.index === 0)!.subject;
  assert.equal(got.get(tied)!.W_o, 0, "tie between layers 0 and 6: the lower");
  assert.ok(plan.promptErrors.length > 0 && plan.promptErrors.every((e) => /has no prompt of this fact/.test(e.message)), JSON.stringify(plan.promptErrors));
  // The record keeps only the planned cases' facts.
  assert.equal(plan.traceLayers!.facts.length, 4);
  assert.deepEqual(
    plan.traceLayers!.matrices.map((m) => [m.matrix, m.site, m.window, m.layers.length]),
    [
      ["W_o", "mixer", 1, 8],
      ["W_a", "ssm", 1, 8],
      ["W_g", "gate", 1, 8],
    ],
  );

  // The same choices from the record alone (a re-plan after a coordinator restart).
  const again = planSweep(editSpec("{ from_trace: tr }"), "ed", { traceLayers: plan.traceLayers });
  assert.deepEqual(
    again.shards.map((s) => [s.shardId, s.paramsJson]),
    plan.shards.map((s) => [s.shardId, s.paramsJson]),
  );

  // Rows say where each case's peak was and what its IE was; the summary carries the trace curve.
  const agg = new KindAggregator({
    sweepId: "ed",
    spec: editSpec("{ from_trace: tr }"),
    prompts: plan.prompts,
    modelType: "mamba",
    numLayers: 8,
    traceLayers: plan.traceLayers,
  });
  for (const sh of plan.shards) {
    const { matrix, layer } = JSON.parse(sh.paramsJson) as { matrix: string; layer: number };
    const scores = { ES: 1, PS: 0.5, NS: 0.9, S: 0.7, EM: 0.1, PM: 0.1, NM: 0.1 };
    agg.add({
      ...emptyResult,
      sweepId: "ed",
      shardId: sh.shardId,
      promptIndex: sh.prompt!.index,
      resultJson: JSON.stringify({ matrix, layer, post: scores, pre: scores, restored: true }),
    });
  }
  const rows = [...agg.rows()].map((r) => JSON.parse(r.fieldsJson) as Record<string, unknown>);
  assert.equal(rows.length, 12);
  for (const r of rows) {
    assert.equal(r.trace_layer, r.layer);
    assert.equal(r.trace_ie, 0.8);
  }
  const summary = agg.summary().edit!;
  assert.equal(summary.trace!.chosen, true);
  assert.equal(summary.trace!.matrices[0]!.meanIE.length, 8);
});

const emptyResult: sweep.ShardResult = {
  sweepId: "",
  shardId: "",
  promptIndex: 0,
  agentId: "",
  attempt: 0,
  answerId: 0,
  pClean: 0,
  pCorrupt: 0,
  cells: [],
  engineSeconds: 0,
  worker: "",
  resultJson: "",
  leaseId: "",
};

test("layers: { from_trace, edit_layers } edits every case at those layers and keeps each row's trace peak beside it", () => {
  const t = syntheticTrace();
  const plan = planSweep(editSpec("{ from_trace: tr, edit_layers: [1, 3] }", ", matrices: [W_o]"), "ed", { traceEvidence: evidence(t) });
  assert.equal(plan.prompts.length, 6, "every case, traced or not");
  assert.deepEqual(
    plan.shards.filter((s) => s.prompt!.index === 0).map((s) => (JSON.parse(s.paramsJson) as { layer: number }).layer),
    [1, 3],
  );
  assert.equal(plan.traceLayers!.editLayers!.length, 2);
});

test("a trace that cannot choose the layers is refused, naming the field and the fix", () => {
  const t = syntheticTrace();
  const refused = (ev: TraceEvidence, layers = "{ from_trace: tr }", extra = "", re: RegExp, path = "layers.from_trace") =>
    assert.throws(
      () => planSweep(editSpec(layers, extra), "ed", { traceEvidence: ev }),
      (e: SpecError) => e instanceof SpecError && e.path === path && re.test(e.message),
    );
  refused(evidence(t, { state: "running" }), undefined, "", /running, not done; wait for it/);
  refused(evidence(t, { kind: "edit" }), undefined, "", /kind edit, not trace/);
  refused(evidence(t, { model: { id: "other", modelType: "mamba", numLayers: 8 } }), undefined, "", /traced another model \(model.id other/);
  refused(evidence(t, { model: { id: "mamba-facts", modelType: "mamba", numLayers: 8, path: "/elsewhere" } }), undefined, "", /folder \/elsewhere/);
  const noSsm = evidence(t);
  noSsm.grids = noSsm.grids.filter((g) => g.site !== "ssm");
  refused(noSsm, undefined, "", /traced no `ssm` site, which edit matrix W_a needs.*leave W_a out of edit.matrices/);
  planSweep(editSpec("{ from_trace: tr }", ", matrices: [W_o, W_g]"), "ed", { traceEvidence: noSsm }); // without W_a it plans
  // layers.sites: another traced site for a matrix (W_a from g here), checked against the edited matrices and the model's sites.
  const viaGate = planSweep(editSpec("{ from_trace: tr, sites: { W_a: gate } }", ", matrices: [W_a]"), "ed", { traceEvidence: noSsm });
  assert.deepEqual(
    viaGate.prompts.map((p) => (JSON.parse(viaGate.shards.find((s) => s.prompt!.index === p.index)!.paramsJson) as { layer: number }).layer),
    viaGate.prompts.map((p) => t.peaks.get(p.subject)!.gate),
  );
  refused(evidence(t), "{ from_trace: tr, sites: { W_x: gate } }", "", /"W_x" is not an edited matrix/, "layers.sites.W_x");
  refused(evidence(t), "{ from_trace: tr, sites: { W_o: mlp } }", "", /"mlp" is not a site of mamba models/, "layers.sites.W_o");
  const two = syntheticTrace({ extraWindow: true });
  refused(evidence(two), undefined, "", /several windows \(1, 3\); choose one with layers.window/, "layers.window");
  assert.equal(
    planSweep(editSpec("{ from_trace: tr, window: 3 }", ", matrices: [W_o]"), "ed", { traceEvidence: evidence(two) }).traceLayers!.matrices[0]!.window,
    3,
  );
  refused(evidence(two), "{ from_trace: tr, window: 5 }", ", matrices: [W_o]", /not 5; set layers.window/, "layers.window");
  const none = evidence(t);
  none.grids = none.grids.map((g) => ({ ...g, facts: g.facts.map((f) => ({ ...f, subject: `${f.subject}-x` })) }));
  refused(none, undefined, "", /has none of this sweep's facts/);
  // A sweep id without the coordinator; from_trace on a kind that is not edit.
  assert.throws(
    () => planSweep(editSpec("{ from_trace: tr }"), "ed"),
    (e: SpecError) => e.path === "layers.from_trace" && /only the coordinator/.test(e.message),
  );
  assert.throws(
    () => planSweep(spec(`kind: trace\nmodel: { id: m, path: ${MAMBA} }\ndataset: { relations: [${REL}] }\nlayers: { from_trace: tr }\n`), "x"),
    (e: SpecError) => e.path === "layers.from_trace" && /kind edit only/.test(e.message),
  );
});

test("a run folder (sweep.json, run.json, results.jsonl as sweepctl writes them) gives the same layers; another checkpoint is refused", () => {
  const t = syntheticTrace();
  const dir = mkdtempSync(join(tmpdir(), "trace-run-"));
  const byIndex = new Map(t.plan.prompts.map((p) => [p.index, p]));
  const lines = [...t.agg.rows()].map((r) =>
    JSON.stringify({
      sweep_id: r.sweepId,
      model: r.model,
      prompt_index: r.promptIndex,
      subject: r.subject,
      site: r.site,
      layer: r.layer,
      token: r.token,
      window: r.window,
      token_group: r.tokenGroup,
      p: r.p,
      ie: Number.isFinite(r.ie) ? r.ie : null,
      prompt: byIndex.get(r.promptIndex)!.text,
      relation: byIndex.get(r.promptIndex)!.relation,
    }),
  );
  writeFileSync(join(dir, "results.jsonl"), lines.join("\n") + "\n");
  writeFileSync(join(dir, "sweep.json"), JSON.stringify({ sweepId: "tr", state: "done", kind: "trace" }));
  writeFileSync(
    join(dir, "run.json"),
    JSON.stringify({ sweep_id: "tr", spec: "name: t\nmodel: { id: mamba-facts, path: x }\n", model: modelFingerprint(MAMBA) }),
  );
  const fromFolder = planSweep(editSpec(`{ from_trace: ${dir}/ }`), "ed");
  const fromAgg = planSweep(editSpec("{ from_trace: tr }"), "ed", { traceEvidence: evidence(t) });
  assert.deepEqual(editedLayers(fromFolder), editedLayers(fromAgg));
  assert.equal(fromFolder.traceLayers!.sweepId, "tr");

  // Rows without relation and prompt text (`sweepctl archive` without --spec): a subject traced once
  // still matches; one traced in two prompts (here a copy as another prompt) is ambiguous: skipped.
  const bare = lines.map((l) => {
    const { relation: _r, prompt: _p, ...rest } = JSON.parse(l) as Record<string, unknown>;
    return rest;
  });
  const twice = String(bare[0]!.subject);
  const copy = bare.filter((r) => r.subject === twice).map((r) => JSON.stringify({ ...r, prompt_index: 99 }));
  writeFileSync(join(dir, "results.jsonl"), [...bare.map((r) => JSON.stringify(r)), ...copy].join("\n") + "\n");
  const fromBare = planSweep(editSpec(`{ from_trace: ${dir}/ }`), "ed");
  assert.deepEqual([...editedLayers(fromBare).keys()].sort(), [...editedLayers(fromAgg).keys()].filter((s) => s !== twice).sort());
  assert.ok(fromBare.promptErrors.some((e) => e.message.includes(twice) && /has no prompt of this fact/.test(e.message)));

  writeFileSync(
    join(dir, "run.json"),
    JSON.stringify({
      sweep_id: "tr",
      spec: "model: { id: mamba-facts }",
      model: { ...modelFingerprint(MAMBA), weights: [{ file: "model.safetensors", bytes: 1 }] },
    }),
  );
  assert.throws(
    () => planSweep(editSpec(`{ from_trace: ${dir}/ }`), "ed"),
    (e: SpecError) => e.path === "layers.from_trace" && /traced another model \(its checkpoint's the weight files differ/.test(e.message),
  );
  assert.throws(
    () => planSweep(editSpec(`{ from_trace: ${join(dir, "missing")}/ }`), "ed"),
    (e: SpecError) => e.path === "layers.from_trace" && /has no sweep.json: it is not a run folder/.test(e.message),
  );
});

test("NeoX: dense_4h_to_h takes its layer from the trace's mlp site; a trace of attn alone is refused naming mlp", () => {
  const NEOX = join(REPO, "models/neox-facts");
  const traced = (site: string) => {
    const plan = planSweep(
      spec(`kind: trace\nmodel: { id: neox-facts, path: ${NEOX} }\ndataset: { relations: [${REL}], per_relation: 2 }\ngrid: [{ site: ${site}, window: 1 }]\n`),
      "nt",
    );
    const agg = new ResultAggregator({ sweepId: "nt", prompts: plan.prompts });
    for (const sh of plan.shards) {
      const p = sh.prompt!;
      // IE rises to layer 3 and falls after it, at the last subject token only.
      const cells = sh.cells.map((cell) => ({ cell, p: cell.token === p.subjectEnd - 1 ? 1 - Math.abs(cell.layer - 3) / 6 : 0.99, logit: 0 }));
      agg.add({ ...emptyResult, sweepId: "nt", shardId: sh.shardId, promptIndex: p.index, pClean: 1, pCorrupt: 0, cells });
    }
    return traceEvidenceFromAggregator(agg, plan.prompts, {
      sweepId: "nt",
      state: "done",
      kind: "trace",
      model: { id: "neox-facts", modelType: "gpt_neox", numLayers: 6 },
    });
  };
  const neoxEdit = spec(
    `kind: edit\nmodel: { id: neox-facts, path: ${NEOX} }\ndataset: { relations: [${REL}], per_relation: 2 }\nedit: { cases: 2, max_corpus: 4, cov_shards: 0 }\nlayers: { from_trace: nt }\n`,
  );
  const plan = planSweep(neoxEdit, "ne", { traceEvidence: traced("mlp") });
  assert.deepEqual(
    plan.shards.map((s) => JSON.parse(s.paramsJson) as { matrix: string; layer: number }).map((x) => [x.matrix, x.layer]),
    [
      ["dense_4h_to_h", 3],
      ["dense_4h_to_h", 3],
    ],
  );
  assert.throws(
    () => planSweep(neoxEdit, "ne", { traceEvidence: traced("attn") }),
    (e: SpecError) => e.path === "layers.from_trace" && /traced no `mlp` site, which edit matrix dense_4h_to_h needs \(traced: attn\)/.test(e.message),
  );
});

test("the spec refuses a malformed from_trace, naming the field", () => {
  const bad = (layers: string, re: RegExp) =>
    assert.throws(
      () => editSpec(layers),
      (e: Error) => re.test(e.message),
    );
  bad('{ from_trace: "" }', /layers\.from_trace: Too small/);
  bad("{ from_trace: tr, windw: 2 }", /unknown field `windw` in layers/);
  bad("{ from_trace: tr, window: 0 }", /layers\.window: Too small/);
  assert.deepEqual(editSpec("{ from_trace: runs/trace }").layers, { from_trace: join(REPO, "runs/trace") }, "a folder resolves against the spec's folder");
});

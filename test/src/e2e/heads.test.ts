/**
 * Per-head sites through the whole system: a trace of the shipped tiny Mamba-2 (models/mamba2-facts,
 * 8 heads of 32) with `{ site: ssm, heads: all }` beside the whole `ssm` site, launched by sweepctl
 * on a real coordinator, agents and engine workers over a real nats-server. Every head row must
 * equal the engine run alone, and the report must aggregate each head as its own site `ssm.h<k>`.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { GROUP_LABELS, parseSweepSpec, planSweep, tokenGroups } from "@factsweep/planning";
import { assertCompleteAndEqual } from "./assertions.js";
import { Cluster, engineReference, REPO } from "./cluster.js";

const MODELS = join(REPO, "models");
const HEADS = 8; // models/mamba2-facts/config.json: num_heads
const LAYERS = [2, 5];
const WINDOW = 2;

let cluster: Cluster;
before(async () => {
  cluster = await new Cluster({ agents: 2, modelRoots: [MODELS] }).start();
});
after(async () => {
  await cluster?.stop();
});

test(
  "a Mamba-2 sweep with ssm heads: all has one row per head beside the whole site, equal to the engine alone, and ssm.h<k> aggregates",
  { timeout: 300_000 },
  async () => {
    const spec = cluster.writeSpec(
      "heads.yaml",
      [
        "name: e2e-heads",
        "kind: trace",
        `model: { id: mamba2-facts, path: ${join(MODELS, "mamba2-facts")} }`,
        `dataset: { relations: [${join(MODELS, "world/relations/company_country.json")}], limit: 3 }`,
        "corruption: { kind: swap, seed: 7 }",
        "grid:",
        `  - { site: ssm, window: ${WINDOW} }`,
        `  - { site: ssm, window: ${WINDOW}, heads: all }`,
        `layers: [${LAYERS.join(", ")}]`,
        "tokens: all",
        "shard_cells: 64",
        "findings: false",
        "",
      ].join("\n"),
    );
    const launched = await cluster.sweepctl("launch", spec, "--id", "e2e-heads", "--quiet");
    assert.equal(launched.exitCode, 0, `launch failed: ${launched.stderr}\n${cluster.logs()}`);
    const info = await cluster.waitFor("e2e-heads", (s) => s.state === "done", 240_000);
    const reference = await engineReference(spec);
    assert.equal(info.counts.plannedCells, reference.size);
    const rows = await assertCompleteAndEqual(cluster, "e2e-heads", reference, info.counts.shardsTotal);

    // Each (prompt, layer, token) has the whole site (head "") and heads 0..7, each once.
    const byCell = new Map<string, (number | "")[]>();
    for (const r of rows) {
      assert.equal(r.site, "ssm");
      const k = `${r.prompt_index}|${r.layer}|${r.token}`;
      byCell.set(k, [...(byCell.get(k) ?? []), r.head ?? ""]);
    }
    assert.ok(byCell.size > 0);
    const expected = ["", ...Array.from({ length: HEADS }, (_, h) => h)];
    for (const [k, heads] of byCell) assert.deepEqual([...heads].sort(), [...expected].sort(), `cell ${k}`);
    assert.deepEqual([...new Set(rows.map((r) => r.layer))].sort(), LAYERS);
    // Restoring one head of eight is not restoring the site: a test of head routing that an engine
    // ignoring `head` would fail (every head row would equal the whole site's).
    const whole = new Map(rows.filter((r) => r.head === "").map((r) => [`${r.prompt_index}|${r.layer}|${r.token}`, r.p]));
    const differ = rows.filter((r) => typeof r.head === "number" && Math.abs(r.p - whole.get(`${r.prompt_index}|${r.layer}|${r.token}`)!) > 1e-6);
    assert.ok(differ.length > 0, "every head row equals its whole-site row");

    // The coordinator's aggregate, through the report: one heatmap per head (ssm.h0..h7) beside ssm,
    // and each head's mean IE per (token group, layer) is the mean of that head's result rows.
    const out = join(cluster.dir, "heads-report");
    const r = await cluster.sweepctl("report", "e2e-heads", "--out", out);
    assert.equal(r.exitCode, 0, r.stderr);
    const html = readFileSync(join(out, "report.html"), "utf8");
    const sites = [...html.matchAll(/<figure class="heatmap" data-model="[^"]*" data-site="([a-z_.0-9]+)" data-window="(\d+)"/g)].map((m) => m[1]).sort();
    assert.deepEqual(sites, ["ssm", ...Array.from({ length: HEADS }, (_, h) => `ssm.h${h}`)].sort());
    // A token counts in every ROME group it belongs to (the first and last subject token of a
    // 2-token subject are both), so a row's groups come from its prompt's subject span.
    const plan = await planSweep(parseSweepSpec(readFileSync(spec, "utf8"), { baseDir: dirname(spec) }), "groups");
    const promptOf = new Map(plan.prompts.map((p) => [p.index, p]));
    const groupsOf = (x: (typeof rows)[number]): string[] => {
      const p = promptOf.get(x.prompt_index)!;
      return tokenGroups(x.token, [p.subjectStart, p.subjectEnd], p.inputIds.length).map((g) => GROUP_LABELS[g]);
    };
    const csv = readFileSync(join(out, "report.csv"), "utf8").trim().split("\n").slice(1);
    let checked = 0;
    for (const line of csv) {
      // model,model_type,sweep_id,corruption,site,window,token_group,layer,mean_ie,aie,cells
      const m = /^[^,]*,mamba2,[^,]*,swap,ssm\.h(\d+),(\d+),("[^"]*"),(\d+),([^,]*),[^,]*,(\d+)$/.exec(line);
      if (!m || m[5] === "") continue;
      const [head, group, layer] = [Number(m[1]), JSON.parse(m[3]!) as string, Number(m[4])];
      const mine = rows.filter((x) => x.head === head && x.layer === layer && groupsOf(x).includes(group));
      assert.equal(Number(m[6]), mine.length, `cells of ssm.h${head} ${group} L${layer}`);
      const finite = mine.filter((x) => Number.isFinite(x.ie));
      const mean = finite.reduce((a, x) => a + x.ie, 0) / finite.length;
      assert.ok(Math.abs(Number(m[5]) - mean) <= 1e-9 * Math.max(1, Math.abs(mean)), `ssm.h${head} ${group} L${layer}: ${m[5]} vs ${mean}`);
      checked++;
    }
    assert.ok(checked >= HEADS * LAYERS.length, `only ${checked} per-head aggregate cells compared`);
  },
);

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { seededRandom, type FactRows } from "@factsweep/planning";
import { FINDINGS_RULES, findings, renderReport, reportCsv, type HeatmapData, type ModelTrace } from "./index.js";
import { siteTitle } from "./charts.js";

const run = promisify(execFile);
const GROUPS = ["first subject token", "middle subject tokens", "last subject token", "first subsequent token", "further tokens", "last token"];
const ARTIFACTS = resolve(dirname(fileURLToPath(import.meta.url)), "../../../test-artifacts");

const FACTS = 30;
/**
 * A heatmap whose subject-last row peaks at layer `early` and whose last-token row peaks at `late`,
 * with per-fact rows (the curve plus seeded noise of sd `noise`) that average to the heatmap's rows.
 */
function traced(site: string, window: number, layers: number, early: number | null, late: number | null, height = 0.8, noise = 0.05, facts = FACTS) {
  const rand = seededRandom(site.length * 31 + layers);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const bump = (centre: number | null, l: number): number => (centre === null ? 0.02 : height * Math.exp(-((l - centre) ** 2) / 2));
  const ls = Array.from({ length: layers }, (_, i) => i);
  const perFact = (centre: number | null) => Array.from({ length: facts }, () => ls.map((l) => bump(centre, l) + noise * gauss()));
  const mean = (rows: number[][]) => ls.map((_, li) => rows.reduce((a, r) => a + r[li]!, 0) / rows.length);
  const subj = perFact(early);
  const last = perFact(late);
  const ie = GROUPS.map((g) => (g === "last subject token" ? mean(subj) : g === "last token" ? mean(last) : ls.map(() => 0.01)));
  const heatmap: HeatmapData = {
    site,
    window,
    groups: GROUPS,
    layers: ls,
    ie,
    aie: ie.map((r) => r.map((v) => v / 2)),
    count: ie.map((r) => r.map(() => facts)),
  };
  const rows: FactRows[] = [
    { site, window, group: "last subject token", layers: ls, ie: subj },
    { site, window, group: "last token", layers: ls, ie: last },
  ];
  return { heatmap, rows };
}
function model(label: string, modelType: string, grids: ReturnType<typeof traced>[], facts = FACTS): ModelTrace {
  return {
    label,
    modelType,
    sweepId: `s-${label}`,
    corruption: "swap",
    facts,
    plannedFacts: facts,
    state: "done",
    skipped: [{ reason: "no swap partner of equal token length", count: 2 }],
    heatmaps: grids.map((g) => g.heatmap),
    perFact: grids.flatMap((g) => g.rows),
  };
}
const heatmap = (...a: Parameters<typeof traced>): HeatmapData => traced(...a).heatmap;
const mamba = model("mamba-facts", "mamba", [
  traced("residual", 1, 8, 2, 6),
  traced("mixer", 10, 8, 2, 6),
  traced("ssm", 10, 8, null, 6),
  traced("gate", 10, 8, 3, null, 0.1),
]);
const neox = model("neox-facts", "gpt_neox", [traced("residual", 1, 8, 1, 6), traced("attn", 10, 8, null, 5), traced("mlp", 10, 8, 1, null)]);

test("findings say reproduced, with bootstrap intervals and support, when the early site is in o and the late one in s; not when s has the early site", () => {
  const ok = findings([mamba, neox]);
  assert.equal(ok.length, 7);
  for (const f of ok) {
    assert.equal(f.verdict, "reproduced", JSON.stringify(f, null, 1));
    assert.ok(f.support! >= FINDINGS_RULES.support, `${f.claim}: support ${f.support}`);
    assert.equal(f.facts, FACTS);
    assert.match(f.rule, /≥|</, "the rule names its thresholds");
    for (const [k, [lo, hi]] of Object.entries(f.intervals!)) assert.ok(lo <= hi && hi - lo < 0.2, `${k}: [${lo}, ${hi}]`);
  }
  const swapped = model("mamba-facts", "mamba", [
    traced("residual", 1, 8, 2, 6),
    traced("mixer", 10, 8, null, 6),
    traced("ssm", 10, 8, 2, 6),
    traced("gate", 10, 8, 3, null, 0.1),
  ]);
  const bad = findings([swapped]);
  assert.equal(bad.find((f) => f.claim.includes("mixer output o"))?.verdict, "not reproduced");
  const missing = findings([model("mamba-facts", "mamba", [traced("residual", 1, 8, 2, 6)])]);
  assert.equal(missing.find((f) => f.claim.includes("SSM path"))?.verdict, "not checked");
});

test("no verdict on too few facts, too few layers, or a partial sweep; a rule that holds in only some resamples is inconclusive", () => {
  const few = findings([model("m", "mamba", [traced("residual", 1, 8, 2, 6, 0.8, 0.05, 5)], 5)]);
  assert.equal(few[0]!.verdict, "too few facts");
  assert.match(few[0]!.note!, /5 facts < 20/);
  assert.equal(findings([model("m", "mamba", [traced("residual", 1, 4, 1, 3)])])[0]!.verdict, "too few layers");
  const running = { ...mamba, facts: 15, plannedFacts: 80, state: "running" };
  for (const f of findings([running])) assert.equal(f.verdict, "partial");
  assert.match(findings([running])[0]!.note!, /15 of 80 facts/);
  // o's subject-last peak 0.1 with noisy facts: the rule o ≥ 0.1 holds in about half the resamples.
  const edge = model("m", "mamba", [
    traced("residual", 1, 8, 2, 6),
    traced("mixer", 10, 8, 2, 6, 0.1, 0.3),
    traced("ssm", 10, 8, null, 6),
    traced("gate", 10, 8, 3, null, 0.02),
  ]);
  const f = findings([edge]).find((x) => x.claim.includes("mixer output o"))!;
  assert.equal(f.verdict, "inconclusive", JSON.stringify(f));
  assert.equal(findings([{ ...mamba, findings: false }]).length, 0, "findings: false turns the checks off");
});

test("the page of a partial sweep says so, and the rules are on the page", async () => {
  const html = await renderReport({ title: "t", created: "now", models: [{ ...mamba, facts: 15, plannedFacts: 80, state: "running" }, neox] });
  assert.match(html, /Partial report: mamba-facts partial: 15 of 80 facts \(sweep running\)/);
  assert.match(html, /class="partial" data-facts="15" data-planned="80"/);
  const rows = html.match(/<tr><td>mamba-facts<\/td>.*?<\/tr>/g) ?? [];
  assert.equal(rows.length, 4);
  for (const r of rows) assert.match(r, /<td class="na">partial<br>/, "no verdict for the partial model");
  assert.match(html, /fewer than 20 facts or 6 traced layers/);
  assert.match(html, /resampled with replacement 1000 times/);
  const off = await renderReport({ title: "t", created: "now", models: [{ ...mamba, findings: false }] });
  assert.doesNotMatch(off, /Findings of the paper/);
});

test("a Mamba-2 is held to the paper's Mamba-1 findings and drawn between Mamba and NeoX", async () => {
  // The Mamba-2 carries the early fact in s, not o: Mamba-1's o-vs-s finding must come out "not reproduced" for it alone.
  const mamba2 = model("mamba2-facts", "mamba2", [
    traced("residual", 1, 8, 2, 6),
    traced("mixer", 2, 8, null, 6),
    traced("ssm", 2, 8, 2, 6),
    traced("gate", 2, 8, 3, null, 0.1),
  ]);
  const fs = findings([neox, mamba2, mamba]);
  const of = (label: string) => fs.filter((f) => f.model === label);
  assert.deepEqual(
    of("mamba2-facts").map((f) => f.claim),
    of("mamba-facts").map((f) => f.claim),
  );
  const oVsS = (label: string) => of(label).find((f) => f.claim.includes("mixer output o"))!.verdict;
  assert.equal(oVsS("mamba-facts"), "reproduced");
  assert.equal(oVsS("mamba2-facts"), "not reproduced");
  assert.equal(of("mamba2-facts").find((f) => f.claim.startsWith("The residual stream"))!.verdict, "reproduced");
  const html = await renderReport({ title: "t", created: "now", models: [neox, mamba2, mamba] });
  assert.equal((html.match(/<tr><td>mamba2-facts<\/td>/g) ?? []).length, 4, "four findings rows for the Mamba-2");
  const at = (label: string) => html.indexOf(`<section class="model" data-model="${label}">`);
  assert.ok(
    at("mamba-facts") >= 0 && at("mamba-facts") < at("mamba2-facts") && at("mamba2-facts") < at("neox-facts"),
    "Mamba, Mamba-2, NeoX from left to right",
  );
  assert.match(html, /\(mamba2, swap corruption/);
});

test("the CSV has one row per heatmap cell with IE and AIE", () => {
  const csv = reportCsv({ title: "t", created: "now", models: [mamba] })
    .trim()
    .split("\n");
  assert.equal(csv.length, 1 + 4 * GROUPS.length * 8);
  assert.match(csv[1] ?? "", /^mamba-facts,mamba,s-mamba-facts,swap,residual,1,"first subject token",0,/);
});

test("every heatmap of the report renders in headless Chromium with its layer axis and token-group rows", async () => {
  const html = await renderReport({ title: "Causal tracing report", created: new Date().toISOString(), models: [mamba, neox] });
  // The check runs inside the page after layout, so it sees what Chromium drew, not what we wrote.
  const probe = `<pre id="layout-check"></pre><script>
    const out = [...document.querySelectorAll("figure.heatmap")].map((f) => {
      const svg = f.querySelector("svg"); const box = svg.getBoundingClientRect();
      const texts = [...svg.querySelectorAll("text")].map((t) => t.textContent);
      const cells = svg.querySelectorAll("g.mark-rect.role-mark path").length;
      return { site: f.dataset.site, model: f.dataset.model, w: box.width, h: box.height, texts, cells };
    });
    const lines = [...document.querySelectorAll("figure.lines")].map((f) => {
      const svg = f.querySelector("svg");
      const legend = [...svg.querySelectorAll("g.role-legend-label text")].map((t) => t.textContent);
      const ticks = [...svg.querySelectorAll("g.role-axis")].filter((a) => a.getAttribute("aria-label")?.includes("X-axis")).flatMap((a) => [...a.querySelectorAll("g.role-axis-label text")].map((t) => t.textContent));
      const box = svg.getBoundingClientRect(), fig = f.getBoundingClientRect();
      return { model: f.dataset.model, legend, ticks, fits: box.right <= fig.right + 1 && box.width <= window.innerWidth };
    });
    const hover = document.querySelector("figure.heatmap svg path[role=graphics-symbol] title")?.textContent;
    const tops = [...document.querySelectorAll("section.model")].map((m) => ({ model: m.dataset.model, top: m.getBoundingClientRect().top, left: m.getBoundingClientRect().left }));
    document.getElementById("layout-check").textContent = JSON.stringify({ out, lines, hover, tops });
  </script>`;
  const dir = mkdtempSync(join(tmpdir(), "report-"));
  const file = join(dir, "report.html");
  writeFileSync(file, html.replace("</body>", `${probe}</body>`));
  const chromium = process.env.CHROMIUM ?? "/usr/bin/chromium";
  const flags = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    `--user-data-dir=${join(dir, "profile")}`,
  ];
  const { stdout } = await run(chromium, [...flags, "--window-size=1400,2400", "--dump-dom", `file://${file}`], { maxBuffer: 64 << 20 });
  const json = /<pre id="layout-check">([^<]*)<\/pre>/.exec(stdout)?.[1];
  assert.ok(json, "the layout probe did not run in Chromium");
  const probe_ = JSON.parse(json.replace(/&quot;/g, '"').replace(/&amp;/g, "&")) as {
    out: { site: string; model: string; w: number; h: number; texts: string[]; cells: number }[];
    lines: { model: string; legend: string[]; ticks: string[]; fits: boolean }[];
    hover?: string;
    tops: { model: string; top: number; left: number }[];
  };
  const figures = probe_.out;
  // Line plots: every legend label whole (equal to its series' name), integer layer ticks, inside the page.
  assert.equal(probe_.lines.length, 4);
  for (const l of probe_.lines) {
    const m = [mamba, neox].find((x) => x.label === l.model)!;
    const series = m.heatmaps.filter((h) => h.groups.includes(l.legend.length ? "last token" : "")).map((h) => siteTitle(h.site, h.window));
    for (const name of l.legend) assert.ok(series.includes(name), `${l.model}: legend "${name}" is not a whole series name of ${series}`);
    assert.ok(l.legend.length >= 2, `${l.model}: legend ${l.legend}`);
    for (const t of l.ticks) assert.match(t, /^\d+$/, `${l.model}: layer tick "${t}" is not an integer`);
    assert.ok(l.fits, `${l.model}: a line plot is wider than its column or the window`);
  }
  // Heatmap cells carry their values on hover; Mamba and NeoX side by side (same top, Mamba left).
  assert.match(probe_.hover ?? "", /^first subject token, layer 0: IE 0\.\d{3}, AIE 0\.\d{4}, 30 cells$/);
  const [a, b] = probe_.tops;
  assert.ok(a && b && Math.abs(a.top - b.top) < 1 && a.model === "mamba-facts" && a.left < b.left, JSON.stringify(probe_.tops));
  assert.equal(figures.length, mamba.heatmaps.length + neox.heatmaps.length);
  for (const f of figures) {
    assert.ok(f.w > 100 && f.h > 100, `${f.model}/${f.site} drew ${f.w}x${f.h}`);
    assert.ok(
      f.texts.some((t) => t === "layer" || t === "centre of restored layers"),
      `${f.model}/${f.site} has no layer axis: ${f.texts}`,
    );
    for (const g of GROUPS) assert.ok(f.texts.includes(g), `${f.model}/${f.site} lacks row ${g}`);
    assert.equal(f.cells, GROUPS.length * 8, `${f.model}/${f.site} drew ${f.cells} cells`);
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(join(ARTIFACTS, "report-fixture.html"), html);
  await run(chromium, [...flags, "--window-size=1400,2400", `--screenshot=${join(ARTIFACTS, "report-fixture.png")}`, `file://${file}`]);
});

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { findings, renderReport, reportCsv, type HeatmapData, type ModelTrace } from "./index.js";

const run = promisify(execFile);
const GROUPS = ["first subject token", "middle subject tokens", "last subject token", "first subsequent token", "further tokens", "last token"];
const ARTIFACTS = resolve(dirname(fileURLToPath(import.meta.url)), "../../../test-artifacts");

/** A heatmap whose subject-last row peaks at layer `early` and whose last-token row peaks at `late`. */
function heatmap(site: string, window: number, layers: number, early: number | null, late: number | null, height = 0.8): HeatmapData {
  const bump = (centre: number | null, l: number): number => (centre === null ? 0.02 : height * Math.exp(-((l - centre) ** 2) / 2));
  const ls = Array.from({ length: layers }, (_, i) => i);
  const ie = GROUPS.map((g) => ls.map((l) => (g === "last subject token" ? bump(early, l) : g === "last token" ? bump(late, l) : 0.01)));
  return { site, window, groups: GROUPS, layers: ls, ie, aie: ie.map((r) => r.map((v) => v / 2)), count: ie.map((r) => r.map(() => 5)) };
}

const mamba: ModelTrace = {
  label: "mamba-facts",
  modelType: "mamba",
  sweepId: "s-mamba",
  corruption: "swap",
  facts: 12,
  skipped: [{ reason: "no swap partner of equal token length", count: 2 }],
  heatmaps: [heatmap("residual", 1, 8, 2, 6), heatmap("mixer", 10, 8, 2, 6), heatmap("ssm", 10, 8, null, 6), heatmap("gate", 10, 8, 3, null, 0.1)],
};
const neox: ModelTrace = {
  label: "neox-facts",
  modelType: "gpt_neox",
  sweepId: "s-neox",
  corruption: "swap",
  facts: 12,
  skipped: [],
  heatmaps: [heatmap("residual", 1, 8, 1, 6), heatmap("attn", 10, 8, null, 5), heatmap("mlp", 10, 8, 1, null)],
};

test("findings say reproduced when the early site is in o and the late one in s, and not when s has the early site", () => {
  const ok = findings([mamba, neox]);
  assert.equal(ok.length, 7);
  assert.ok(
    ok.every((f) => f.reproduced === true),
    JSON.stringify(ok, null, 1),
  );
  const swapped: ModelTrace = {
    ...mamba,
    heatmaps: [heatmap("residual", 1, 8, 2, 6), heatmap("mixer", 10, 8, null, 6), heatmap("ssm", 10, 8, 2, 6), heatmap("gate", 10, 8, 3, null, 0.1)],
  };
  const bad = findings([swapped]);
  assert.equal(bad.find((f) => f.claim.includes("mixer output o"))?.reproduced, false);
  const missing = findings([{ ...mamba, heatmaps: [heatmap("residual", 1, 8, 2, 6)] }]);
  assert.equal(missing.find((f) => f.claim.includes("SSM path"))?.reproduced, null);
});

test("the CSV has one row per heatmap cell with IE and AIE", () => {
  const csv = reportCsv({ title: "t", created: "now", models: [mamba] })
    .trim()
    .split("\n");
  assert.equal(csv.length, 1 + 4 * GROUPS.length * 8);
  assert.match(csv[1] ?? "", /^mamba-facts,mamba,s-mamba,swap,residual,1,"first subject token",0,/);
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
    document.getElementById("layout-check").textContent = JSON.stringify(out);
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
  const { stdout } = await run(chromium, [...flags, "--dump-dom", `file://${file}`], { maxBuffer: 64 << 20 });
  const json = /<pre id="layout-check">([^<]*)<\/pre>/.exec(stdout)?.[1];
  assert.ok(json, "the layout probe did not run in Chromium");
  const figures = JSON.parse(json.replace(/&quot;/g, '"').replace(/&amp;/g, "&")) as {
    site: string;
    model: string;
    w: number;
    h: number;
    texts: string[];
    cells: number;
  }[];
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

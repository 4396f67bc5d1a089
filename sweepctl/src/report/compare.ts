/**
 * `sweepctl compare <a> <b>`: two traced sweeps side by side as differences (Mamba vs NeoX, swap vs
 * noise, two windows): per (site, window) both have, the difference heatmap of mean IE (a − b) over
 * their common token groups and layers; per token row the findings read (last subject token, last
 * token), the mean IE over layers of each sweep and of the difference, with percentile bootstrap
 * intervals over facts (each sweep's facts resampled on their own, seeded).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { TopLevelSpec } from "vega-lite";
import { seededRandom, type FactRows } from "@factsweep/planning";
import { siteTitle } from "./charts.js";
import { FINDINGS_RULES } from "./findings.js";
import { renderSvg, withHoverTitles } from "./render.js";
import type { ModelTrace } from "./types.js";

/** Difference of two heatmaps over their common groups and layers: a − b (null where either is). */
export interface DiffHeatmap {
  site: string;
  window: number;
  groups: string[];
  layers: number[];
  diff: (number | null)[][];
}

/** Mean IE over layers of one token row, per sweep and their difference, with bootstrap intervals. */
export interface RowMean {
  site: string;
  window: number;
  group: string;
  a: { mean: number; ci: [number, number]; facts: number };
  b: { mean: number; ci: [number, number]; facts: number };
  diff: { mean: number; ci: [number, number] };
}

export interface Comparison {
  a: string;
  b: string;
  heatmaps: DiffHeatmap[];
  rows: RowMean[];
}

/** Per fact, the mean over layers of its IE (facts without any value left out). */
const factMeans = (r: FactRows): number[] =>
  r.ie
    .map((row) => row.filter((v): v is number => v !== null))
    .filter((v) => v.length > 0)
    .map((v) => v.reduce((s, x) => s + x, 0) / v.length);
const mean = (xs: number[]): number => xs.reduce((s, x) => s + x, 0) / xs.length;
const quantile = (sorted: number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))]!;

/** Compares two trace views (see the module comment). */
export function compareTraces(a: ModelTrace, b: ModelTrace): Comparison {
  const heatmaps: DiffHeatmap[] = [];
  for (const ha of a.heatmaps) {
    const hb = b.heatmaps.find((h) => h.site === ha.site && h.window === ha.window);
    if (!hb) continue;
    const groups = ha.groups.filter((g) => hb.groups.includes(g));
    const layers = ha.layers.filter((l) => hb.layers.includes(l));
    const at = (h: typeof ha, g: string, l: number) => h.ie[h.groups.indexOf(g)]?.[h.layers.indexOf(l)] ?? null;
    const diff = groups.map((g) =>
      layers.map((l) => {
        const x = at(ha, g, l);
        const y = at(hb, g, l);
        return x === null || y === null ? null : x - y;
      }),
    );
    heatmaps.push({ site: ha.site, window: ha.window, groups, layers, diff });
  }
  const rows: RowMean[] = [];
  const lo = (1 - FINDINGS_RULES.interval) / 2;
  for (const ra of a.perFact ?? []) {
    const rb = b.perFact?.find((r) => r.site === ra.site && r.window === ra.window && r.group === ra.group);
    if (!rb) continue;
    const xa = factMeans(ra);
    const xb = factMeans(rb);
    if (!xa.length || !xb.length) continue;
    const rand = seededRandom(FINDINGS_RULES.seed);
    const draw = (xs: number[]) => mean(Array.from({ length: xs.length }, () => xs[Math.floor(rand() * xs.length)]!));
    const sa: number[] = [];
    const sb: number[] = [];
    const sd: number[] = [];
    for (let i = 0; i < FINDINGS_RULES.resamples; i++) {
      const ma = draw(xa);
      const mb = draw(xb);
      sa.push(ma);
      sb.push(mb);
      sd.push(ma - mb);
    }
    const ci = (xs: number[]): [number, number] => {
      const s = [...xs].sort((p, q) => p - q);
      return [quantile(s, lo), quantile(s, 1 - lo)];
    };
    rows.push({
      site: ra.site,
      window: ra.window,
      group: ra.group,
      a: { mean: mean(xa), ci: ci(sa), facts: xa.length },
      b: { mean: mean(xb), ci: ci(sb), facts: xb.length },
      diff: { mean: mean(xa) - mean(xb), ci: ci(sd) },
    });
  }
  return { a: a.label, b: b.label, heatmaps, rows };
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c);
const f2 = (x: number): string => x.toFixed(3);

/** The difference heatmap of one grid: diverging colours, 0 white, a > b red. */
function diffSpec(c: Comparison, h: DiffHeatmap): TopLevelSpec {
  const values = h.groups.flatMap((group, gi) => h.layers.map((layer, li) => ({ group, layer, diff: h.diff[gi]?.[li] ?? null })));
  const vmax = Math.max(0.05, ...values.map((v) => Math.abs(v.diff ?? 0)));
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: `${siteTitle(h.site, h.window)}: ${c.a} − ${c.b}`, fontSize: 13 },
    width: 520,
    height: 30 * h.groups.length,
    data: { values },
    transform: [{ calculate: `datum.group + ", layer " + datum.layer + ": ΔIE " + (datum.diff === null ? "n/a" : format(datum.diff, ".3f"))`, as: "hover" }],
    mark: "rect",
    encoding: {
      x: { field: "layer", type: "ordinal", axis: { labelAngle: 0 } },
      y: { field: "group", type: "nominal", title: null, sort: h.groups },
      color: { field: "diff", type: "quantitative", title: "ΔIE", scale: { scheme: "redblue", reverse: true, domain: [-vmax, vmax] } },
      description: { field: "hover", type: "nominal" },
    },
  };
}

/** Writes compare.html to `out`; returns its path. */
export async function writeComparison(c: Comparison, out: string): Promise<string> {
  mkdirSync(out, { recursive: true });
  const figs = await Promise.all(
    c.heatmaps.map(
      async (h) => `<figure class="diff" data-site="${esc(h.site)}" data-window="${h.window}">${withHoverTitles(await renderSvg(diffSpec(c, h)))}</figure>`,
    ),
  );
  const pct = Math.round(FINDINGS_RULES.interval * 100);
  const table =
    `<table><tr><th>site</th><th>token row</th><th>${esc(c.a)}</th><th>${esc(c.b)}</th><th>difference</th></tr>` +
    c.rows
      .map(
        (r) =>
          `<tr><td>${esc(siteTitle(r.site, r.window))}</td><td>${esc(r.group)}</td>` +
          `<td>${f2(r.a.mean)} [${f2(r.a.ci[0])}, ${f2(r.a.ci[1])}] (${r.a.facts} facts)</td>` +
          `<td>${f2(r.b.mean)} [${f2(r.b.ci[0])}, ${f2(r.b.ci[1])}] (${r.b.facts} facts)</td>` +
          `<td>${f2(r.diff.mean)} [${f2(r.diff.ci[0])}, ${f2(r.diff.ci[1])}]</td></tr>`,
      )
      .join("") +
    `</table>`;
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${esc(c.a)} vs ${esc(c.b)}</title>
<style>body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}figure svg{max-width:100%;height:auto}</style></head><body>
<h1>${esc(c.a)} vs ${esc(c.b)}</h1>
<p>Mean IE over layers per token row, each sweep and the difference, with ${pct}% percentile bootstrap intervals (${FINDINGS_RULES.resamples} resamples of each sweep's facts, seed ${FINDINGS_RULES.seed}). A difference whose interval excludes 0 is unlikely to be sampling noise alone.</p>
${c.rows.length ? table : "<p>No per-fact rows in common (views restored without cells, or no common site).</p>"}
<h2>Difference of mean IE (${esc(c.a)} − ${esc(c.b)}) per site, over common token groups and layers</h2>
${figs.join("\n") || "<p>No (site, window) in common.</p>"}
</body></html>
`;
  const file = join(out, "compare.html");
  writeFileSync(file, html);
  return file;
}

/** The comparison's rows as text lines (the CLI's output). */
export function comparisonLines(c: Comparison): string[] {
  return c.rows.map(
    (r) =>
      `${siteTitle(r.site, r.window)}, ${r.group}: ${c.a} ${f2(r.a.mean)}, ${c.b} ${f2(r.b.mean)}, difference ${f2(r.diff.mean)} [${f2(r.diff.ci[0])}, ${f2(r.diff.ci[1])}]`,
  );
}

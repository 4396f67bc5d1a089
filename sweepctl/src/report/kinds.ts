/**
 * Report sections of the experiment kinds, Mamba and NeoX side by side as in the paper: a generic
 * renderer of what each kind module says it draws (`report` of planning's kinds/<kind>.ts:
 * heading, intro, notes, line/bar/heatmap charts, a table). Input: the {@link KindAggregate}s of
 * finished sweeps (the coordinator's `summary()` of a kind sweep; `sweepctl local` writes it to
 * kind.json).
 *
 * @example
 * const aggs = readKindAggregates(["out/mamba-knockout", "out/neox-knockout"]);
 * const html = (await kindSections(aggs)).join("\n");   // <section> fragments, SVG inline
 */
import { existsSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import type { TopLevelSpec } from "vega-lite";
import { EXPERIMENT_KIND_MODULES, KIND_AGGREGATE_FILE, type ChartAxis, type ChartView, type KindAggregate, type KindReport } from "@factsweep/planning";
import { archName, modelRank, renderSvg } from "./render.js";

const SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json";
const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c);
const label = (a: KindAggregate): string => `${a.model} (${archName(a.modelType)})`;
/** Mamba first, then Mamba-2, then NeoX, as the paper's figures. */
const byModel = (xs: KindAggregate[]): KindAggregate[] =>
  [...xs].sort((a, b) => modelRank(a.modelType) - modelRank(b.modelType) || a.model.localeCompare(b.model));

/** A chart description of a kind module as a Vega-Lite spec. */
function vegaSpec(c: ChartView): TopLevelSpec {
  const base = { $schema: SCHEMA, title: { text: c.title, fontSize: 13 }, data: { values: c.values } };
  const scale = (a: ChartAxis) => (a.domain ? { scale: { domain: a.domain } } : {});
  const title = (a: ChartAxis) => (a.title !== undefined ? { title: a.title } : {});
  if (c.mark === "bar") {
    return {
      ...base,
      width: 260,
      height: { step: 12 },
      mark: "bar",
      encoding: {
        y: { field: c.y, type: "nominal", title: null, sort: "-x" },
        yOffset: { field: c.group },
        x: { field: c.x.field, type: "quantitative", ...title(c.x), ...scale(c.x) },
        color: { field: c.group, type: "nominal", title: null, legend: { orient: "bottom", direction: "vertical", labelLimit: 400 } },
      },
    } as TopLevelSpec;
  }
  if (c.mark === "rect") {
    return {
      ...base,
      width: 240,
      height: 180,
      mark: "rect",
      encoding: {
        x: { field: c.x.field, type: "ordinal", sort: { field: c.x.sort }, ...title(c.x) },
        y: { field: c.y.field, type: "ordinal", sort: "descending", ...title(c.y) },
        color: {
          field: c.color.field,
          type: "quantitative",
          ...title(c.color),
          scale: { scheme: "viridis", ...(c.color.domain ? { domain: c.color.domain } : {}) },
        },
      },
    } as TopLevelSpec;
  }
  const layer = {
    mark: { type: "line", point: true },
    encoding: {
      // Layers are integers: no 0.5 ticks.
      x: { field: c.x.field, type: "quantitative", title: c.x.title ?? c.x.field, axis: { tickMinStep: 1, ...(c.x.field === "layer" ? { format: "d" } : {}) } },
      y: { field: c.y.field, type: "quantitative", ...title(c.y), ...scale(c.y) },
      // Below the plot, labels never cut (labelLimit 0: no limit).
      color: { field: c.color, type: "nominal", title: c.color.replace("_", " "), legend: { orient: "bottom", direction: "vertical", labelLimit: 0 } },
    },
  };
  if (c.facet) {
    return { ...base, facet: { column: { field: c.facet, type: "nominal", title: null } }, spec: { width: 220, height: 160, ...layer } } as TopLevelSpec;
  }
  return { ...base, width: 260, height: 170, ...layer } as TopLevelSpec;
}

async function row(charts: TopLevelSpec[]): Promise<string> {
  const svgs = await Promise.all(charts.map((c) => renderSvg(c)));
  return `<div class="row" style="display:flex;flex-wrap:wrap;gap:24px">${svgs.map((s) => `<div>${s}</div>`).join("")}</div>`;
}

/** One kind's section from its module's report description, the models side by side. */
async function section<S>(report: KindReport<S>, aggs: { agg: KindAggregate; summary: S }[]): Promise<string> {
  const noted = report.note ? aggs.map(({ agg, summary }) => ({ agg, text: report.note!(summary) })).filter((n) => n.text) : [];
  const notes = noted.length ? `<ul>${noted.map(({ agg, text }) => `<li>${esc(label(agg))}: ${esc(text)}</li>`).join("")}</ul>` : "";
  const rows: string[] = [];
  for (const chart of report.charts) {
    const views = aggs.map(({ agg, summary }) => chart(summary, label(agg))).filter((v): v is ChartView => v !== null);
    if (views.length) rows.push(await row(views.map(vegaSpec)));
  }
  const t = report.table;
  const table = t
    ? `<table><tr>${["model", ...t.head].map((h) => `<th>${esc(h)}</th>`).join("")}</tr>${aggs.flatMap(({ agg, summary }) => t.rows(summary).map((cells) => `<tr>${[agg.model, ...cells].map((c) => `<td>${esc(String(c))}</td>`).join("")}</tr>`)).join("")}</table>`
    : "";
  return `<section><h2>${esc(report.heading)}</h2><p>${report.intro}</p>${notes}${rows.join("")}${table}</section>`;
}

/**
 * One HTML `<section>` per experiment kind present in `aggregates` (knockout, sever, lre, edit, in
 * that order), each with the models side by side (Mamba first). Trace aggregates are not handled here.
 */
export async function kindSections(aggregates: KindAggregate[]): Promise<string[]> {
  const out: string[] = [];
  for (const k of EXPERIMENT_KIND_MODULES) {
    const mine = byModel(aggregates.filter((a) => a.kind === k.name && a[k.name])).map((agg) => ({ agg, summary: agg[k.name] }));
    if (mine.length && k.report) out.push(await section(k.report as KindReport<unknown>, mine));
  }
  return out;
}

/** The kind aggregates (kind.json) in `sweepctl local` output folders; folders without one are skipped. */
export function readKindAggregates(dirs: string[]): KindAggregate[] {
  return dirs
    .filter((d) => existsSync(join(d, KIND_AGGREGATE_FILE)))
    .map((d) => JSON.parse(readFileSync(join(d, KIND_AGGREGATE_FILE), "utf8")) as KindAggregate);
}

/** A standalone HTML page of {@link kindSections}; returns its path. */
export async function writeKindReport(aggregates: KindAggregate[], outDir: string, title = "Experiment kinds"): Promise<string> {
  mkdirSync(outDir, { recursive: true });
  const html = `<!doctype html><meta charset="utf-8"><title>${esc(title)}</title><style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}</style><h1>${esc(title)}</h1>${(await kindSections(aggregates)).join("\n")}`;
  const file = join(outDir, "kinds.html");
  writeFileSync(file, html);
  return file;
}

/**
 * Report sections of the experiment kinds, Mamba and NeoX side by side as in the paper:
 * knockout curves per token set (§5), sever recovery with and without each path (§2), LRE
 * faithfulness per relation at the best layer/β and the layer × β sweep (§4), ROME ES/PS/NS/S per
 * layer for each matrix (§3). Input: the {@link KindAggregate}s of finished sweeps (the
 * coordinator's `summary()` of a kind sweep; `sweepctl local` writes it to kind.json).
 *
 * @example
 * const aggs = readKindAggregates(["out/mamba-knockout", "out/neox-knockout"]);
 * const html = (await kindSections(aggs)).join("\n");   // <section> fragments, SVG inline
 */
import { existsSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import type { TopLevelSpec } from "vega-lite";
import { KIND_AGGREGATE_FILE, type KindAggregate } from "@factsweep/planning";
import { renderSvg } from "./render.js";

const SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json";
const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c);
const label = (a: KindAggregate): string => `${a.model} (${a.modelType === "gpt_neox" ? "GPT-NeoX" : "Mamba"})`;
/** Mamba first, then NeoX, as the paper's figures. */
const byModel = (xs: KindAggregate[]): KindAggregate[] => [...xs].sort((a, b) => (a.modelType === b.modelType ? a.model.localeCompare(b.model) : a.modelType === "mamba" ? -1 : 1));

function lines(title: string, values: object[], y: { field: string; title: string; domain?: [number, number] }, color: string, opts: { facet?: string; x?: string } = {}): TopLevelSpec {
  const layer = {
    mark: { type: "line", point: true },
    encoding: {
      x: { field: "layer", type: "quantitative", title: opts.x ?? "layer", axis: { tickMinStep: 1 } },
      y: { field: y.field, type: "quantitative", title: y.title, ...(y.domain ? { scale: { domain: y.domain } } : {}) },
      color: { field: color, type: "nominal", title: color.replace("_", " "), legend: { labelLimit: 300 } },
    },
  };
  const base = { $schema: SCHEMA, title: { text: title, fontSize: 13 }, data: { values } };
  if (opts.facet) {
    return { ...base, facet: { column: { field: opts.facet, type: "nominal", title: null } }, spec: { width: 220, height: 160, ...layer } } as TopLevelSpec;
  }
  return { ...base, width: 260, height: 170, ...layer } as TopLevelSpec;
}

async function row(charts: TopLevelSpec[]): Promise<string> {
  const svgs = await Promise.all(charts.map((c) => renderSvg(c)));
  return `<div class="row" style="display:flex;flex-wrap:wrap;gap:24px">${svgs.map((s) => `<div>${s}</div>`).join("")}</div>`;
}

async function knockoutSection(aggs: KindAggregate[]): Promise<string> {
  const charts = aggs.map((a) => lines(
    `${label(a)}: knockout, window ${a.knockout!.window}`,
    a.knockout!.points.filter((p) => p.relative_change !== null),
    { field: "relative_change", title: "(p_knocked − p) / p" },
    "token_set",
    { x: "centre of knocked-out layers" },
  ));
  const method = "Mamba: mean-ablation of a = W_a·norm(h) at the set's positions (clean a restored elsewhere, last token untouched); NeoX: attention from the last token to the set blocked.";
  return `<section><h2>Information-flow knockout</h2><p>${esc(method)} Mean relative change of p(answer) over prompts, per token set and window centre.</p>${await row(charts)}</section>`;
}

async function severSection(aggs: KindAggregate[]): Promise<string> {
  const charts = aggs.map((a) => lines(
    `${label(a)}: restoring h with a path severed`,
    a.sever!.points.filter((p) => p.recovery !== null).map((p) => ({ ...p, path: p.path === "none" ? "none (plain restore)" : p.path })),
    { field: "recovery", title: "recovery (p − p*) / (p_clean − p*)" },
    "path",
    { facet: "token" },
  ));
  return `<section><h2>Path blocking (sever)</h2><p>The clean residual state at (token, layer) is restored into the corrupted run while the named path is frozen to its corrupted value at that token in every later layer; a drop against "none" means the restored state reaches the answer through that path.</p>${await row(charts)}</section>`;
}

async function lreSection(aggs: KindAggregate[]): Promise<string> {
  const bars = aggs.map((a): TopLevelSpec => {
    const l = a.lre!;
    const values = [
      ...(l.overall ? l.overall.relations.map((r) => ({ relation: r.relation, faithfulness: r.faithfulness, at: `best overall (layer ${l.overall!.layer}, β ${l.overall!.beta})` })) : []),
      ...l.best.map((b) => ({ relation: b.relation, faithfulness: b.faithfulness, at: "best layer/β per relation" })),
    ].filter((v) => v.faithfulness !== null);
    return {
      $schema: SCHEMA, title: { text: `${label(a)}: LRE faithfulness`, fontSize: 13 }, data: { values }, width: 260, height: { step: 12 },
      mark: "bar",
      encoding: {
        y: { field: "relation", type: "nominal", title: null, sort: "-x" },
        yOffset: { field: "at" },
        x: { field: "faithfulness", type: "quantitative", scale: { domain: [0, 1] } },
        color: { field: "at", type: "nominal", title: null, legend: { orient: "bottom", direction: "vertical", labelLimit: 400 } },
      },
    } as TopLevelSpec;
  });
  const heat = aggs.map((a): TopLevelSpec => {
    const l = a.lre!;
    const cells = new Map<string, { sum: number; n: number }>();
    for (const p of l.points) {
      if (p.faithfulness === null) continue;
      const k = `${p.layer}|${p.beta}`;
      const e = cells.get(k) ?? { sum: 0, n: 0 };
      e.sum += p.faithfulness;
      e.n++;
      cells.set(k, e);
    }
    const values = [...cells].map(([k, e]) => {
      const [layer, beta] = k.split("|").map(Number);
      return { layer: layer === -1 ? "emb" : String(layer), order: layer, beta, faithfulness: e.sum / e.n };
    });
    return {
      $schema: SCHEMA, title: { text: `${label(a)}: mean faithfulness, layer × β`, fontSize: 13 }, data: { values }, width: 240, height: 180,
      mark: "rect",
      encoding: {
        x: { field: "layer", type: "ordinal", sort: { field: "order" }, title: "layer of h (emb = token embedding)" },
        y: { field: "beta", type: "ordinal", sort: "descending", title: "β" },
        color: { field: "faithfulness", type: "quantitative", scale: { scheme: "viridis", domain: [0, 1] } },
      },
    } as TopLevelSpec;
  });
  const notes = aggs.map((a) => {
    const o = a.lre!.overall;
    const above = a.lre!.best.filter((b) => (b.faithfulness ?? 0) > 0.5).length;
    return `<li>${esc(label(a))}: ${o ? `best overall layer ${o.layer === -1 ? "emb" : o.layer}, β ${o.beta}, mean faithfulness ${o.mean?.toFixed(2)}` : "no faithfulness measured"}; ${above} of ${a.lre!.best.length} relations above 0.5 at their best layer/β</li>`;
  });
  return `<section><h2>Linear relation embeddings</h2><p>Jacobian LRE (Hernandez et al.) from h at the subject's last token to the last block's output; faithfulness = the LRE's top-1 equals the model's on test facts the model gets right, averaged over trials.</p><ul>${notes.join("")}</ul>${await row(bars)}${await row(heat)}</section>`;
}

async function editSection(aggs: KindAggregate[]): Promise<string> {
  const charts = aggs.map((a) => lines(
    `${label(a)}: ROME scores per layer`,
    a.edit!.points.flatMap((p) => (["ES", "PS", "NS", "S"] as const).filter((m) => p[m] !== null).map((m) => ({ matrix: p.matrix, layer: p.layer, metric: m, score: 100 * p[m]! }))),
    { field: "score", title: "score (%)", domain: [0, 100] },
    "metric",
    { facet: "matrix" },
  ));
  const rows = aggs.flatMap((a) => a.edit!.points.map((p) => `<tr><td>${esc(a.model)}</td><td>${esc(p.matrix)}</td><td>${p.layer}</td><td>${p.cases}</td>${(["ES", "PS", "NS", "S"] as const).map((m) => `<td>${p[m] === null ? "" : (100 * p[m]!).toFixed(1)}</td>`).join("")}</tr>`));
  return `<section><h2>Rank-one editing (ROME)</h2><p>Efficacy ES, paraphrase PS, neighbourhood NS after the edit, and S their harmonic mean (ROME's summarize), per edited matrix and layer.</p>${await row(charts)}<table><tr><th>model</th><th>matrix</th><th>layer</th><th>cases</th><th>ES</th><th>PS</th><th>NS</th><th>S</th></tr>${rows.join("")}</table></section>`;
}

/**
 * One HTML `<section>` per experiment kind present in `aggregates` (knockout, sever, lre, edit, in
 * that order), each with the models side by side (Mamba first). Trace aggregates are not handled here.
 */
export async function kindSections(aggregates: KindAggregate[]): Promise<string[]> {
  const out: string[] = [];
  const of = (k: KindAggregate["kind"]) => byModel(aggregates.filter((a) => a.kind === k && a[k]));
  if (of("knockout").length) out.push(await knockoutSection(of("knockout")));
  if (of("sever").length) out.push(await severSection(of("sever")));
  if (of("lre").length) out.push(await lreSection(of("lre")));
  if (of("edit").length) out.push(await editSection(of("edit")));
  return out;
}

/** The kind aggregates (kind.json) in `sweepctl local` output folders; folders without one are skipped. */
export function readKindAggregates(dirs: string[]): KindAggregate[] {
  return dirs.filter((d) => existsSync(join(d, KIND_AGGREGATE_FILE))).map((d) => JSON.parse(readFileSync(join(d, KIND_AGGREGATE_FILE), "utf8")) as KindAggregate);
}

/** A standalone HTML page of {@link kindSections}; returns its path. */
export async function writeKindReport(aggregates: KindAggregate[], outDir: string, title = "Experiment kinds"): Promise<string> {
  mkdirSync(outDir, { recursive: true });
  const html = `<!doctype html><meta charset="utf-8"><title>${esc(title)}</title><style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}</style><h1>${esc(title)}</h1>${(await kindSections(aggregates)).join("\n")}`;
  const file = join(outDir, "kinds.html");
  writeFileSync(file, html);
  return file;
}

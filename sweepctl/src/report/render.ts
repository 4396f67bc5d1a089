import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import { heatmapSpec, lineSpec } from "./charts.js";
import { CHECKED_MODEL_TYPES, FINDINGS_RULES, findings, partialOf } from "./findings.js";
import type { Finding, ModelTrace, TraceReport } from "./types.js";

/** Renders a Vega-Lite spec to an SVG string headless (no canvas, no browser). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c);

/** Residual first, then the sites in the order the paper discusses them. */
const SITE_ORDER = ["embed", "residual", "mixer", "ssm", "gate", "conv", "in_ssm", "attn", "mlp"];
const siteRank = (s: string): number => {
  const i = SITE_ORDER.indexOf(s);
  return i < 0 ? SITE_ORDER.length : i;
};

const VERDICT_CLASS: Record<string, string> = { reproduced: "yes", "not reproduced": "no", inconclusive: "maybe" };
function verdict(f: Finding): string {
  return `<td class="${VERDICT_CLASS[f.verdict] ?? "na"}">${esc(f.verdict)}${f.note ? `<br><small>${esc(f.note)}</small>` : ""}</td>`;
}

/** The measured peaks with their bootstrap intervals, and the share of resamples in which the rule held. */
function measuredCell(f: Finding): string {
  const ci = f.intervals
    ? `<br><small>${Math.round(FINDINGS_RULES.interval * 100)}% bootstrap intervals: ${Object.entries(f.intervals)
        .map(([k, [a, b]]) => `${esc(k)} [${a.toFixed(2)}, ${b.toFixed(2)}]`)
        .join("; ")}<br>rule held in ${Math.round((f.support ?? 0) * 100)}% of ${FINDINGS_RULES.resamples} resamples</small>`
    : "";
  return `<td>${esc(f.measured)}${ci}</td>`;
}

/** SVG <title> children from vega's aria-labels, so hovering a heatmap cell shows its values in any browser. */
export const withHoverTitles = (svg: string): string =>
  svg.replace(
    /<path aria-label="([^"]*)" role="graphics-symbol" aria-roledescription="rect mark"([^>]*?)\/>/g,
    (_, label: string, rest: string) => `<path role="graphics-symbol"${rest}><title>${label}</title></path>`,
  );

/** "partial: 15 of 80 facts (sweep running)" for a view of an unfinished sweep, else "". */
export function partialText(m: ModelTrace): string {
  const p = partialOf(m);
  return p ? `partial: ${p.done} of ${p.planned} facts${m.state && m.state !== "done" ? ` (sweep ${m.state})` : ""}` : "";
}

/** The order models are drawn in: Mamba-1 (the paper's), Mamba-2, GPT-NeoX, then any other. */
const MODEL_ORDER = ["mamba", "mamba2", "gpt_neox"];
export const modelRank = (modelType: string): number => {
  const i = MODEL_ORDER.indexOf(modelType);
  return i < 0 ? MODEL_ORDER.length : i;
};
/** The architecture's name as the page writes it. */
export const archName = (modelType: string): string => ({ mamba: "Mamba", mamba2: "Mamba-2", gpt_neox: "GPT-NeoX" })[modelType] ?? modelType;

/** Rows of models to draw side by side: one row per corruption, Mamba before Mamba-2 before NeoX (the paper's order, Mamba-2 beside its ancestor). */
function pairs(models: ModelTrace[]): ModelTrace[][] {
  const rows = new Map<string, ModelTrace[]>();
  for (const m of models) rows.set(m.corruption, [...(rows.get(m.corruption) ?? []), m]);
  return [...rows.values()].map((r) => r.sort((a, b) => modelRank(a.modelType) - modelRank(b.modelType) || a.label.localeCompare(b.label)));
}

/** Rows of the CSV that goes with the report: every heatmap cell, mean IE and AIE. */
export function reportCsv(report: TraceReport): string {
  const lines = ["model,model_type,sweep_id,corruption,site,window,token_group,layer,mean_ie,aie,cells"];
  for (const m of report.models)
    for (const h of m.heatmaps)
      h.groups.forEach((g, gi) =>
        h.layers.forEach((layer, li) => {
          const ie = h.ie[gi]?.[li];
          const aie = h.aie[gi]?.[li];
          lines.push(
            [
              m.label,
              m.modelType,
              m.sweepId,
              m.corruption,
              h.site,
              h.window,
              JSON.stringify(g),
              layer,
              ie == null ? "" : ie,
              aie == null ? "" : aie,
              h.count[gi]?.[li] ?? 0,
            ].join(","),
          );
        }),
      );
  return lines.join("\n") + "\n";
}

/**
 * Self-contained HTML report: heatmaps of the mean indirect effect by token group × layer for
 * each site, models side by side; line plots of the last-subject-token and last-token rows; fact
 * counts; and which of the paper's findings the traced models reproduce.
 */
export async function renderReport(report: TraceReport, extraSections: string[] = []): Promise<string> {
  const vmax = Math.max(
    0.1,
    ...report.models.flatMap((m) => m.heatmaps.flatMap((h) => h.ie.flat().filter((v): v is number => v !== null && Number.isFinite(v)))),
  );
  const columns = new Map<ModelTrace, string>();
  for (const m of report.models) {
    const parts: string[] = [];
    const partial = partialText(m);
    // A figure of a sweep not done says so under it, with its fact count.
    const cap = partial ? `<figcaption class="partial">${esc(partial)}</figcaption>` : "";
    const heatmaps = [...m.heatmaps].sort((a, b) => siteRank(a.site) - siteRank(b.site) || a.window - b.window);
    for (const h of heatmaps) {
      const svg = withHoverTitles(await renderSvg(heatmapSpec(m, h, Math.min(1, vmax))));
      parts.push(
        `<figure class="heatmap" data-model="${esc(m.label)}" data-site="${esc(h.site)}" data-window="${h.window}" ` +
          `data-groups="${h.groups.length}" data-layers="${h.layers.length}">${svg}${cap}</figure>`,
      );
    }
    for (const [label, re] of [
      ["last subject token", /last subject|subject[_ ]?last/i],
      ["last token", /^last( token)?$|^last_token$/i],
    ] as const) {
      const spec = lineSpec(m, label, re);
      if (spec) parts.push(`<figure class="lines" data-model="${esc(m.label)}" data-row="${esc(label)}">${await renderSvg(spec)}${cap}</figure>`);
    }
    const skipped = m.skipped.length ? `<ul>${m.skipped.map((s) => `<li>${s.count} skipped: ${esc(s.reason)}</li>`).join("")}</ul>` : "";
    columns.set(
      m,
      `<section class="model" data-model="${esc(m.label)}"><h2>${esc(m.label)} <small>(${esc(m.modelType)}, ${esc(m.corruption)} corruption, sweep ${esc(m.sweepId)})</small></h2>` +
        (partial
          ? `<p class="partial" data-facts="${m.facts}" data-planned="${m.plannedFacts ?? m.facts}">${esc(partial)}: every figure averages only the facts done so far.</p>`
          : `<p class="counts">${m.facts} facts traced.</p>`) +
        `${skipped}${parts.join("\n")}</section>`,
    );
  }
  const fs = findings(report.models);
  const checked = report.models.filter((m) => m.findings !== false && CHECKED_MODEL_TYPES.includes(m.modelType));
  const rules =
    `<p class="rules">How each check is judged: its rule (below, with its thresholds) is applied to the mean IE curves of the finished sweep; ` +
    `fewer than ${FINDINGS_RULES.minFacts} facts or ${FINDINGS_RULES.minLayers} traced layers gives no verdict ("too few facts" / "too few layers"), and so does a sweep not done ("partial"). ` +
    `The facts are resampled with replacement ${FINDINGS_RULES.resamples} times (seed ${FINDINGS_RULES.seed}); each peak's ${Math.round(FINDINGS_RULES.interval * 100)}% percentile interval is shown, and ` +
    `"reproduced" needs the rule to hold on all facts and in ≥ ${Math.round(FINDINGS_RULES.support * 100)}% of resamples ("not reproduced": fails on all facts, holds in ≤ ${Math.round((1 - FINDINGS_RULES.support) * 100)}%; otherwise "inconclusive"). ` +
    `The thresholds are ours, set for the paper's qualitative claims; the published numbers are for the paper's 2.8B models. A sweep that is not a replication turns this table off with <code>findings: false</code> in its spec or <code>sweepctl report --findings off</code>.</p>`;
  const table = fs.length
    ? `${rules}<table class="findings"><thead><tr><th>model</th><th>finding of the paper</th><th>published (mamba-2.8b / pythia-2.8b; a Mamba-2 is held to mamba-2.8b's)</th><th>rule applied</th><th>facts</th><th>measured here</th><th>verdict</th></tr></thead><tbody>` +
      fs
        .map(
          (f) =>
            `<tr><td>${esc(f.model)}</td><td>${esc(f.claim)}</td><td>${esc(f.paper)}</td><td>${esc(f.rule)}</td><td>${f.facts} facts, ${f.layers} layers</td>${measuredCell(f)}${verdict(f)}</tr>`,
        )
        .join("") +
      `</tbody></table>`
    : "";
  const partials = report.models.filter((m) => partialOf(m));
  const banner = partials.length
    ? `<p class="partial banner">Partial report: ${partials.map((m) => `${esc(m.label)} ${esc(partialText(m))}`).join("; ")}. Findings are not judged on partial data.</p>`
    : "";
  const rows = pairs(report.models)
    .map((r) => `<div class="models" style="grid-template-columns:repeat(${r.length},minmax(0,1fr))">\n${r.map((m) => columns.get(m)).join("\n")}\n</div>`)
    .join("\n");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(report.title)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
.models{display:grid;gap:32px;align-items:start;margin-bottom:24px}
.model{min-width:0;overflow-x:auto}
figure{margin:8px 0}figure svg{max-width:100%;height:auto}figcaption{font-size:12px;color:#555}
table.findings{border-collapse:collapse;margin:16px 0;font-size:13px}
.findings td,.findings th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.yes{background:#e6f4e6}.no{background:#fbe9e9}.maybe{background:#fdf5e0}.na{background:#f3f3f3}
.partial{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}
small{color:#666;font-weight:normal}
</style></head><body>
<h1>${esc(report.title)}</h1>
<p>Created ${esc(report.created)}.</p>
${banner}
${
  report.models.length
    ? `<p>Indirect effect IE = (p[restored] − p[corrupt]) / (p[clean] − p[corrupt]) of the clean answer, averaged per token group and layer (Meng et al. 2022; Sen Sharma et al. 2024). Colour scale 0–${Math.min(1, vmax).toFixed(2)}, shared by all heatmaps; hover a cell for its values. Mamba, Mamba-2 and GPT-NeoX side by side, one row per corruption. A Mamba-2 is checked against the paper's Mamba-1 findings with the same rules (its <code>mixer</code>, <code>ssm</code> and <code>gate</code> are the o, s and g of the paper's Mamba-1).</p>
${checked.length ? `<h2>Findings of the paper, checked</h2>\n${table}` : ""}
${rows}`
    : ""
}
${extraSections.join("\n")}
</body></html>
`;
}

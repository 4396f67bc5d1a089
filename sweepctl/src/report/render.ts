import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import { heatmapSpec, lineSpec, siteTitle } from "./charts.js";
import { findings } from "./findings.js";
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

function verdict(f: Finding): string {
  if (f.reproduced === null) return `<td class="na">not checked</td>`;
  return f.reproduced ? `<td class="yes">reproduced</td>` : `<td class="no">not reproduced</td>`;
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
  const columns: string[] = [];
  for (const m of report.models) {
    const parts: string[] = [];
    const heatmaps = [...m.heatmaps].sort((a, b) => siteRank(a.site) - siteRank(b.site) || a.window - b.window);
    for (const h of heatmaps) {
      const svg = await renderSvg(heatmapSpec(m, h, Math.min(1, vmax)));
      parts.push(
        `<figure class="heatmap" data-model="${esc(m.label)}" data-site="${esc(h.site)}" data-window="${h.window}" ` +
          `data-groups="${h.groups.length}" data-layers="${h.layers.length}">${svg}</figure>`,
      );
    }
    for (const [label, re] of [
      ["last subject token", /last subject|subject[_ ]?last/i],
      ["last token", /^last( token)?$|^last_token$/i],
    ] as const) {
      const spec = lineSpec(m, label, re);
      if (spec) parts.push(`<figure class="lines" data-model="${esc(m.label)}" data-row="${esc(label)}">${await renderSvg(spec)}</figure>`);
    }
    const skipped = m.skipped.length ? `<ul>${m.skipped.map((s) => `<li>${s.count} skipped: ${esc(s.reason)}</li>`).join("")}</ul>` : "";
    columns.push(
      `<section class="model"><h2>${esc(m.label)} <small>(${esc(m.modelType)}, ${esc(m.corruption)} corruption, sweep ${esc(m.sweepId)})</small></h2>` +
        `<p class="counts">${m.facts} facts traced.</p>${skipped}${parts.join("\n")}</section>`,
    );
  }
  const fs = findings(report.models);
  const table = fs.length
    ? `<table class="findings"><thead><tr><th>model</th><th>finding of the paper</th><th>published (mamba-2.8b / pythia-2.8b)</th><th>measured here</th><th>verdict</th></tr></thead><tbody>` +
      fs.map((f) => `<tr><td>${esc(f.model)}</td><td>${esc(f.claim)}</td><td>${esc(f.paper)}</td><td>${esc(f.measured)}</td>${verdict(f)}</tr>`).join("") +
      `</tbody></table>`
    : "<p>No model of a known architecture was traced.</p>";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(report.title)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
.models{display:flex;gap:32px;align-items:flex-start;flex-wrap:wrap}
.model{flex:1 1 0;min-width:380px}
figure{margin:8px 0}figcaption{font-size:12px;color:#555}
table.findings{border-collapse:collapse;margin:16px 0;font-size:13px}
.findings td,.findings th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.yes{background:#e6f4e6}.no{background:#fbe9e9}.na{background:#f3f3f3}
small{color:#666;font-weight:normal}
</style></head><body>
<h1>${esc(report.title)}</h1>
<p>Created ${esc(report.created)}. Indirect effect IE = (p[restored] − p[corrupt]) / (p[clean] − p[corrupt]) of the clean answer, averaged per token group and layer (Meng et al. 2022; Sen Sharma et al. 2024). Colour scale 0–${Math.min(1, vmax).toFixed(2)}, shared by all heatmaps.</p>
${
  report.models.length
    ? `<h2>Findings of the paper, checked</h2>
${table}
<div class="models">
${columns.join("\n")}
</div>`
    : ""
}
${extraSections.join("\n")}
</body></html>
`;
}

import type { TopLevelSpec } from "vega-lite";
import type { ColorScheme } from "vega-typings";
import type { HeatmapData, ModelTrace } from "./types.js";

/**
 * Colours per site, following ROME's figures (purples: states, greens: MLP / mixer, reds: attention /
 * SSM): the heatmap's scheme and the line plot's colour (a dark shade of the same scheme), so a site
 * has one colour on the whole page.
 */
const SITE_COLOUR: Record<string, { scheme: ColorScheme; line: string }> = {
  residual: { scheme: "purples", line: "#6a51a3" },
  embed: { scheme: "greys", line: "#525252" },
  mixer: { scheme: "greens", line: "#238b45" },
  mlp: { scheme: "greens", line: "#238b45" },
  ssm: { scheme: "reds", line: "#cb181d" },
  attn: { scheme: "reds", line: "#cb181d" },
  gate: { scheme: "blues", line: "#2171b5" },
  conv: { scheme: "oranges", line: "#d94801" },
  in_ssm: { scheme: "browns", line: "#8c510a" },
};
const OTHER = { scheme: "viridis" as ColorScheme, line: "#35b779" };
/** A per-head site label (`ssm.h3`) as its site and head. */
const splitHead = (site: string): [string, string | undefined] => {
  const m = /^(.+)\.h(\d+)$/.exec(site);
  return m ? [m[1]!, m[2]] : [site, undefined];
};
/** A head (`ssm.h3`) has its site's colour. */
export const siteColour = (site: string): { scheme: ColorScheme; line: string } => SITE_COLOUR[splitHead(site)[0]] ?? OTHER;

/** Heatmap size: wide enough to read 64 layers, rows tall enough to hover. */
export const HEATMAP_WIDTH = 520;
export const HEATMAP_ROW = 30;

const SITE_TITLE: Record<string, string> = {
  residual: "residual h",
  mixer: "mixer output o",
  ssm: "SSM output s",
  gate: "gate g",
  conv: "conv output",
  in_ssm: "a = W_a·h",
  attn: "attention",
  mlp: "MLP",
  embed: "embedding",
};

export const siteTitle = (site: string, window: number): string => {
  const [base, head] = splitHead(site);
  return `${SITE_TITLE[base] ?? base}${head === undefined ? "" : `, head ${head}`}${window > 1 ? ` (window ${window})` : ""}`;
};

/** Token-group × layer heatmap of the mean indirect effect, like the paper's figures. */
export function heatmapSpec(model: ModelTrace, h: HeatmapData, vmax: number): TopLevelSpec {
  const values = h.groups.flatMap((group, gi) =>
    h.layers.map((layer, li) => ({
      group,
      order: gi,
      layer,
      ie: h.ie[gi]?.[li] ?? null,
      aie: h.aie[gi]?.[li] ?? null,
      n: h.count[gi]?.[li] ?? 0,
    })),
  );
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: `${model.label}: ${siteTitle(h.site, h.window)}`, fontSize: 13 },
    width: HEATMAP_WIDTH,
    height: HEATMAP_ROW * h.groups.length,
    data: { values },
    // The hover text of a cell (an SVG <title>, see render.ts): its values, as the CSV has them.
    transform: [
      {
        calculate: `datum.group + ", layer " + datum.layer + ": IE " + (datum.ie === null ? "n/a" : format(datum.ie, ".3f")) + ", AIE " + (datum.aie === null ? "n/a" : format(datum.aie, ".4f")) + ", " + datum.n + " cells"`,
        as: "hover",
      },
    ],
    mark: { type: "rect" },
    encoding: {
      x: {
        field: "layer",
        type: "ordinal",
        title: h.window > 1 ? "centre of restored layers" : "layer",
        axis: { labelAngle: 0, labelOverlap: "greedy" },
      },
      y: { field: "group", type: "nominal", title: null, sort: h.groups },
      color: {
        field: "ie",
        type: "quantitative",
        title: "IE",
        scale: { scheme: siteColour(h.site).scheme, domain: [0, vmax], clamp: true },
      },
      description: { field: "hover", type: "nominal" },
    },
  };
}

/** IE against layer for one token row (last subject token or last token), one line per site. */
export function lineSpec(model: ModelTrace, rowLabel: string, which: RegExp): TopLevelSpec | undefined {
  const values = model.heatmaps.flatMap((h) => {
    const gi = h.groups.findIndex((g) => which.test(g));
    if (gi < 0) return [];
    return h.layers.map((layer, li) => ({ site: siteTitle(h.site, h.window), layer, ie: h.ie[gi]?.[li] ?? null }));
  });
  if (values.length === 0) return undefined;
  const series = model.heatmaps.filter((h) => h.groups.some((g) => which.test(g)));
  const maxLayer = Math.max(...values.map((v) => v.layer));
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: `${model.label}: ${rowLabel}`, fontSize: 13 },
    width: HEATMAP_WIDTH,
    height: 200,
    data: { values },
    mark: { type: "line", point: true },
    encoding: {
      // Layers are integers: ticks on whole layers only, at most ~16 of them.
      x: {
        field: "layer",
        type: "quantitative",
        title: "layer (window centre)",
        scale: { domain: [0, maxLayer] },
        axis: { format: "d", tickMinStep: Math.max(1, Math.ceil(maxLayer / 16)) },
      },
      y: { field: "ie", type: "quantitative", title: "mean IE" },
      // The legend below the plot, labels never cut (labelLimit 0: no limit), colours as the heatmaps'.
      color: {
        field: "site",
        type: "nominal",
        title: "site",
        scale: { domain: series.map((h) => siteTitle(h.site, h.window)), range: series.map((h) => siteColour(h.site).line) },
        legend: { orient: "bottom", direction: "vertical", labelLimit: 0, columns: 2 },
      },
    },
  };
}

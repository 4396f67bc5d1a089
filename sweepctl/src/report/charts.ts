import type { TopLevelSpec } from "vega-lite";
import type { ColorScheme } from "vega-typings";
import type { HeatmapData, ModelTrace } from "./types.js";

/** Colour scheme per site, following ROME's figures (Purples: states, Greens: MLP, Reds: attention). */
const SCHEME: Record<string, ColorScheme> = {
  residual: "purples",
  embed: "purples",
  mixer: "greens",
  mlp: "greens",
  ssm: "reds",
  attn: "reds",
  gate: "blues",
  conv: "oranges",
  in_ssm: "oranges",
};

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

export const siteTitle = (site: string, window: number): string => `${SITE_TITLE[site] ?? site}${window > 1 ? ` (window ${window})` : ""}`;

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
    width: Math.max(160, 14 * h.layers.length),
    height: 22 * h.groups.length,
    data: { values },
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
        scale: { scheme: SCHEME[h.site] ?? ("viridis" as ColorScheme), domain: [0, vmax], clamp: true },
      },
      tooltip: [
        { field: "group", type: "nominal" },
        { field: "layer", type: "ordinal" },
        { field: "ie", type: "quantitative", format: ".3f" },
        { field: "aie", type: "quantitative", format: ".4f", title: "AIE" },
        { field: "n", type: "quantitative", title: "cells" },
      ],
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
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: `${model.label}: ${rowLabel}`, fontSize: 13 },
    width: 320,
    height: 180,
    data: { values },
    mark: { type: "line", point: true },
    encoding: {
      x: { field: "layer", type: "quantitative", title: "layer (window centre)" },
      y: { field: "ie", type: "quantitative", title: "mean IE" },
      color: { field: "site", type: "nominal", title: "site", legend: { labelLimit: 240 } },
    },
  };
}

import type { ResultAggregator } from "./aggregator.js";
import type { TokenGroup } from "./token-groups.js";

/** Display names of the token groups (ROME's rows; romba's in addition). */
export const GROUP_LABELS: Record<TokenGroup, string> = {
  prefix: "prefix",
  subject_first: "first subject token",
  subject_middle: "middle subject tokens",
  subject_early: "subject tokens before the 2nd-last",
  subject_2nd_last: "2nd-last subject token",
  subject_last: "last subject token",
  first_subsequent: "first subsequent token",
  further: "further tokens",
  last: "last token",
};

export interface TraceMeta {
  label: string;
  modelType: string;
  sweepId: string;
  corruption: string;
  /** Prompt errors of the sweep (skipped prompts), grouped into reasons by the caller or here. */
  promptErrors?: { message: string }[];
  /** The sweep's state when the view was made ("running", "done", …); a view of a sweep not `done` is partial. */
  state?: string;
  /** The spec's `findings` flag: check the paper's findings (true), not (false), or by model type (undefined). */
  findings?: boolean;
}

/** Per-fact values kept in a view at most (facts × layers × grids × 2 rows); above it the bootstrap is left out. */
export const MAX_FACT_VALUES = 250_000;

/** Rows of the token groups the findings read (last subject token, last token), per fact, for bootstrap intervals. */
const FACT_GROUPS: TokenGroup[] = ["subject_last", "last"];

const round = (v: number | null): number | null => (v === null ? null : Math.round(v * 1e4) / 1e4);

/** Collapses per-prompt error messages into reasons with counts ("subject not found" × 3). */
export function promptErrorReasons(errors: { message: string }[]): { reason: string; count: number }[] {
  const counts = new Map<string, number>();
  for (const e of errors) {
    // Messages name the prompt's subject or ids; keep the part before the first quote or colon as the reason.
    const reason = e.message.replace(/"[^"]*"|'[^']*'|\[[^\]]*\]|\d+/g, "…").trim();
    counts.set(reason, (counts.get(reason) ?? 0) + 1);
  }
  return [...counts].map(([reason, count]) => ({ reason, count })).sort((a, b) => b.count - a.count);
}

/** The report's view of one finished trace sweep, from its aggregator (live or saved). */
export function modelTrace(agg: ResultAggregator, meta: TraceMeta): ModelTrace {
  const summary = agg.summary();
  const grids = agg.grids();
  const perFact: FactRows[] = [];
  if (summary.prompts * grids.length * FACT_GROUPS.length * Math.max(1, ...grids.map((g) => agg.heatmap(g.site, g.window).layers.length)) <= MAX_FACT_VALUES) {
    for (const { site, window } of grids)
      for (const g of FACT_GROUPS) {
        const r = agg.factRows(site, window, g);
        if (r.prompts.length) perFact.push({ site, window, group: GROUP_LABELS[g], layers: r.layers, ie: r.ie.map((row) => row.map(round)) });
      }
  }
  return {
    label: meta.label,
    modelType: meta.modelType,
    sweepId: meta.sweepId,
    corruption: meta.corruption,
    facts: summary.prompts,
    plannedFacts: agg.plannedPrompts,
    ...(meta.state ? { state: meta.state } : {}),
    ...(meta.findings !== undefined ? { findings: meta.findings } : {}),
    ...(perFact.length ? { perFact } : {}),
    skipped: promptErrorReasons(meta.promptErrors ?? []),
    heatmaps: agg.grids().map(({ site, window }) => {
      const h = agg.heatmap(site, window);
      return {
        site,
        window,
        groups: h.groups.map((g) => GROUP_LABELS[g] ?? g),
        layers: h.layers,
        ie: h.meanIE,
        aie: h.aie,
        count: h.counts,
      };
    }),
  };
}

/** Average effects of one (site, window) as a token-group × layer grid. */
export interface HeatmapData {
  site: string;
  window: number;
  /** Row labels, in display order (ROME's six groups by default). */
  groups: string[];
  /** Column labels: centre layer of the restored window. */
  layers: number[];
  /** Mean indirect effect (p − p*) / (p_clean − p*), [group][layer]; null where no cell fell. */
  ie: (number | null)[][];
  /** ROME's unnormalised average indirect effect mean(p) − mean(p*), [group][layer]. */
  aie: (number | null)[][];
  /** Number of cells averaged, [group][layer]. */
  count: number[][];
}

/** One token group's IE per fact for (site, window): ie[fact][layer]; what a bootstrap over facts resamples. */
export interface FactRows {
  site: string;
  window: number;
  /** Display label of the group (GROUP_LABELS), as in the heatmap's rows. */
  group: string;
  layers: number[];
  ie: (number | null)[][];
}

export interface ModelTrace {
  /** Display label, e.g. "mamba-facts". */
  label: string;
  /** "mamba" | "mamba2" | "gpt_neox". */
  modelType: string;
  sweepId: string;
  /** "swap" | "noise". */
  corruption: string;
  /** Prompts whose results are averaged. */
  facts: number;
  /** Prompts the sweep planned; `facts < plannedFacts` or a `state` other than "done" means the view is partial. */
  plannedFacts?: number;
  /** The sweep's state when the view was made; absent in views saved before it was recorded. */
  state?: string;
  /** The spec's `findings` flag (see TraceMeta). */
  findings?: boolean;
  /** Per-fact rows of the last-subject-token and last-token groups (absent when over MAX_FACT_VALUES or restored without cells). */
  perFact?: FactRows[];
  /** Prompts skipped (subject not found, no swap partner, too long), with the reason counts. */
  skipped: { reason: string; count: number }[];
  heatmaps: HeatmapData[];
}

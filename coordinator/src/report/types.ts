/** Input of the tracing report: aggregated indirect effects, one entry per traced model. */

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

export interface ModelTrace {
  /** Display label, e.g. "mamba-facts". */
  label: string;
  /** "mamba" | "gpt_neox". */
  modelType: string;
  sweepId: string;
  /** "swap" | "noise". */
  corruption: string;
  /** Prompts whose results are averaged. */
  facts: number;
  /** Prompts skipped (subject not found, no swap partner, too long), with the reason counts. */
  skipped: { reason: string; count: number }[];
  heatmaps: HeatmapData[];
}

export interface TraceReport {
  title: string;
  /** ISO timestamp. */
  created: string;
  models: ModelTrace[];
}

/** One of the paper's findings checked against a model's measured effects. */
export interface Finding {
  model: string;
  claim: string;
  /** What the paper reports (published numbers, cited as such). */
  paper: string;
  /** What this sweep measured. */
  measured: string;
  /** null when the sweep lacks the sites needed to check the claim. */
  reproduced: boolean | null;
}

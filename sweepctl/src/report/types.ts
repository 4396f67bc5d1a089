/** Input of the tracing report: aggregated indirect effects, one entry per traced model. */
import type { HeatmapData, ModelTrace } from "@factsweep/planning";
export type { HeatmapData, ModelTrace };

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

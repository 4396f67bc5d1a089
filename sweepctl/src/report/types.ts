/** Input of the tracing report: aggregated indirect effects, one entry per traced model. */
import type { HeatmapData, ModelTrace } from "@factsweep/planning";
export type { HeatmapData, ModelTrace };

export interface TraceReport {
  title: string;
  /** ISO timestamp. */
  created: string;
  models: ModelTrace[];
}

/**
 * A finding's verdict: "reproduced" / "not reproduced" only on a finished sweep with enough facts
 * and layers, when the rule holds (fails) on all facts and in ≥ 95% (≤ 5%) of bootstrap resamples.
 */
export type Verdict = "reproduced" | "not reproduced" | "inconclusive" | "too few facts" | "too few layers" | "partial" | "not checked";

/** One of the paper's findings checked against a model's measured effects. */
export interface Finding {
  model: string;
  claim: string;
  /** What the paper reports (published numbers, cited as such). */
  paper: string;
  /** The rule applied, with its thresholds, in words. */
  rule: string;
  /** What this sweep measured (the peaks the rule compares). */
  measured: string;
  /** Facts (prompts) and traced layers the check saw. */
  facts: number;
  layers: number;
  verdict: Verdict;
  /** Why no verdict, or what is missing. */
  note?: string;
  /** Share of bootstrap resamples of the facts in which the rule held. */
  support?: number;
  /** Bootstrap interval of each peak the rule compares. */
  intervals?: Record<string, [number, number]>;
}

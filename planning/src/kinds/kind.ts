/**
 * What an experiment kind is: one object implementing {@link SweepKindModule}, in one file under
 * kinds/ (trace.ts, knockout.ts, sever.ts, lre.ts, edit.ts), listed once in kinds/index.ts. Spec
 * parsing, planSweep, shardUnits, KindAggregator, kindCsvColumns and sweepctl's report dispatch
 * through that registry; the engine side of a kind is engine/experiments/<kind>.py.
 */
import type { sweep } from "@factsweep/proto";
import type { z } from "zod";
import type { ResultError } from "../errors.js";
import type { PlanLimits } from "../limits.js";
import type { ModelConfig } from "../model-config.js";
import type { PlanError } from "../prompts.js";
import type { BaseSpec } from "../spec-base.js";
import type { PromptTokenizer } from "../tokenizer.js";
import type { TraceLayers } from "./edit-trace.js";

/** A spec as a kind sees it: the common fields and the kind's own (`Fields`). */
export type SpecOf<Fields extends z.ZodRawShape> = BaseSpec & z.output<z.ZodObject<Fields>>;

/** What the kind planners need (resolved by planSweep). */
export interface KindPlanContext<S extends BaseSpec = BaseSpec> {
  spec: S;
  sweepId: string;
  modelConfig: ModelConfig;
  model: sweep.ModelRef;
  tokenizer: PromptTokenizer | null;
  /** The sweep's caps (cells, shards, tokens per prompt, file sizes). */
  limits: PlanLimits;
  /** `layers: { from_trace }` resolved (kind edit): the trace's peaks per fact. */
  traceLayers?: TraceLayers;
}

/** Shards in plan order, their number known before any is made (an array, or made as iterated). */
export interface ShardList extends Iterable<sweep.Shard> {
  readonly length: number;
}

/** The plan of a sweep of one kind (`plannedCells` counts the kind's work units). */
export interface KindPlan<Shards extends ShardList = sweep.Shard[]> {
  prompts: sweep.PromptSpec[];
  promptErrors: PlanError[];
  shards: Shards;
  plannedCells: number;
}

/** One exported row: flat, snake_case. */
export type KindRow = Record<string, string | number | boolean | null>;

/** Options of a kind's aggregation (and of {@link KindAggregator}). */
export interface KindAggregatorOptions<S extends BaseSpec = BaseSpec> {
  sweepId: string;
  spec: S;
  prompts: sweep.PromptSpec[];
  modelType: string;
  numLayers: number;
  /** `layers: { from_trace }` resolved (kind edit): each row gets its fact's peak, the summary the trace curve. */
  traceLayers?: TraceLayers;
}

/** Where a shard result being folded belongs. */
export interface FoldTarget {
  shardId: string;
  prompt: sweep.PromptSpec;
  /** The shard id's last number (the kind's own order of the prompt's shards). */
  part: number;
  /** The error for a result_json that lacks `what`. */
  bad(what: string): ResultError;
}

/** A kind's running aggregate: folds one shard's `result_json` in (returning its rows), summarises. */
export interface KindFold<Summary> {
  fold(result: Record<string, unknown>, at: FoldTarget): KindRow[];
  summary(): Summary;
}

/** One axis of a chart: the field drawn and its title. */
export interface ChartAxis {
  field: string;
  /** Default: the field's name. */
  title?: string;
  /** Fixed scale domain. */
  domain?: [number, number];
}

/** A chart the report draws, declaratively (sweepctl/src/report/kinds.ts turns it into Vega-Lite). */
export type ChartView =
  /** Lines of `y` over `x` (quantitative), one per `color` value; small multiples per `facet`. */
  | { mark: "line"; title: string; values: object[]; x: ChartAxis; y: ChartAxis; color: string; facet?: string }
  /** Horizontal bars of `x` per `y` category (sorted by value), grouped and coloured by `group`. */
  | { mark: "bar"; title: string; values: object[]; x: ChartAxis; y: string; group: string }
  /** A heatmap of `color` over ordinal `x` (sorted by `x.sort`) and `y` (descending). */
  | { mark: "rect"; title: string; values: object[]; x: ChartAxis & { sort: string }; y: ChartAxis; color: ChartAxis };

/** What the report draws for a kind: one section, the models side by side (Mamba first). */
export interface KindReport<Summary> {
  heading: string;
  /** The section's explanation (trusted HTML, constant). */
  intro: string;
  /** A line per model under the intro (text). */
  note?(summary: Summary): string;
  /** Rows of charts; each row has one chart per model (null: none for this summary). `label` is "<model> (<architecture>)". */
  charts: ((summary: Summary, label: string) => ChartView | null)[];
  /** A table of every model's values (after a `model` column). */
  table?: { head: string[]; rows(summary: Summary): (string | number)[][] };
}

/**
 * An experiment kind as a plug-in. `Fields` are the spec fields it owns (zod): a section named
 * after the kind, or (trace) top-level fields; `Summary` is its part of the aggregate.
 */
export interface SweepKindModule<Name extends string = string, Fields extends z.ZodRawShape = z.ZodRawShape, Summary = unknown> {
  readonly name: Name;
  /** Spec fields of this kind, merged into the sweep spec schema. */
  readonly specFields: Fields;
  /** The kind's section schema (its defaults are filled in when the spec selects the kind); trace has none. */
  readonly section?: z.ZodObject;
  /** Checks the kind's fields that are present in a spec against the model (every spec, before planning). */
  check?(spec: SpecOf<Fields>, model: ModelConfig): void;
  /** Resolves the section's file paths against the spec's folder (after defaults). */
  resolvePaths?(spec: SpecOf<Fields>, resolvePath: (p: string) => string): void;
  /** Prompts → shards (`params_json` in the engine's schema). @throws SpecError for values the model cannot take. */
  plan(ctx: KindPlanContext<SpecOf<Fields>>): KindPlan;
  /** As `plan`, the shards made again per prompt as they are iterated (trace: a million at once were 346 bytes each). */
  planLazy?(ctx: KindPlanContext<SpecOf<Fields>>): KindPlan<ShardList>;
  /** Work units of one shard, for progress (trace: cells; the others: the experiment's rows). */
  units(shard: Pick<sweep.Shard, "cells" | "paramsJson">): number;
  /** CSV columns of the kind's exported rows (after sweep_id, model, kind). */
  readonly columns: readonly string[];
  /** The kind's aggregation of `result_json` (trace aggregates cells with ResultAggregator instead). */
  aggregate?(opts: KindAggregatorOptions<SpecOf<Fields>>, prompts: ReadonlyMap<number, sweep.PromptSpec>): KindFold<Summary>;
  /** What the report draws from the kind's summary (trace: sweepctl's trace report over modelTrace). */
  readonly report?: KindReport<Summary>;
}

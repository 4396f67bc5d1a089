/**
 * Aggregation of the experiment kinds' shard results (`ShardResult.result_json`), incremental and
 * idempotent by shard id, as {@link ResultAggregator} does for tracing:
 *
 * - knockout: mean relative change (p_knocked − p)/p per (token set, window centre);
 * - sever: mean recovery (p − p*)/(p_clean − p*) per (path, token selector, layer);
 * - lre: faithfulness per (relation, layer, β), averaged over trials;
 * - edit: ES/PS/NS (and EM/PM/NM) per (matrix, layer); S = harmonic mean of the mean ES, PS, NS (ROME's summarize).
 *
 * The aggregate itself is sums and counts ({@link KindAggregator.summary}); per-shard rows are kept
 * for the results export ({@link KindAggregator.rows}).
 */
import type { control, sweep } from "@factsweep/proto";
import { indirectEffect } from "../effects.js";
import { ResultError } from "../errors.js";
import type { SweepSpec } from "../spec.js";
import { lreLayers, severCells, type SeverCell } from "./plan.js";
import type { ExperimentKind } from "./spec.js";

/** File `sweepctl local` writes a kind sweep's {@link KindAggregate} to (beside results.csv). */
export const KIND_AGGREGATE_FILE = "kind.json";

/** One exported row: flat, snake_case. */
export type KindRow = Record<string, string | number | boolean | null>;

/** Mean and count of one aggregated value. */
export interface MeanN {
  mean: number | null;
  n: number;
}

/** The aggregate of an experiment-kind sweep (what reports draw). Fractions are 0..1. */
export interface KindAggregate {
  kind: ExperimentKind;
  sweepId: string;
  model: string;
  modelType: string;
  numLayers: number;
  shards: number;
  knockout?: { window: number; points: { token_set: string; layer: number; relative_change: number | null; n: number }[] };
  sever?: { points: { path: string; token: string; layer: number; recovery: number | null; n: number }[] };
  lre?: {
    betas: number[];
    points: { relation: string; layer: number; beta: number; faithfulness: number | null; trials: number }[];
    /** Per relation: its best (layer, β). */
    best: { relation: string; layer: number; beta: number; faithfulness: number | null }[];
    /** The single (layer, β) with the highest mean faithfulness over relations, and each relation's value there. */
    overall: { layer: number; beta: number; mean: number | null; relations: { relation: string; faithfulness: number | null }[] } | null;
  };
  edit?: { points: EditPoint[] };
}

/** Edit scores of one (matrix, layer), post-edit unless prefixed `pre_`. */
export interface EditPoint {
  matrix: string;
  layer: number;
  cases: number;
  ES: number | null;
  PS: number | null;
  NS: number | null;
  S: number | null;
  EM: number | null;
  PM: number | null;
  NM: number | null;
  pre_ES: number | null;
  pre_PS: number | null;
  pre_NS: number | null;
  entropy: number | null;
}

class Sums {
  private m = new Map<string, { sum: number; n: number }>();
  add(key: string, v: number | null | undefined): void {
    if (v === null || v === undefined || !Number.isFinite(v)) return;
    const e = this.m.get(key) ?? { sum: 0, n: 0 };
    e.sum += v;
    e.n += 1;
    this.m.set(key, e);
  }
  get(key: string): MeanN {
    const e = this.m.get(key);
    return e && e.n > 0 ? { mean: e.sum / e.n, n: e.n } : { mean: null, n: 0 };
  }
  keys(): string[] {
    return [...this.m.keys()];
  }
}

const harmonic = (xs: (number | null)[]): number | null => {
  const v = xs.filter((x): x is number => x !== null);
  if (v.length !== xs.length || v.length === 0) return null;
  return v.some((x) => x === 0) ? 0 : v.length / v.reduce((s, x) => s + 1 / x, 0);
};

/** Options of {@link KindAggregator}. */
export interface KindAggregatorOptions {
  sweepId: string;
  spec: SweepSpec;
  prompts: sweep.PromptSpec[];
  modelType: string;
  numLayers: number;
}

/** Folds experiment results into per-kind means; `add` is idempotent by shard id. */
export class KindAggregator {
  readonly kind: ExperimentKind;
  private readonly shardRows = new Map<string, KindRow[]>();
  private readonly prompts = new Map<number, sweep.PromptSpec>();
  private readonly sums = new Sums();
  private knockoutWindow = 0;
  private readonly severCache = new Map<number, SeverCell[]>();

  constructor(private readonly opts: KindAggregatorOptions) {
    this.kind = opts.spec.kind as ExperimentKind;
    for (const p of opts.prompts) this.prompts.set(p.index, p);
  }

  /** Shards folded in so far. */
  get shardCount(): number {
    return this.shardRows.size;
  }

  has(shardId: string): boolean {
    return this.shardRows.has(shardId);
  }

  /**
   * Folds one shard result in; false when this shard was already added.
   * @throws ResultError for a result that does not belong to this sweep's plan.
   */
  add(result: sweep.ShardResult): boolean {
    if (this.shardRows.has(result.shardId)) return false;
    const prompt = this.prompts.get(result.promptIndex);
    if (!prompt) throw new ResultError(`shard ${result.shardId}: prompt index ${result.promptIndex} is not a prompt of sweep ${this.opts.sweepId}`, result.shardId);
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(result.resultJson) as Record<string, unknown>;
    } catch (err) {
      throw new ResultError(`shard ${result.shardId}: result_json is not JSON (${(err as Error).message})`, result.shardId, { cause: err });
    }
    const part = Number(/\.(\d+)$/.exec(result.shardId)?.[1] ?? 0);
    const rows = this.fold(result, prompt, part, r);
    this.shardRows.set(result.shardId, rows);
    return true;
  }

  private fold(result: sweep.ShardResult, prompt: sweep.PromptSpec, part: number, r: Record<string, unknown>): KindRow[] {
    const base = { prompt_index: prompt.index, relation: prompt.relation, subject: prompt.subject };
    const bad = (what: string) => new ResultError(`shard ${result.shardId}: result_json has no ${what} (is the engine's ${this.kind} result schema the one this coordinator knows?)`, result.shardId);
    switch (this.kind) {
      case "knockout": {
        const rows = r.rows as { layer: number; token_set: string; p_knocked: number; relative_change: number }[] | undefined;
        if (!Array.isArray(rows)) throw bad("rows");
        this.knockoutWindow = Number(r.window ?? 0);
        return rows.map((x) => {
          this.sums.add(`${x.token_set}|${x.layer}`, x.relative_change);
          return { ...base, token_set: x.token_set, layer: x.layer, window: Number(r.window), p: Number(r.p), p_knocked: x.p_knocked, relative_change: x.relative_change };
        });
      }
      case "sever": {
        const p = r.p as number[] | undefined;
        if (!Array.isArray(p)) throw bad("p");
        const cells = this.severCellsOf(prompt).slice(part * this.opts.spec.shard_cells, (part + 1) * this.opts.spec.shard_cells);
        if (cells.length !== p.length) throw new ResultError(`shard ${result.shardId}: ${p.length} sever results for ${cells.length} planned cells`, result.shardId);
        const pClean = Number(r.p_clean);
        const pCorrupt = Number(r.p_corrupt);
        return cells.map((c, i) => {
          const recovery = indirectEffect(p[i]!, pCorrupt, pClean);
          this.sums.add(`${c.path}|${c.selector}|${c.layer}`, recovery);
          return { ...base, token: c.token, token_selector: c.selector, layer: c.layer, path: c.path, p: p[i]!, p_clean: pClean, p_corrupt: pCorrupt, recovery };
        });
      }
      case "lre": {
        const f = r.faithfulness as (number | null)[] | undefined;
        const betas = r.betas as number[] | undefined;
        if (!Array.isArray(f) || !Array.isArray(betas)) throw bad("faithfulness and betas");
        const trial = part % this.opts.spec.lre!.trials;
        return betas.map((beta, i) => {
          this.sums.add(`${prompt.relation}|${r.layer}|${beta}`, f[i]);
          return { relation: prompt.relation, layer: Number(r.layer), trial, beta, faithfulness: f[i] ?? null, n_test: Number(r.n_test), n_test_correct: Number(r.n_test_correct), n_train: Number(r.n_train) };
        });
      }
      case "edit": {
        const post = r.post as Record<string, number | null> & { generation?: { entropy?: number } | null } | undefined;
        const pre = r.pre as Record<string, number | null> | undefined;
        if (!post || !pre) throw bad("pre/post evaluation");
        const key = `${r.matrix}|${r.layer}`;
        for (const m of ["ES", "PS", "NS", "EM", "PM", "NM"]) this.sums.add(`${key}|${m}`, post[m]);
        for (const m of ["ES", "PS", "NS"]) this.sums.add(`${key}|pre_${m}`, pre[m]);
        this.sums.add(`${key}|entropy`, post.generation?.entropy ?? null);
        this.sums.add(`${key}|cases`, 1);
        return [{
          case: prompt.index, relation: prompt.relation, subject: prompt.subject, matrix: String(r.matrix), layer: Number(r.layer), ES: post.ES ?? null, PS: post.PS ?? null, NS: post.NS ?? null, S: post.S ?? null,
          EM: post.EM ?? null, PM: post.PM ?? null, NM: post.NM ?? null, pre_ES: pre.ES ?? null, pre_PS: pre.PS ?? null, pre_NS: pre.NS ?? null,
          entropy: post.generation?.entropy ?? null, restored: r.restored === true,
        }];
      }
    }
  }

  private severCellsOf(prompt: sweep.PromptSpec): SeverCell[] {
    let c = this.severCache.get(prompt.index);
    if (!c) {
      c = severCells(this.opts.spec, prompt, this.opts.modelType, this.opts.numLayers);
      this.severCache.set(prompt.index, c);
    }
    return c;
  }

  /** The aggregate: means per kind's axes (see {@link KindAggregate}). */
  summary(): KindAggregate {
    const o = this.opts;
    const out: KindAggregate = { kind: this.kind, sweepId: o.sweepId, model: o.spec.model.id, modelType: o.modelType, numLayers: o.numLayers, shards: this.shardRows.size };
    const split = (k: string) => k.split("|");
    if (this.kind === "knockout") {
      out.knockout = {
        window: this.knockoutWindow || o.spec.knockout!.window,
        points: this.sums.keys().map((k) => {
          const [set, layer] = split(k);
          const m = this.sums.get(k);
          return { token_set: set!, layer: Number(layer), relative_change: m.mean, n: m.n };
        }).sort((a, b) => a.token_set.localeCompare(b.token_set) || a.layer - b.layer),
      };
    } else if (this.kind === "sever") {
      out.sever = {
        points: this.sums.keys().map((k) => {
          const [path, token, layer] = split(k);
          const m = this.sums.get(k);
          return { path: path!, token: token!, layer: Number(layer), recovery: m.mean, n: m.n };
        }).sort((a, b) => a.path.localeCompare(b.path) || a.token.localeCompare(b.token) || a.layer - b.layer),
      };
    } else if (this.kind === "lre") {
      const l = o.spec.lre!;
      const relations = [...new Set([...this.prompts.values()].map((p) => p.relation))];
      const layers = lreLayers(o.spec, o.numLayers);
      const points = relations.flatMap((relation) => layers.flatMap((layer) => l.betas.map((beta) => {
        const m = this.sums.get(`${relation}|${layer}|${beta}`);
        return { relation, layer, beta, faithfulness: m.mean, trials: m.n };
      })));
      const best = relations.map((relation) => {
        const mine = points.filter((p) => p.relation === relation && p.faithfulness !== null);
        const b = mine.reduce<(typeof mine)[number] | undefined>((acc, p) => (!acc || p.faithfulness! > acc.faithfulness! ? p : acc), undefined);
        return { relation, layer: b?.layer ?? NaN, beta: b?.beta ?? NaN, faithfulness: b?.faithfulness ?? null };
      });
      let overall: NonNullable<KindAggregate["lre"]>["overall"] = null;
      for (const layer of layers) {
        for (const beta of l.betas) {
          const here = relations.map((relation) => ({ relation, faithfulness: points.find((p) => p.relation === relation && p.layer === layer && p.beta === beta)?.faithfulness ?? null }));
          const vals = here.map((h) => h.faithfulness).filter((x): x is number => x !== null);
          const mean = vals.length ? vals.reduce((s, x) => s + x, 0) / vals.length : null;
          if (mean !== null && (!overall || overall.mean === null || mean > overall.mean)) overall = { layer, beta, mean, relations: here };
        }
      }
      out.lre = { betas: l.betas, points, best, overall };
    } else {
      const keys = new Set(this.sums.keys().map((k) => split(k).slice(0, 2).join("|")));
      out.edit = {
        points: [...keys].map((key) => {
          const [matrix, layer] = split(key);
          const g = (m: string) => this.sums.get(`${key}|${m}`).mean;
          const [ES, PS, NS] = [g("ES"), g("PS"), g("NS")];
          return {
            matrix: matrix!, layer: Number(layer), cases: this.sums.get(`${key}|cases`).n, ES, PS, NS, S: harmonic([ES, PS, NS]), EM: g("EM"), PM: g("PM"), NM: g("NM"),
            pre_ES: g("pre_ES"), pre_PS: g("pre_PS"), pre_NS: g("pre_NS"), entropy: g("entropy"),
          };
        }).sort((a, b) => a.matrix.localeCompare(b.matrix) || a.layer - b.layer),
      };
    }
    return out;
  }

  /** Per-shard rows as result rows of the Results RPC (`kind` + `fields_json`), in shard order. */
  *rows(): Iterable<control.ResultRow> {
    const o = this.opts;
    const ids = [...this.shardRows.keys()].sort((a, b) => {
      const pa = a.split(".").slice(-2).map(Number);
      const pb = b.split(".").slice(-2).map(Number);
      return pa[0]! - pb[0]! || pa[1]! - pb[1]!;
    });
    for (const id of ids) {
      for (const row of this.shardRows.get(id)!) {
        yield {
          sweepId: o.sweepId, model: o.spec.model.id, promptIndex: Number(row.prompt_index ?? row.case ?? 0), subject: String(row.subject ?? ""), site: "", layer: Math.max(0, Number(row.layer ?? 0)),
          token: Number(row.token ?? 0), window: 0, tokenGroup: "", p: 0, pClean: 0, pCorrupt: 0, ie: 0, corruption: "", kind: this.kind, fieldsJson: JSON.stringify({ shard_id: id, ...row }),
        };
      }
    }
  }

  /** The aggregate as JSON (small: means and counts), e.g. for `sweepctl local`'s kinds.json. */
  toJSON(): KindAggregate {
    return this.summary();
  }
}

/** CSV columns of each kind's exported rows (after sweep_id, model, kind). */
export const KIND_COLUMNS: Record<ExperimentKind, readonly string[]> = {
  knockout: ["shard_id", "prompt_index", "relation", "subject", "token_set", "layer", "window", "p", "p_knocked", "relative_change"],
  sever: ["shard_id", "prompt_index", "relation", "subject", "token", "token_selector", "layer", "path", "p", "p_clean", "p_corrupt", "recovery"],
  lre: ["shard_id", "relation", "layer", "trial", "beta", "faithfulness", "n_test", "n_test_correct", "n_train"],
  edit: ["shard_id", "case", "relation", "subject", "matrix", "layer", "ES", "PS", "NS", "S", "EM", "PM", "NM", "pre_ES", "pre_PS", "pre_NS", "entropy", "restored"],
};

/** A kind row (a ResultRow with `fields_json`) as a flat snake_case record. */
export function kindRowRecord(r: Pick<control.ResultRow, "sweepId" | "model" | "kind" | "fieldsJson">): KindRow {
  return { sweep_id: r.sweepId, model: r.model, kind: r.kind, ...(JSON.parse(r.fieldsJson || "{}") as KindRow) };
}

/** CSV header of a kind's rows. */
export function kindCsvColumns(kind: string): readonly string[] {
  return ["sweep_id", "model", "kind", ...(KIND_COLUMNS[kind as ExperimentKind] ?? [])];
}

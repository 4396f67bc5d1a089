/**
 * Aggregation of the experiment kinds' shard results (`ShardResult.result_json`), incremental and
 * idempotent by shard id, as {@link ResultAggregator} does for tracing. What a kind folds and
 * summarises is its module's `aggregate` (kinds/<kind>.ts); this class keeps the shards, their
 * rows for the results export ({@link KindAggregator.rows}) and the {@link KindAggregate}.
 */
import type { control, sweep } from "@factsweep/proto";
import { ResultError } from "../errors.js";
import { experimentKindModule, EXPERIMENT_KIND_MODULES, type ExperimentKind, type KindSummaries } from "./index.js";
import type { KindAggregatorOptions, KindFold, KindRow } from "./kind.js";

/** File `sweepctl local` writes a kind sweep's {@link KindAggregate} to (beside results.csv). */
export const KIND_AGGREGATE_FILE = "kind.json";

/** The aggregate of an experiment-kind sweep (what reports draw): the kind's summary under its name. Fractions are 0..1. */
export type KindAggregate = {
  kind: ExperimentKind;
  sweepId: string;
  model: string;
  modelType: string;
  numLayers: number;
  shards: number;
} & Partial<KindSummaries>;

/** Folds experiment results into per-kind means; `add` is idempotent by shard id. */
export class KindAggregator {
  readonly kind: ExperimentKind;
  private readonly shardRows = new Map<string, KindRow[]>();
  private readonly prompts = new Map<number, sweep.PromptSpec>();
  private readonly folder: KindFold<unknown>;

  constructor(private readonly opts: KindAggregatorOptions) {
    const m = experimentKindModule(opts.spec.kind);
    if (!m)
      throw new RangeError(`Expected an experiment kind (${EXPERIMENT_KIND_MODULES.map((k) => k.name).join(", ")}), got ${JSON.stringify(opts.spec.kind)}`);
    this.kind = m.name;
    for (const p of opts.prompts) this.prompts.set(p.index, p);
    this.folder = (m.aggregate as (o: KindAggregatorOptions, p: ReadonlyMap<number, sweep.PromptSpec>) => KindFold<unknown>)(opts, this.prompts);
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
    if (!prompt)
      throw new ResultError(`shard ${result.shardId}: prompt index ${result.promptIndex} is not a prompt of sweep ${this.opts.sweepId}`, result.shardId);
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(result.resultJson) as Record<string, unknown>;
    } catch (err) {
      throw new ResultError(`shard ${result.shardId}: result_json is not JSON (${(err as Error).message})`, result.shardId, { cause: err });
    }
    const part = Number(/\.(\d+)$/.exec(result.shardId)?.[1] ?? 0);
    const bad = (what: string) =>
      new ResultError(
        `shard ${result.shardId}: result_json has no ${what} (is the engine's ${this.kind} result schema the one this coordinator knows?)`,
        result.shardId,
      );
    const rows = this.folder.fold(r, { shardId: result.shardId, prompt, part, bad });
    this.shardRows.set(result.shardId, rows);
    return true;
  }

  /** The aggregate: means per kind's axes (see {@link KindAggregate}). */
  summary(): KindAggregate {
    const o = this.opts;
    return {
      kind: this.kind,
      sweepId: o.sweepId,
      model: o.spec.model.id,
      modelType: o.modelType,
      numLayers: o.numLayers,
      shards: this.shardRows.size,
      [this.kind]: this.folder.summary(),
    };
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
          sweepId: o.sweepId,
          model: o.spec.model.id,
          promptIndex: Number(row.prompt_index ?? row.case ?? 0),
          subject: String(row.subject ?? ""),
          site: "",
          layer: Math.max(0, Number(row.layer ?? 0)),
          token: Number(row.token ?? 0),
          window: 0,
          tokenGroup: "",
          p: 0,
          pClean: 0,
          pCorrupt: 0,
          ie: 0,
          corruption: "",
          kind: this.kind,
          fieldsJson: JSON.stringify({ shard_id: id, ...row }),
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
export const KIND_COLUMNS = Object.fromEntries(EXPERIMENT_KIND_MODULES.map((k) => [k.name, k.columns])) as Record<ExperimentKind, readonly string[]>;

/** A kind row (a ResultRow with `fields_json`) as a flat snake_case record. */
export function kindRowRecord(r: Pick<control.ResultRow, "sweepId" | "model" | "kind" | "fieldsJson">): KindRow {
  return { sweep_id: r.sweepId, model: r.model, kind: r.kind, ...(JSON.parse(r.fieldsJson || "{}") as KindRow) };
}

/** CSV header of a kind's rows. */
export function kindCsvColumns(kind: string): readonly string[] {
  return ["sweep_id", "model", "kind", ...(experimentKindModule(kind)?.columns ?? [])];
}

/**
 * Incremental aggregation of a trace sweep's results: idempotent by shard id, sums per (site,
 * window, token group, layer), heatmaps, rows, a summary and a JSON state to resume from. A per-head
 * cell (engine.Cell.head) is aggregated under its site label `ssm.h<k>` (sites.ts `siteLabel`), so
 * each head has its own heatmap beside the whole site's; its result rows keep `site` and `head`.
 */
import type { control, sweep } from "@factsweep/proto";
import {
  averageIndirectEffect,
  indirectEffect,
  type AggregateSummary,
  type AggregatorState,
  type Bucket,
  type Heatmap,
  type PromptMeta,
  type ResultRow,
  type StoredShard,
} from "./effects.js";
import { ResultError } from "./errors.js";
import { siteFromEnum, siteLabel, type SiteLabel, type SiteName } from "./sites.js";
import { GROUPS_BY_SCHEME, tokenGroup, tokenGroups, type TokenGroup, type TokenGroupScheme } from "./token-groups.js";

const SEP = "|";

/**
 * Adds ShardResults idempotently (by shard id) and keeps per (site, window, token group, layer)
 * sums, so progress reports and heatmaps never need a second pass over the results.
 *
 * @example
 * const agg = new ResultAggregator({ sweepId, prompts: plan.prompts });
 * agg.add(result);               // true the first time, false for a redelivered duplicate
 * const map = agg.heatmap("residual", 1);
 * await kv.put(key, JSON.stringify(agg.toJSON()));   // resume: ResultAggregator.fromJSON(...)
 */
export class ResultAggregator {
  readonly sweepId: string;
  readonly scheme: TokenGroupScheme;
  private readonly model: string;
  private readonly corruption: string;
  private readonly prompts = new Map<number, PromptMeta>();
  private readonly buckets = new Map<string, Bucket>();
  private readonly promptProbs = new Map<number, [number, number, number]>();
  /** Every shard added, by id (one map: at 1M shards a second index of the ids cost a restart seconds); a shard
   * restored from a state without cells maps to NO_CELLS. */
  private readonly shards = new Map<string, StoredShard>();
  private cellCount = 0;

  constructor(opts: {
    sweepId: string;
    prompts: (PromptMeta | sweep.PromptSpec)[];
    scheme?: TokenGroupScheme;
    /** Model id, copied into result rows. */
    model?: string;
    /** "swap" | "noise", copied into result rows; default taken from the first prompt. */
    corruption?: string;
  }) {
    this.sweepId = opts.sweepId;
    this.scheme = opts.scheme ?? "rome";
    this.model = opts.model ?? "";
    for (const p of opts.prompts) {
      const meta: PromptMeta =
        "inputIds" in p ? { index: p.index, numTokens: p.inputIds.length, subjectStart: p.subjectStart, subjectEnd: p.subjectEnd, subject: p.subject } : p;
      this.prompts.set(meta.index, meta);
    }
    const first = opts.prompts[0];
    this.corruption = opts.corruption ?? (first && "corruption" in first ? (first.corruption?.kind?.$case ?? "") : "");
  }

  /** Number of distinct shards added. */
  get shardCount(): number {
    return this.shards.size;
  }

  /** Number of prompts the sweep planned (the facts a finished sweep has results for, unless some failed). */
  get plannedPrompts(): number {
    return this.prompts.size;
  }

  /** Number of cells added (duplicates not counted). */
  get cells(): number {
    return this.cellCount;
  }

  /** True if this shard id was already added. */
  has(shardId: string): boolean {
    return this.shards.has(shardId);
  }

  /**
   * Add one shard's results. Returns false (and changes nothing) for a shard id already added,
   * e.g. a redelivered or retried publication.
   * @throws ResultError for a result of another sweep, an unknown prompt or a token outside it.
   */
  add(result: sweep.ShardResult): boolean {
    if (this.shards.has(result.shardId)) return false;
    if (result.sweepId !== this.sweepId) {
      throw new ResultError(`result of shard ${result.shardId} belongs to sweep "${result.sweepId}", not "${this.sweepId}"`, result.shardId);
    }
    const meta = this.prompts.get(result.promptIndex);
    if (!meta) throw new ResultError(`result of shard ${result.shardId} names prompt ${result.promptIndex}, which this sweep does not have`, result.shardId);
    const flat: number[] = [];
    let heads: number[] | undefined; // only when a cell names a head (Mamba-2 per-head sites)
    for (const c of result.cells) {
      const cell = c.cell;
      if (!cell || cell.token >= meta.numTokens) {
        throw new ResultError(
          `result of shard ${result.shardId} has a cell at token ${cell?.token} outside prompt ${meta.index} (${meta.numTokens} tokens)`,
          result.shardId,
        );
      }
      siteFromEnum(cell.site); // validates
      if (cell.head !== undefined && cell.head !== NO_HEAD && !heads) heads = Array<number>(flat.length / 6).fill(NO_HEAD);
      flat.push(cell.site, cell.layer, cell.token, cell.window, c.p, c.logit);
      heads?.push(cell.head ?? NO_HEAD);
    }
    // Validated: now apply.
    const stored: StoredShard = { promptIndex: result.promptIndex, answerId: result.answerId, pClean: result.pClean, pCorrupt: result.pCorrupt, cells: flat };
    if (heads) stored.heads = heads;
    this.shards.set(result.shardId, stored);
    if (!this.promptProbs.has(result.promptIndex)) this.promptProbs.set(result.promptIndex, [result.pClean, result.pCorrupt, result.answerId]);
    for (let i = 0; i < flat.length; i += 6) {
      this.addCell(meta, labelOf(flat, heads, i), flat[i + 1]!, flat[i + 2]!, flat[i + 3]!, flat[i + 4]!, result.pClean, result.pCorrupt);
    }
    return true;
  }

  private addCell(meta: PromptMeta, site: SiteLabel, layer: number, token: number, window: number, p: number, pClean: number, pCorrupt: number): void {
    const ie = indirectEffect(p, pCorrupt, pClean);
    for (const g of tokenGroups(token, [meta.subjectStart, meta.subjectEnd], meta.numTokens, this.scheme)) {
      const key = `${site}${SEP}${window}${SEP}${g}${SEP}${layer}`;
      let b = this.buckets.get(key);
      if (!b) {
        b = { n: 0, sumP: 0, sumPCorrupt: 0, sumPClean: 0, sumIE: 0, nIE: 0 };
        this.buckets.set(key, b);
      }
      b.n++;
      b.sumP += p;
      b.sumPCorrupt += pCorrupt;
      b.sumPClean += pClean;
      if (ie !== null) {
        b.sumIE += ie;
        b.nIE++;
      }
    }
    this.cellCount++;
  }

  /** The running sums of one bucket, or undefined when no cell fell in it. */
  bucket(site: SiteLabel, window: number, group: TokenGroup, layer: number): Bucket | undefined {
    const b = this.buckets.get([site, window, group, layer].join(SEP));
    return b ? { ...b } : undefined;
  }

  /** Mean IE and AIE per token group × layer for one (site, window); `site` is a site label (`ssm.h3` for a head). */
  heatmap(site: SiteLabel, window: number): Heatmap {
    const layerSet = new Set<number>();
    const present = new Set<string>();
    for (const key of this.buckets.keys()) {
      const [s, w, g, l] = key.split(SEP);
      if (s === site && Number(w) === window) {
        layerSet.add(Number(l));
        present.add(g!);
      }
    }
    const layers = [...layerSet].sort((a, b) => a - b);
    const groups = GROUPS_BY_SCHEME[this.scheme].filter((g) => present.has(g));
    const meanIE: (number | null)[][] = [];
    const aie: (number | null)[][] = [];
    const counts: number[][] = [];
    for (const g of groups) {
      const ieRow: (number | null)[] = [];
      const aieRow: (number | null)[] = [];
      const nRow: number[] = [];
      for (const l of layers) {
        const b = this.buckets.get([site, window, g, l].join(SEP));
        ieRow.push(b && b.nIE > 0 ? b.sumIE / b.nIE : null);
        aieRow.push(b ? (b.sumP - b.sumPCorrupt) / b.n : null);
        nRow.push(b?.n ?? 0);
      }
      meanIE.push(ieRow);
      aie.push(aieRow);
      counts.push(nRow);
    }
    return { site, window, groups, layers, meanIE, aie, counts };
  }

  /** The (site label, window) pairs that have results. */
  grids(): { site: SiteLabel; window: number }[] {
    const seen = new Map<string, { site: SiteLabel; window: number }>();
    for (const key of this.buckets.keys()) {
      const [s, w] = key.split(SEP);
      seen.set(`${s}${SEP}${w}`, { site: s as SiteLabel, window: Number(w) });
    }
    return [...seen.values()];
  }

  /** One prompt's grid of p for (site, window): p[token][layer] (null where not run). */
  promptGrid(promptIndex: number, site: SiteLabel, window: number): { layers: number[]; p: (number | null)[][]; pClean: number; pCorrupt: number } | undefined {
    const meta = this.prompts.get(promptIndex);
    const probs = this.promptProbs.get(promptIndex);
    if (!meta || !probs) return undefined;
    const cells: [number, number, number][] = [];
    for (const sh of this.shards.values()) {
      if (sh.promptIndex !== promptIndex || !sh.cells) continue;
      for (let i = 0; i < sh.cells.length; i += 6) {
        if (labelOf(sh.cells, sh.heads, i) === site && sh.cells[i + 3] === window) cells.push([sh.cells[i + 2]!, sh.cells[i + 1]!, sh.cells[i + 4]!]);
      }
    }
    const layers = [...new Set(cells.map((c) => c[1]))].sort((a, b) => a - b);
    const p: (number | null)[][] = Array.from({ length: meta.numTokens }, () => layers.map(() => null));
    for (const [t, l, v] of cells) p[t]![layers.indexOf(l)] = v;
    return { layers, p, pClean: probs[0], pCorrupt: probs[1] };
  }

  /**
   * Per-fact IE of one token group for (site, window): ie[fact][layer] (mean over the fact's
   * cells of that group at that layer; null where none or IE undefined), one row per prompt with
   * results, in prompt order. What a bootstrap over facts resamples. Empty when the state was
   * restored without cells (`toJSON({ cells: false })`).
   */
  factRows(site: SiteLabel, window: number, group: TokenGroup): { layers: number[]; prompts: number[]; ie: (number | null)[][] } {
    const sums = new Map<number, Map<number, [number, number]>>(); // prompt -> layer -> [sum IE, n]
    const layerSet = new Set<number>();
    for (const sh of this.shards.values()) {
      const meta = this.prompts.get(sh.promptIndex);
      if (!sh.cells || !meta) continue;
      for (let i = 0; i < sh.cells.length; i += 6) {
        if (labelOf(sh.cells, sh.heads, i) !== site || sh.cells[i + 3] !== window) continue;
        const layer = sh.cells[i + 1]!;
        layerSet.add(layer);
        if (!tokenGroups(sh.cells[i + 2]!, [meta.subjectStart, meta.subjectEnd], meta.numTokens, this.scheme).includes(group)) continue;
        const ie = indirectEffect(sh.cells[i + 4]!, sh.pCorrupt, sh.pClean);
        if (ie === null) continue;
        let byLayer = sums.get(sh.promptIndex);
        if (!byLayer) sums.set(sh.promptIndex, (byLayer = new Map()));
        const cur = byLayer.get(layer) ?? [0, 0];
        byLayer.set(layer, [cur[0] + ie, cur[1] + 1]);
      }
    }
    const layers = [...layerSet].sort((a, b) => a - b);
    const prompts = [...sums.keys()].sort((a, b) => a - b);
    const ie = prompts.map((pi) =>
      layers.map((l) => {
        const v = sums.get(pi)!.get(l);
        return v ? v[0] / v[1] : null;
      }),
    );
    return { layers, prompts, ie };
  }

  /**
   * Every cell as a result row (site name, token group, IE), in shard-id order. Shards restored
   * from a state serialized with `{ cells: false }` have no rows.
   */
  *rows(): Generator<ResultRow> {
    const ids = [...this.shards.keys()].sort(compareShardIds);
    for (const id of ids) {
      const sh = this.shards.get(id)!;
      if (!sh.cells) continue;
      const meta = this.prompts.get(sh.promptIndex)!;
      for (let i = 0; i < sh.cells.length; i += 6) {
        const token = sh.cells[i + 2]!;
        const p = sh.cells[i + 4]!;
        const head = sh.heads?.[i / 6];
        yield {
          sweepId: this.sweepId,
          model: this.model,
          promptIndex: sh.promptIndex,
          subject: meta.subject,
          site: siteFromEnum(sh.cells[i]!),
          layer: sh.cells[i + 1]!,
          token,
          window: sh.cells[i + 3]!,
          tokenGroup: tokenGroup(token, [meta.subjectStart, meta.subjectEnd], meta.numTokens, this.scheme),
          p,
          pClean: sh.pClean,
          pCorrupt: sh.pCorrupt,
          ie: indirectEffect(p, sh.pCorrupt, sh.pClean) ?? NaN,
          corruption: this.corruption,
          kind: "trace",
          fieldsJson: JSON.stringify({ answer_id: sh.answerId }), // provenance: the token whose p is measured
          ...(head !== undefined && head !== NO_HEAD ? { head } : {}),
        };
      }
    }
  }

  /** Totals and, per (site, window, group), the layer of the strongest mean IE. */
  summary(): AggregateSummary {
    const probs = [...this.promptProbs.values()];
    const meanPClean = probs.length ? probs.reduce((a, p) => a + p[0], 0) / probs.length : NaN;
    const meanPCorrupt = probs.length ? probs.reduce((a, p) => a + p[1], 0) / probs.length : NaN;
    const peaks: AggregateSummary["peaks"] = [];
    for (const { site, window } of this.grids()) {
      const h = this.heatmap(site, window);
      h.groups.forEach((group, gi) => {
        const row = h.meanIE[gi]!;
        let best = 0;
        for (let li = 1; li < row.length; li++) {
          const v = row[li] ?? null;
          const cur = row[best] ?? null;
          if (v !== null && (cur === null || v > cur)) best = li;
        }
        if (row.length > 0) {
          peaks.push({ site, window, group, layer: h.layers[best]!, meanIE: row[best] ?? null, aie: h.aie[gi]![best] ?? NaN, n: h.counts[gi]![best]! });
        }
      });
    }
    return {
      sweepId: this.sweepId,
      shards: this.shards.size,
      cells: this.cellCount,
      prompts: probs.length,
      meanPClean,
      meanPCorrupt,
      totalEffect: meanPClean - meanPCorrupt,
      peaks,
    };
  }

  /**
   * JSON-safe state for KV persistence. `{ cells: false }` keeps only the sums and shard ids
   * (small, enough to resume counting and heatmaps; rows() then covers only later shards).
   */
  toJSON(opts: { cells?: boolean } = {}): AggregatorState {
    const state: AggregatorState = {
      version: 1,
      sweepId: this.sweepId,
      scheme: this.scheme,
      model: this.model,
      corruption: this.corruption,
      prompts: [...this.prompts.values()],
      buckets: [...this.buckets.entries()].map(([k, b]) => [k, { ...b }]),
      promptProbs: [...this.promptProbs.entries()].map(([i, [c, x, a]]) => [i, c, x, a]),
      shardIds: [...this.shards.keys()],
      cellCount: this.cellCount,
    };
    if (opts.cells !== false)
      state.shards = [...this.shards.entries()]
        .filter(([, s]) => s !== NO_CELLS)
        .map(([k, s]) => [k, { ...s, cells: s.cells ? [...s.cells] : null, ...(s.heads ? { heads: [...s.heads] } : {}) }]);
    return state;
  }

  /** Restore from {@link toJSON}'s output (also accepts its JSON text). */
  static fromJSON(state: AggregatorState | string): ResultAggregator {
    const s: AggregatorState = typeof state === "string" ? (JSON.parse(state) as AggregatorState) : state;
    if (s.version !== 1) throw new RangeError(`Expected aggregator state version 1, got ${String(s.version)}`);
    const agg = new ResultAggregator({ sweepId: s.sweepId, prompts: s.prompts, scheme: s.scheme, model: s.model, corruption: s.corruption });
    for (const [k, b] of s.buckets) agg.buckets.set(k, { ...b });
    for (const [i, c, x, a] of s.promptProbs) agg.promptProbs.set(i, [c, x, a]);
    for (const id of s.shardIds) agg.shards.set(id, NO_CELLS);
    for (const [id, sh] of s.shards ?? []) agg.shards.set(id, { ...sh, cells: sh.cells ? [...sh.cells] : null, ...(sh.heads ? { heads: [...sh.heads] } : {}) });
    agg.cellCount = s.cellCount;
    return agg;
  }
}

/** `StoredShard.heads` of a whole-site cell. */
const NO_HEAD = -1;

/** A shard known by id only (restored from `toJSON({ cells: false })`): no cells, no rows. */
const NO_CELLS: StoredShard = Object.freeze({ promptIndex: -1, answerId: 0, pClean: Number.NaN, pCorrupt: Number.NaN, cells: null });

/** The site label of the cell whose sextet starts at `i` of `cells` (a head's `ssm.h<k>`, else the site). */
function labelOf(cells: readonly number[], heads: readonly number[] | undefined, i: number): SiteLabel {
  const head = heads?.[i / 6];
  return siteLabel(siteFromEnum(cells[i]!), head === undefined || head === NO_HEAD ? undefined : head);
}

/** Order shard ids `<sweep>.<prompt>.<part>` numerically by prompt, then part. */
function compareShardIds(a: string, b: string): number {
  const pa = a.split(".");
  const pb = b.split(".");
  const na = Number(pa[pa.length - 2]) - Number(pb[pb.length - 2]);
  return na !== 0 ? na : Number(pa[pa.length - 1]) - Number(pb[pb.length - 1]);
}

// long-file: one class holds a trace sweep's aggregate and every view of it (buckets, heatmaps, rows, per-fact rows, state); its storage is shard-store.ts, its in-place read shard-result-wire.ts.
/**
 * Incremental aggregation of a trace sweep's results: idempotent by shard id, sums per (site,
 * window, token group, layer), heatmaps, rows, a summary and a JSON state to resume from. A per-head
 * cell (engine.Cell.head) is aggregated under its site label `ssm.h<k>` (sites.ts `siteLabel`), so
 * each head has its own heatmap beside the whole site's; its result rows keep `site` and `head`.
 */
import { sweep, type control } from "@factsweep/proto";
import {
  averageIndirectEffect,
  indirectEffect,
  type AggregateSummary,
  type AggregatorState,
  type Bucket,
  type Heatmap,
  type PromptMeta,
  type ResultRow,
} from "./effects.js";
import { ResultError } from "./errors.js";
import { WireShardResult } from "./shard-result-wire.js";
import { NO_HEAD, ShardStore } from "./shard-store.js";
import { siteFromEnum, siteLabel, type SiteLabel, type SiteName } from "./sites.js";
import { GROUPS_BY_SCHEME, TOKEN_GROUPS, tokenGroup, tokenGroups, type TokenGroup, type TokenGroupScheme } from "./token-groups.js";

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
  /** The same buckets by a number of (site label, window, group, layer) where they fit: a cell's sums need no key string (1M at a restart). */
  private readonly bucketByNum = new Map<number, Bucket>();
  private readonly labelNum = new Map<SiteLabel, number>();
  /** Token groups per prompt and token (tokenGroups' answer, which depends on nothing else). */
  private readonly groupsOf = new Map<number, TokenGroup[][]>();
  private readonly promptProbs = new Map<number, [number, number, number]>();
  /** Every shard added, in columns found by the plan's shard id (no object or map entry per shard: shard-store.ts). */
  private readonly shards: ShardStore;
  /** The sweep id's UTF-8 bytes, compared with a stored result's (addEncoded). */
  private readonly sweepIdBytes: Uint8Array;
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
    this.shards = new ShardStore(opts.sweepId);
    this.sweepIdBytes = new TextEncoder().encode(opts.sweepId);
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
    return this.shards.slotOf(shardId) >= 0;
  }

  /**
   * Add one shard's results. Returns false (and changes nothing) for a shard id already added,
   * e.g. a redelivered or retried publication.
   * @throws ResultError for a result of another sweep, an unknown prompt or a token outside it.
   */
  add(result: sweep.ShardResult): boolean {
    const store = this.shards;
    if (store.slotOf(result.shardId) >= 0) return false;
    if (result.sweepId !== this.sweepId) {
      throw new ResultError(`result of shard ${result.shardId} belongs to sweep "${result.sweepId}", not "${this.sweepId}"`, result.shardId);
    }
    const meta = this.prompts.get(result.promptIndex);
    if (!meta) throw new ResultError(`result of shard ${result.shardId} names prompt ${result.promptIndex}, which this sweep does not have`, result.shardId);
    for (const c of result.cells) {
      const cell = c.cell;
      if (!cell || cell.token >= meta.numTokens) {
        throw new ResultError(
          `result of shard ${result.shardId} has a cell at token ${cell?.token} outside prompt ${meta.index} (${meta.numTokens} tokens)`,
          result.shardId,
        );
      }
      siteFromEnum(cell.site); // validates
    }
    // Validated: now apply.
    const slot = store.addSlot(result.shardId, result.promptIndex, result.answerId, result.pClean, result.pCorrupt);
    store.emptyCells(slot);
    if (!this.promptProbs.has(result.promptIndex)) this.promptProbs.set(result.promptIndex, [result.pClean, result.pCorrupt, result.answerId]);
    for (const c of result.cells) {
      const cell = c.cell!;
      const head = cell.head ?? NO_HEAD;
      store.addCell(slot, cell.site, cell.layer, cell.token, cell.window, head, c.p, c.logit);
      this.addCell(meta, labelAt(cell.site, head), cell.layer, cell.token, cell.window, c.p, result.pClean, result.pCorrupt);
    }
    return true;
  }

  /**
   * {@link add} of a stored result's protobuf encoding (a restart folds a snapshot of them): read in
   * place where it has the usual form (shard-result-wire.ts), else decoded and added as by `add`,
   * which also gives any error; same outcome either way.
   */
  addEncoded(bytes: Uint8Array): boolean {
    const w = WIRE;
    if (!w.read(bytes)) return this.add(sweep.ShardResult.decode(bytes));
    const store = this.shards;
    // A plan-form id is found from its bytes (no string; its prompt number stays parsed for addSlotAt); any other from its string.
    const part = store.parseBytes(bytes, w.shardIdStart, w.shardIdEnd);
    const id = part < 0 ? w.shardId : "";
    if ((part >= 0 ? store.slotAt(part) : store.slotOf(id)) >= 0) return false;
    const meta = w.sweepIdIs(this.sweepIdBytes) ? this.prompts.get(w.promptIndex) : undefined;
    if (!meta) return this.add(sweep.ShardResult.decode(bytes));
    for (let i = 0; i < w.cells; i++) if (w.token[i]! >= meta.numTokens || !isSiteEnum(w.site[i]!)) return this.add(sweep.ShardResult.decode(bytes));
    const slot =
      part >= 0 ? store.addSlotAt(part, w.promptIndex, w.answerId, w.pClean, w.pCorrupt) : store.addSlot(id, w.promptIndex, w.answerId, w.pClean, w.pCorrupt);
    store.emptyCells(slot);
    if (!this.promptProbs.has(w.promptIndex)) this.promptProbs.set(w.promptIndex, [w.pClean, w.pCorrupt, w.answerId]);
    for (let i = 0; i < w.cells; i++) {
      const site = w.site[i]!;
      const head = w.head[i]!;
      store.addCell(slot, site, w.layer[i]!, w.token[i]!, w.window[i]!, head, w.p[i]!, w.logit[i]!);
      this.addCell(meta, labelAt(site, head), w.layer[i]!, w.token[i]!, w.window[i]!, w.p[i]!, w.pClean, w.pCorrupt);
    }
    return true;
  }

  private addCell(meta: PromptMeta, site: SiteLabel, layer: number, token: number, window: number, p: number, pClean: number, pCorrupt: number): void {
    const ie = indirectEffect(p, pCorrupt, pClean);
    let byToken = this.groupsOf.get(meta.index);
    if (!byToken) this.groupsOf.set(meta.index, (byToken = []));
    const groups = (byToken[token] ??= tokenGroups(token, [meta.subjectStart, meta.subjectEnd], meta.numTokens, this.scheme));
    let label = this.labelNum.get(site);
    if (label === undefined) this.labelNum.set(site, (label = this.labelNum.size));
    const fits = label < 64 && window < 256 && layer < 8192; // the bucket's number stays a small integer
    for (const g of groups) {
      const num = fits ? ((label * 256 + window) * 16 + GROUP_NUM.get(g)!) * 8192 + layer : -1;
      let b = fits ? this.bucketByNum.get(num) : undefined;
      if (!b) {
        const key = `${site}${SEP}${window}${SEP}${g}${SEP}${layer}`;
        b = this.buckets.get(key);
        if (!b) {
          b = { n: 0, sumP: 0, sumPCorrupt: 0, sumPClean: 0, sumIE: 0, nIE: 0 };
          this.buckets.set(key, b);
        }
        if (fits) this.bucketByNum.set(num, b);
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
    const st = this.shards;
    for (let slot = 0; slot < st.size; slot++) {
      if (st.promptIndex[slot] !== promptIndex) continue;
      for (let i = st.cellStart[slot]!, end = i + st.cellCount[slot]!; i < end; i++) {
        if (st.window[i] === window && labelAt(st.site[i]!, st.head[i]!) === site) cells.push([st.token[i]!, st.layer[i]!, st.p[i]!]);
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
    const st = this.shards;
    for (let slot = 0; slot < st.size; slot++) {
      const promptIndex = st.promptIndex[slot]!;
      const meta = this.prompts.get(promptIndex);
      if (!meta) continue;
      for (let i = st.cellStart[slot]!, end = i + st.cellCount[slot]!; i < end; i++) {
        if (st.window[i] !== window || labelAt(st.site[i]!, st.head[i]!) !== site) continue;
        const layer = st.layer[i]!;
        layerSet.add(layer);
        if (!tokenGroups(st.token[i]!, [meta.subjectStart, meta.subjectEnd], meta.numTokens, this.scheme).includes(group)) continue;
        const ie = indirectEffect(st.p[i]!, st.pCorrupt[slot]!, st.pClean[slot]!);
        if (ie === null) continue;
        let byLayer = sums.get(promptIndex);
        if (!byLayer) sums.set(promptIndex, (byLayer = new Map()));
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
    const st = this.shards;
    for (const slot of st.ordered()) {
      const n = st.cellCount[slot]!;
      if (n < 0) continue;
      const promptIndex = st.promptIndex[slot]!;
      const pClean = st.pClean[slot]!;
      const pCorrupt = st.pCorrupt[slot]!;
      const meta = this.prompts.get(promptIndex)!;
      const fieldsJson = JSON.stringify({ answer_id: st.answerId[slot]! }); // provenance: the token whose p is measured
      for (let i = st.cellStart[slot]!, end = i + n; i < end; i++) {
        const token = st.token[i]!;
        const p = st.p[i]!;
        const head = st.head[i]!;
        yield {
          sweepId: this.sweepId,
          model: this.model,
          promptIndex,
          subject: meta.subject,
          site: siteFromEnum(st.site[i]!),
          layer: st.layer[i]!,
          token,
          window: st.window[i]!,
          tokenGroup: tokenGroup(token, [meta.subjectStart, meta.subjectEnd], meta.numTokens, this.scheme),
          p,
          pClean,
          pCorrupt,
          ie: indirectEffect(p, pCorrupt, pClean) ?? NaN,
          corruption: this.corruption,
          kind: "trace",
          fieldsJson,
          ...(head !== NO_HEAD ? { head } : {}),
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
    const st = this.shards;
    const ids = Array.from({ length: st.size }, (_, slot) => st.idOf(slot));
    const state: AggregatorState = {
      version: 1,
      sweepId: this.sweepId,
      scheme: this.scheme,
      model: this.model,
      corruption: this.corruption,
      prompts: [...this.prompts.values()],
      buckets: [...this.buckets.entries()].map(([k, b]) => [k, { ...b }]),
      promptProbs: [...this.promptProbs.entries()].map(([i, [c, x, a]]) => [i, c, x, a]),
      shardIds: ids,
      cellCount: this.cellCount,
    };
    if (opts.cells !== false) {
      state.shards = [];
      for (let slot = 0; slot < st.size; slot++) {
        const sh = st.stored(slot);
        if (sh) state.shards.push([ids[slot]!, sh]);
      }
    }
    return state;
  }

  /** Restore from {@link toJSON}'s output (also accepts its JSON text). */
  static fromJSON(state: AggregatorState | string): ResultAggregator {
    const s: AggregatorState = typeof state === "string" ? (JSON.parse(state) as AggregatorState) : state;
    if (s.version !== 1) throw new RangeError(`Expected aggregator state version 1, got ${String(s.version)}`);
    const agg = new ResultAggregator({ sweepId: s.sweepId, prompts: s.prompts, scheme: s.scheme, model: s.model, corruption: s.corruption });
    for (const [k, b] of s.buckets) agg.buckets.set(k, { ...b });
    for (const [i, c, x, a] of s.promptProbs) agg.promptProbs.set(i, [c, x, a]);
    const st = agg.shards;
    // A shard known by id only (serialized with `{ cells: false }`): a slot without cells, no rows.
    for (const id of s.shardIds) if (st.slotOf(id) < 0) st.addSlot(id, -1, 0, Number.NaN, Number.NaN);
    for (const [id, sh] of s.shards ?? []) {
      let slot = st.slotOf(id);
      if (slot < 0) slot = st.addSlot(id, sh.promptIndex, sh.answerId, sh.pClean, sh.pCorrupt);
      else st.setShard(slot, sh.promptIndex, sh.answerId, sh.pClean, sh.pCorrupt);
      if (!sh.cells) continue;
      st.emptyCells(slot);
      for (let i = 0; i < sh.cells.length; i += 6) {
        const c = sh.cells;
        st.addCell(slot, c[i]!, c[i + 1]!, c[i + 2]!, c[i + 3]!, sh.heads?.[i / 6] ?? NO_HEAD, c[i + 4]!, c[i + 5]!);
      }
    }
    agg.cellCount = s.cellCount;
    return agg;
  }
}

/** The site label of a cell of `site` (engine enum) and `head` (NO_HEAD: the whole site). */
function labelAt(site: number, head: number): SiteLabel {
  if (head === NO_HEAD) return WHOLE_SITE[site] ?? siteFromEnum(site);
  return siteLabel(siteFromEnum(site), head);
}

/** Whole-site labels by engine enum value, and whether a value is a site (siteFromEnum, without its throw). */
const WHOLE_SITE: SiteLabel[] = [];
for (let v = 0; v < 64; v++) {
  try {
    WHOLE_SITE[v] = siteFromEnum(v);
  } catch {
    // not a site
  }
}
const isSiteEnum = (v: number): boolean => WHOLE_SITE[v] !== undefined;

/** A token group's number in a bucket's number (fewer than 16 groups). */
const GROUP_NUM = new Map<TokenGroup, number>(TOKEN_GROUPS.map((g, i) => [g, i]));

/** The reader of addEncoded (one: the fold is synchronous). */
const WIRE = new WireShardResult();

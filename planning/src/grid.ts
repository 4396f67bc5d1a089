/**
 * Grid expansion and sharding: a prompt × (site, window) × layer × token grid of cells, cut into
 * shards of at most `shard_cells` cells of one prompt (the unit of leasing, retry and result
 * publication). The implementation of the `trace` kind (kinds/trace.ts); sweep and shard ids.
 */
import type { engine, sweep } from "@factsweep/proto";
import { describeValue } from "@factsweep/shared";
import { PromptError, SpecError } from "./errors.js";
import { resolveLayers } from "./layers.js";
import { siteToEnum } from "./sites.js";
import type { LayersSpec } from "./layers.js";
import type { SiteName } from "./sites.js";
import type { TokenGroup, TokenGroupScheme } from "./token-groups.js";
import { selectorPositions, slices, type PromptTokens } from "./kinds/common.js";

/** Sweep ids appear in NATS subjects and shard ids (`<sweep>.<prompt>.<part>`): no dots or spaces. */
export const SWEEP_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** @throws SpecError when `sweepId` cannot be used in NATS subjects and shard ids. */
export function validateSweepId(sweepId: string): string {
  if (!SWEEP_ID_PATTERN.test(sweepId)) {
    throw new SpecError(
      `sweep_id: expected 1-64 letters, digits, '_' or '-' (starting with a letter or digit; no dots, it is used in NATS subjects), got ${describeValue(sweepId)}`,
      {
        path: "sweep_id",
        expected: SWEEP_ID_PATTERN.source,
        received: sweepId,
      },
    );
  }
  return sweepId;
}

/** `<sweep>.<promptIndex>.<part>` */
export function shardId(sweepId: string, promptIndex: number, part: number): string {
  return `${sweepId}.${promptIndex}.${part}`;
}

/** Inverse of {@link shardId}. */
export function parseShardId(id: string): { sweepId: string; promptIndex: number; part: number } {
  const m = /^(.+)\.(\d+)\.(\d+)$/.exec(id);
  if (!m) throw new RangeError(`Expected a shard id "<sweep>.<prompt index>.<part>", got ${describeValue(id)}`);
  return { sweepId: m[1]!, promptIndex: Number(m[2]), part: Number(m[3]) };
}

/** `<sweep>/<promptIndex>`: the engine cache key of a prompt. */
export function promptKey(sweepId: string, promptIndex: number): string {
  return `${sweepId}/${promptIndex}`;
}

/** The spec fields the grid is made of (kinds/trace.ts validates them). */
export interface GridSpec {
  /** `heads`: restore each of these heads of the site on its own (`"all"`: every head of the model) instead of the whole site. */
  grid: readonly { site: SiteName; window: number; heads?: "all" | readonly number[] }[];
  layers: LayersSpec;
  /** "all", or token groups, `subject`, and indices (negative: from the end). */
  tokens: "all" | readonly (TokenGroup | "subject" | number)[];
  token_groups: TokenGroupScheme;
}

/** Token positions a spec selects in one prompt, ascending. */
export function selectTokens(spec: Pick<GridSpec, "tokens" | "token_groups">, prompt: PromptTokens): number[] {
  const n = prompt.inputIds.length;
  if (spec.tokens === "all") return Array.from({ length: n }, (_, i) => i);
  const picked = new Set<number>();
  for (const sel of spec.tokens) {
    const outside = (): PromptError => new PromptError(`tokens: index ${sel} is outside this prompt of ${n} tokens (valid ${-n}..${n - 1})`, prompt.index);
    for (const t of selectorPositions(sel, prompt, spec.token_groups, outside)) picked.add(t);
  }
  return [...picked].sort((a, b) => a - b);
}

/**
 * A window capped for a model of `numLayers` layers: window w restores layers l − w//2 … l + ⌈w/2⌉ − 1,
 * so every w ≥ 2 × layers restores all of them around every centre; larger values are cut to that
 * (the same cells, and no unbounded number reaches the engine).
 */
export function effectiveWindow(window: number, numLayers: number): number {
  return Math.max(1, Math.min(window, 2 * numLayers));
}

/** The heads a grid entry restores one at a time (`"all"`: 0..numHeads−1); undefined: the whole site. */
export function gridHeads(heads: "all" | readonly number[] | undefined, numHeads: number): readonly number[] | undefined {
  return heads === "all" ? Array.from({ length: numHeads }, (_, k) => k) : heads;
}

/**
 * Every cell of one prompt: grid entries (site, window[, heads]) × layers × selected tokens. `embed`
 * has no layers: one cell per token at layer 0. An entry with `heads` plans one cell per head (the
 * cell's `head`; `"all"` is 0..numHeads−1), heads varying fastest; without, the whole site (no head).
 * @throws SpecError for layers outside the model, PromptError for token indices outside the prompt.
 */
export function expandCells(prompt: sweep.PromptSpec, spec: GridSpec, numLayers: number, numHeads = 0): engine.Cell[] {
  const layers = resolveLayers(spec.layers, numLayers);
  const tokens = selectTokens(spec, prompt);
  const cells: engine.Cell[] = [];
  for (const { site, window, heads } of spec.grid) {
    const s = siteToEnum(site);
    if (site === "embed") {
      for (const token of tokens) cells.push({ site: s, layer: 0, token, window: 1 });
      continue;
    }
    const w = effectiveWindow(window, numLayers);
    const hs = gridHeads(heads, numHeads);
    for (const layer of layers)
      for (const token of tokens) {
        if (hs === undefined) cells.push({ site: s, layer, token, window: w });
        else for (const head of hs) cells.push({ site: s, layer, token, window: w, head });
      }
  }
  return cells;
}

/** Cut one prompt's cells into shards of at most `shardCells` cells. */
export function shardPrompt(
  prompt: sweep.PromptSpec,
  cells: engine.Cell[],
  opts: { sweepId: string; shardCells: number; model: sweep.ModelRef; kind?: string },
): sweep.Shard[] {
  return [...slices(cells.length, opts.shardCells)].map(({ at, part }) => ({
    paramsJson: "",
    sweepId: opts.sweepId,
    shardId: shardId(opts.sweepId, prompt.index, part),
    kind: opts.kind ?? "trace",
    model: opts.model,
    prompt,
    cells: cells.slice(at, at + opts.shardCells),
    attempt: 0,
    units: Math.min(opts.shardCells, cells.length - at),
  }));
}

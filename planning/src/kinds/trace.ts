/**
 * The `trace` kind: causal tracing over a grid of cells (prompt × (site, window) × layer × token).
 * Its spec fields are top-level (`grid`, `tokens`); grid.ts expands and shards the cells and
 * effects.ts aggregates them ({@link ResultAggregator}, viewed by {@link modelTrace}); the engine
 * side is the worker's cell runner (engine/trace.py), not an experiment module.
 */
import { z } from "zod";
import { SpecError } from "../errors.js";
import { effectiveWindow, expandCells, gridHeads, shardPrompt } from "../grid.js";
import type { ModelConfig } from "../model-config.js";
import { HEAD_SITES_BY_MODEL_TYPE, SITE_NAMES, SITES_BY_MODEL_TYPE, type SiteName } from "../sites.js";
import { TOKEN_GROUPS } from "../token-groups.js";
import { planCellsPerPrompt, planKindPrompts } from "./common.js";
import type { KindPlan, KindPlanContext, ShardList, SpecOf, SweepKindModule } from "./kind.js";

/** Token selectors: a group name, `subject` (every subject token), or a token index (negative: from the end). */
export const TOKEN_SELECTORS = [...TOKEN_GROUPS, "subject"] as const;

/** A grid entry's `heads`: every head of the model, or a list of head indices (0-based, each once). */
const headsField = z.union(
  [
    z.literal("all"),
    z
      .array(z.number().int().min(0), { error: "expected a list of head indices (integers from 0)" })
      .min(1)
      .refine((hs) => new Set(hs).size === hs.length, { error: "expected each head index once" }),
  ],
  { error: `expected "all" or a list of head indices such as [0, 3, 7]` },
);

const gridEntry = z.strictObject({
  site: z.enum(SITE_NAMES),
  window: z.number().int().min(1).default(1),
  /** Restore one head at a time (a cell per head) instead of the whole site: Mamba-2 `ssm` only. */
  heads: headsField.optional(),
});

const tokenSelector = z.union([z.enum(TOKEN_SELECTORS), z.number().int()], {
  error: `expected a token group (${TOKEN_SELECTORS.join(", ")}) or a token index (negative counts from the end)`,
});

/** A token selector of the spec's `tokens`. */
export type TokenSelector = z.infer<typeof tokenSelector>;

const traceFields = {
  /** (site, window) pairs; window w restores layers l-w//2 .. l+(w-1)//2 (ROME's window). */
  grid: z
    .array(gridEntry)
    .min(1)
    .superRefine((grid, zctx) => {
      const seen = new Map<string, number>();
      grid.forEach((g, i) => {
        // "all" heads are not known before the model is: "*" stands for them here; check() repeats this per head.
        const keys = gridKeys(g.site, g.window, g.heads === "all" ? ["*"] : g.heads);
        const clash = keys.map((k) => seen.get(k)).find((f) => f !== undefined);
        if (clash !== undefined) {
          zctx.addIssue({
            code: "custom",
            path: [i],
            message: `duplicate of grid[${clash}] (${describeEntry(g)}): it would plan the same cells twice; remove it`,
          });
        }
        for (const k of keys) if (!seen.has(k)) seen.set(k, i);
      });
    })
    .default([{ site: "residual", window: 1 }]),
  tokens: z.union([z.literal("all"), z.array(tokenSelector).min(1)], { error: `expected "all" or a list of token groups / indices` }).default("all"),
};

/** The cells a grid entry plans, one key per (site label, window): `embed` ignores its window; heads each have their own. */
const gridKeys = (site: string, window: number, heads?: readonly (number | string)[]): string[] =>
  site === "embed" ? ["embed"] : heads === undefined ? [`${site}|${window}`] : heads.map((h) => `${site}.h${h}|${window}`);

const describeEntry = (g: { site: string; window: number; heads?: "all" | readonly number[] }): string =>
  `${g.site}, window ${g.window}${g.heads === undefined ? "" : `, heads ${g.heads === "all" ? "all" : `[${g.heads.join(", ")}]`}`}`;

/** @throws SpecError when grid[i]'s `heads` names a site without heads or a head the model does not have. */
function checkHeads(g: { site: SiteName; heads?: "all" | readonly number[] }, i: number, modelConfig: ModelConfig): void {
  if (g.heads === undefined) return;
  const path = `grid[${i}].heads`;
  const headSites = HEAD_SITES_BY_MODEL_TYPE[modelConfig.modelType] as readonly SiteName[];
  if (!headSites.includes(g.site)) {
    const which = headSites.length
      ? `only ${headSites.join(", ")} has per-head restores`
      : `${modelConfig.modelType} models have no per-head sites (Mamba-2's ssm has)`;
    throw new SpecError(`${path}: site "${g.site}" of ${modelConfig.modelType} has no heads: ${which}; remove heads to restore the whole site`, {
      path,
      expected: headSites.length ? `heads only with site ${headSites.join("|")}` : "no heads",
      received: g.heads,
    });
  }
  const n = modelConfig.numHeads;
  if (n === undefined) {
    throw new SpecError(`${path}: the model's config.json has no num_heads, so its heads are unknown; add num_heads to config.json or remove heads`, {
      path,
      expected: "a config.json with num_heads",
      received: g.heads,
    });
  }
  const bad = g.heads === "all" ? undefined : g.heads.find((h) => h >= n);
  if (bad !== undefined) {
    throw new SpecError(`${path}: head ${bad} is outside this model's ${n} heads; expected indices 0..${n - 1} or "all"`, {
      path,
      expected: `0..${n - 1}`,
      received: g.heads,
    });
  }
}

type TraceContext = KindPlanContext<SpecOf<typeof traceFields>>;

/** Prompts → cells → shards; `lazy`: shards made per prompt as they are iterated (see planCellsPerPrompt). */
function planTrace(ctx: TraceContext, lazy: false): KindPlan;
function planTrace(ctx: TraceContext, lazy: true): KindPlan<ShardList>;
function planTrace(ctx: TraceContext, lazy: boolean): KindPlan<ShardList> {
  const { spec, sweepId, modelConfig, model } = ctx;
  return planCellsPerPrompt(
    planKindPrompts(ctx),
    (p) => expandCells(p, spec, modelConfig.numLayers, modelConfig.numHeads ?? 0),
    (p, cells) => shardPrompt(p, cells, { sweepId, shardCells: spec.shard_cells, model, kind: spec.kind }),
    ctx.limits,
    lazy,
  );
}

/** Causal tracing: cells of (site, window, layer, token) restored one at a time. */
export const traceKind: SweepKindModule<"trace", typeof traceFields, never> = {
  name: "trace",
  specFields: traceFields,
  check(spec, modelConfig) {
    const allowed = SITES_BY_MODEL_TYPE[modelConfig.modelType] as readonly SiteName[];
    spec.grid.forEach((g, i) => {
      if (!allowed.includes(g.site)) {
        throw new SpecError(`grid[${i}].site: "${g.site}" is not a site of ${modelConfig.modelType} models; expected one of ${allowed.join(", ")}`, {
          path: `grid[${i}].site`,
          expected: allowed.join("|"),
          received: g.site,
        });
      }
      checkHeads(g, i, modelConfig);
    });
    // Windows past 2 × layers restore every layer around every centre: they plan the same cells as 2 × layers.
    const seen = new Map<string, number>();
    spec.grid.forEach((g, i) => {
      for (const key of gridKeys(g.site, effectiveWindow(g.window, modelConfig.numLayers), gridHeads(g.heads, modelConfig.numHeads ?? 0))) {
        const first = seen.get(key);
        if (first !== undefined && first !== i) {
          const why =
            spec.grid[first]!.window === g.window
              ? `: both restore ${key.split("|")[0]} at window ${g.window} (heads "all" names every head of this ${modelConfig.numHeads ?? 0}-head model)`
              : ` on this ${modelConfig.numLayers}-layer model (windows of ${2 * modelConfig.numLayers} or more all restore every layer)`;
          throw new SpecError(`grid[${i}]: same cells as grid[${first}]${why}; remove one`, {
            path: `grid[${i}]`,
            expected: "distinct (site, window, head) entries",
            received: g,
          });
        }
        seen.set(key, i);
      }
    });
  },
  plan: (ctx) => planTrace(ctx, false),
  planLazy: (ctx) => planTrace(ctx, true),
  units: (sh) => sh.cells.length,
  /** Trace rows are control.ResultRow's own fields (sweepctl's RESULT_COLUMNS), not `fields_json`. */
  columns: [],
};

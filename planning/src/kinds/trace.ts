/**
 * The `trace` kind: causal tracing over a grid of cells (prompt × (site, window) × layer × token).
 * Its spec fields are top-level (`grid`, `tokens`); grid.ts expands and shards the cells and
 * effects.ts aggregates them ({@link ResultAggregator}, viewed by {@link modelTrace}); the engine
 * side is the worker's cell runner (engine/trace.py), not an experiment module.
 */
import { z } from "zod";
import { SpecError } from "../errors.js";
import { effectiveWindow, expandCells, shardPrompt } from "../grid.js";
import { SITE_NAMES, SITES_BY_MODEL_TYPE, type SiteName } from "../sites.js";
import { TOKEN_GROUPS } from "../token-groups.js";
import { planCellsPerPrompt, planKindPrompts } from "./common.js";
import type { SweepKindModule } from "./kind.js";

/** Token selectors: a group name, `subject` (every subject token), or a token index (negative: from the end). */
export const TOKEN_SELECTORS = [...TOKEN_GROUPS, "subject"] as const;

const gridEntry = z.strictObject({
  site: z.enum(SITE_NAMES),
  window: z.number().int().min(1).default(1),
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
        const key = gridKey(g.site, g.window);
        const first = seen.get(key);
        if (first !== undefined) {
          zctx.addIssue({
            code: "custom",
            path: [i],
            message: `duplicate of grid[${first}] (${g.site}, window ${g.window}): it would plan the same cells twice; remove it`,
          });
        }
        seen.set(key, first ?? i);
      });
    })
    .default([{ site: "residual", window: 1 }]),
  tokens: z.union([z.literal("all"), z.array(tokenSelector).min(1)], { error: `expected "all" or a list of token groups / indices` }).default("all"),
};

/** The cells a grid entry plans: `embed` ignores its window. */
const gridKey = (site: string, window: number): string => (site === "embed" ? "embed" : `${site}|${window}`);

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
    });
    // Windows past 2 × layers restore every layer around every centre: they plan the same cells as 2 × layers.
    const seen = new Map<string, number>();
    spec.grid.forEach((g, i) => {
      const key = gridKey(g.site, effectiveWindow(g.window, modelConfig.numLayers));
      const first = seen.get(key);
      if (first !== undefined) {
        throw new SpecError(
          `grid[${i}]: same cells as grid[${first}] on this ${modelConfig.numLayers}-layer model (windows of ${2 * modelConfig.numLayers} or more all restore every layer); remove one`,
          { path: `grid[${i}]`, expected: "distinct (site, window) entries", received: g },
        );
      }
      seen.set(key, i);
    });
  },
  plan(ctx) {
    const { spec, sweepId, modelConfig, model } = ctx;
    return planCellsPerPrompt(
      planKindPrompts(ctx),
      (p) => expandCells(p, spec, modelConfig.numLayers),
      (p, cells) => shardPrompt(p, cells, { sweepId, shardCells: spec.shard_cells, model, kind: spec.kind }),
      ctx.limits,
    );
  },
  units: (sh) => sh.cells.length,
  /** Trace rows are control.ResultRow's own fields (sweepctl's RESULT_COLUMNS), not `fields_json`. */
  columns: [],
};

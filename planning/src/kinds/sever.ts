/**
 * The `sever` kind (paper §2 path blocking, engine/experiments/sever.py): the clean residual state
 * restored at (token, layer) with one path frozen to its corrupted value. Per prompt, cells
 * selector × position × layer × path cut by `shard_cells`; aggregate: mean recovery
 * (p − p*)/(p_clean − p*) per (path, token selector, layer).
 */
import { z } from "zod";
import { indirectEffect } from "../effects.js";
import { PromptError, ResultError, SpecError } from "../errors.js";
import { resolveLayers } from "../layers.js";
import { GROUPS_BY_SCHEME } from "../token-groups.js";
import {
  checkAllowed,
  kindShard,
  planCellsPerPrompt,
  planKindPrompts,
  sectionKind,
  selectorPositions,
  shardParams,
  slices,
  Sums,
  type PromptTokens,
} from "./common.js";
import type { SpecOf, SweepKindModule } from "./kind.js";

/** A spec as this kind sees it. */
type SeverSpec = SpecOf<typeof own.specFields>;

/** Paths a sever cell may freeze, per model type; `none` is plain restoration. */
export const SEVER_PATHS = {
  mamba: ["none", "ssm", "gate", "mixer", "in_ssm", "conv"],
  mamba2: ["none", "ssm", "gate", "mixer", "in_ssm", "conv"],
  gpt_neox: ["none", "attn", "mlp"],
} as const;
/** Default sever paths per model type (the paper's figure: none, s, g, the whole block o). */
export const DEFAULT_SEVER_PATHS = {
  mamba: ["none", "ssm", "gate", "mixer"],
  mamba2: ["none", "ssm", "gate", "mixer"],
  gpt_neox: ["none", "attn", "mlp"],
} as const;

export const severSection = z.strictObject({
  /** Paths to freeze; default per model type ({@link DEFAULT_SEVER_PATHS}). */
  paths: z.array(z.string().min(1)).min(1).optional(),
  /** Tokens whose residual state is restored (token groups, `subject`, or indices). */
  tokens: z
    .array(z.union([z.string().min(1), z.number().int()], { error: "expected a token group name or a token index" }))
    .min(1)
    .default(["subject_last", "last"]),
});
export type SeverSection = z.infer<typeof severSection>;

/** A sever cell and the token selector that chose it (the aggregate is per selector). */
export interface SeverCell {
  token: number;
  layer: number;
  path: string;
  selector: string;
}

/** The sever aggregate. */
export interface SeverSummary {
  points: { path: string; token: string; layer: number; recovery: number | null; n: number }[];
}

/** The sever paths of a spec for a model type, checked. */
export function severPaths(spec: SeverSpec, modelType: string): string[] {
  const allowed = (SEVER_PATHS as Record<string, readonly string[]>)[modelType] ?? [];
  return checkAllowed(
    spec.sever?.paths ?? [...((DEFAULT_SEVER_PATHS as Record<string, readonly string[]>)[modelType] ?? [])],
    allowed,
    "sever.paths",
    "a path",
    modelType,
  );
}

const ALL_GROUPS = [...GROUPS_BY_SCHEME.rome, ...GROUPS_BY_SCHEME.romba] as readonly string[];

/** Every sever cell of one prompt, in shard order (selector × position × layer × path). */
export function severCells(spec: SeverSpec, prompt: PromptTokens, modelType: string, numLayers: number): SeverCell[] {
  const layers = resolveLayers(spec.layers, numLayers);
  const paths = severPaths(spec, modelType);
  const cells: SeverCell[] = [];
  for (const sel of spec.sever!.tokens) {
    if (typeof sel === "string" && sel !== "subject" && !ALL_GROUPS.includes(sel)) {
      throw new SpecError(`sever.tokens: "${sel}" is not a token group; expected subject, an index, or one of ${[...new Set(ALL_GROUPS)].join(", ")}`, {
        path: "sever.tokens",
        expected: "a token group",
        received: sel,
      });
    }
    const outside = (n: number) => new PromptError(`sever.tokens: index ${sel} is outside this prompt of ${n} tokens`, prompt.index);
    for (const token of selectorPositions(sel, prompt, spec.token_groups, outside)) {
      for (const layer of layers) for (const path of paths) cells.push({ token, layer, path, selector: String(sel) });
    }
  }
  return cells;
}

const own = sectionKind("sever", severSection);

/** Path blocking. */
export const severKind: SweepKindModule<"sever", typeof own.specFields, SeverSummary> = {
  ...own,
  plan(ctx) {
    const { spec, modelConfig } = ctx;
    severPaths(spec, modelConfig.modelType);
    const plan = planKindPrompts(ctx);
    return planCellsPerPrompt(
      plan,
      (p) => severCells(spec, p, modelConfig.modelType, modelConfig.numLayers),
      (p, cells) =>
        [...slices(cells.length, spec.shard_cells)].map(({ at, part }) =>
          kindShard(ctx, p, part, { cells: cells.slice(at, at + spec.shard_cells).map(({ token, layer, path }) => ({ token, layer, path })) }),
        ),
      ctx.limits,
    );
  },
  units: (sh) => shardParams<{ cells?: unknown[] }>(sh).cells?.length ?? 0,
  columns: ["shard_id", "prompt_index", "relation", "subject", "token", "token_selector", "layer", "path", "p", "p_clean", "p_corrupt", "recovery"],
  aggregate(opts) {
    const sums = new Sums();
    const cellsOf = new Map<number, SeverCell[]>();
    return {
      fold(r, { shardId, prompt, part, bad }) {
        const p = r.p as number[] | undefined;
        if (!Array.isArray(p)) throw bad("p");
        let all = cellsOf.get(prompt.index);
        if (!all) cellsOf.set(prompt.index, (all = severCells(opts.spec, prompt, opts.modelType, opts.numLayers)));
        const n = opts.spec.shard_cells;
        const cells = all.slice(part * n, (part + 1) * n);
        if (cells.length !== p.length) throw new ResultError(`shard ${shardId}: ${p.length} sever results for ${cells.length} planned cells`, shardId);
        const pClean = Number(r.p_clean);
        const pCorrupt = Number(r.p_corrupt);
        return cells.map((c, i) => {
          const recovery = indirectEffect(p[i]!, pCorrupt, pClean);
          sums.add(`${c.path}|${c.selector}|${c.layer}`, recovery);
          return {
            prompt_index: prompt.index,
            relation: prompt.relation,
            subject: prompt.subject,
            token: c.token,
            token_selector: c.selector,
            layer: c.layer,
            path: c.path,
            p: p[i]!,
            p_clean: pClean,
            p_corrupt: pCorrupt,
            recovery,
          };
        });
      },
      summary: () => ({
        points: sums.points(
          ([path, token, layer], m) => ({ path: path!, token: token!, layer: Number(layer), recovery: m.mean, n: m.n }),
          (a, b) => a.path.localeCompare(b.path) || a.token.localeCompare(b.token) || a.layer - b.layer,
        ),
      }),
    };
  },
  report: {
    heading: "Path blocking (sever)",
    intro:
      'The clean residual state at (token, layer) is restored into the corrupted run while the named path is frozen to its corrupted value at that token in every later layer; a drop against "none" means the restored state reaches the answer through that path.',
    charts: [
      (s, label) => ({
        mark: "line",
        title: `${label}: restoring h with a path severed`,
        values: s.points.filter((p) => p.recovery !== null).map((p) => ({ ...p, path: p.path === "none" ? "none (plain restore)" : p.path })),
        x: { field: "layer", title: "layer" },
        y: { field: "recovery", title: "recovery (p − p*) / (p_clean − p*)" },
        color: "path",
        facet: "token",
      }),
    ],
  },
};

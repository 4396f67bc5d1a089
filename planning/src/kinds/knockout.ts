/**
 * The `knockout` kind (paper §5, engine/experiments/knockout.py): information flow from token sets
 * to the last token, knocked out over a window of layers around each centre. One shard per prompt;
 * aggregate: mean relative change (p_knocked − p)/p per (token set, window centre).
 */
import { z } from "zod";
import { effectiveWindow } from "../grid.js";
import { resolveLayers } from "../layers.js";
import { corpusSchema, kindShard, loadCorpus, needTokenizer, planKindPrompts, resolveCorpus, sectionKind, shardParams, Sums } from "./common.js";
import type { SweepKindModule } from "./kind.js";

/** Knockout token sets (engine/experiments/knockout.py). */
export const KNOCKOUT_SETS = ["subject", "subject_last", "non_subject", "last"] as const;

const posInt = z.number().int().min(1);

export const knockoutSection = z.strictObject({
  /** Layers knocked out around each centre (ROME's window: l − w//2 … l + ⌈w/2⌉ − 1). */
  window: posInt.max(1024).default(10),
  token_sets: z
    .array(z.enum(KNOCKOUT_SETS))
    .min(1)
    .default([...KNOCKOUT_SETS]),
  /** Mamba only: the text the mean of a is taken over. */
  corpus: corpusSchema.default("dataset"),
  /** At most this many corpus documents … */
  max_corpus: posInt.max(1024).default(128),
  /** … each cut to this many tokens (romba: 128). */
  corpus_tokens: posInt.max(2048).default(128),
});
export type KnockoutSection = z.infer<typeof knockoutSection>;

/** The knockout aggregate. */
export interface KnockoutSummary {
  window: number;
  points: { token_set: string; layer: number; relative_change: number | null; n: number }[];
}

const own = sectionKind("knockout", knockoutSection);

/** Information-flow knockout. */
export const knockoutKind: SweepKindModule<"knockout", typeof own.specFields, KnockoutSummary> = {
  ...own,
  resolvePaths: (spec, resolve) => resolveCorpus(spec.knockout, resolve),
  plan(ctx) {
    const { spec, modelConfig } = ctx;
    const k = spec.knockout!;
    const layers = resolveLayers(spec.layers, modelConfig.numLayers);
    // The clean run is all knockout needs; a one-sample noise corruption is the cheapest to prepare and never lacks a partner.
    const planSpec = { ...spec, corruption: { kind: "noise" as const, scale: 3, std: 1, samples: 1, seed: 1 } };
    const plan = planKindPrompts(ctx, planSpec);
    let corpus: number[][] | undefined;
    if ((modelConfig.modelType === "mamba" || modelConfig.modelType === "mamba2") && plan.prompts.length > 0) {
      const c = loadCorpus(
        k.corpus,
        "knockout.corpus",
        needTokenizer(ctx),
        plan.prompts.map((p) => p.text),
        k.max_corpus,
        k.corpus_tokens,
        false,
        ctx.limits.maxFileBytes,
      );
      corpus = "ids" in c ? c.ids : [];
    }
    const window = effectiveWindow(k.window, modelConfig.numLayers);
    const shards = plan.prompts.map((p) => kindShard(ctx, p, 0, { layers, window, token_sets: k.token_sets, ...(corpus ? { corpus } : {}) }));
    return { prompts: plan.prompts, promptErrors: plan.errors, shards, plannedCells: plan.prompts.length * layers.length * k.token_sets.length };
  },
  units(sh) {
    const p = shardParams<{ layers?: unknown[]; token_sets?: unknown[] }>(sh);
    return (p.layers?.length ?? 1) * (p.token_sets?.length ?? 4);
  },
  columns: ["shard_id", "prompt_index", "relation", "subject", "token_set", "layer", "window", "p", "p_knocked", "relative_change"],
  aggregate(opts) {
    const sums = new Sums();
    let window = 0;
    return {
      fold(r, { prompt, bad }) {
        const rows = r.rows as { layer: number; token_set: string; p_knocked: number; relative_change: number }[] | undefined;
        if (!Array.isArray(rows)) throw bad("rows");
        window = Number(r.window ?? 0);
        return rows.map((x) => {
          sums.add(`${x.token_set}|${x.layer}`, x.relative_change);
          return {
            prompt_index: prompt.index,
            relation: prompt.relation,
            subject: prompt.subject,
            token_set: x.token_set,
            layer: x.layer,
            window: Number(r.window),
            p: Number(r.p),
            p_knocked: x.p_knocked,
            relative_change: x.relative_change,
          };
        });
      },
      summary: () => ({
        window: window || opts.spec.knockout!.window,
        points: sums.points(
          ([set, layer], m) => ({ token_set: set!, layer: Number(layer), relative_change: m.mean, n: m.n }),
          (a, b) => a.token_set.localeCompare(b.token_set) || a.layer - b.layer,
        ),
      }),
    };
  },
  report: {
    heading: "Information-flow knockout",
    intro:
      "Mamba: mean-ablation of a = W_a·norm(h) at the set&#39;s positions (clean a restored elsewhere, last token untouched); NeoX: attention from the last token to the set blocked. Mean relative change of p(answer) over prompts, per token set and window centre.",
    charts: [
      (s, label) => ({
        mark: "line",
        title: `${label}: knockout, window ${s.window}`,
        values: s.points.filter((p) => p.relative_change !== null),
        x: { field: "layer", title: "centre of knocked-out layers" },
        y: { field: "relative_change", title: "(p_knocked − p) / p" },
        color: "token_set",
      }),
    ],
  },
};

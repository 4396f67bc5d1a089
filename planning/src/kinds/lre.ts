/**
 * The `lre` kind (paper §4, Hernandez et al.; engine/experiments/lre.py): a Jacobian linear
 * relation embedding fitted from h at the subject's last token, per (relation, layer, trial).
 * Shard index = relation, part = layer index × trials + trial; aggregate: faithfulness per
 * (relation, layer, β) averaged over trials, the best (layer, β) per relation and overall.
 */
import type { sweep } from "@factsweep/proto";
import { FactsweepError } from "@factsweep/shared";
import { z } from "zod";
import type { Fact } from "../datasets.js";
import { SpecError } from "../errors.js";
import { resolveLayers } from "../layers.js";
import type { PlanError } from "../prompts.js";
import type { PromptTokenizer } from "../tokenizer.js";
import { kindShard, mix, needRelations, needTokenizer, sectionKind, shardParams, shuffle, Sums } from "./common.js";
import type { SpecOf, SweepKindModule } from "./kind.js";

/** A spec as this kind sees it. */
type LreSpec = SpecOf<typeof own.specFields>;

const posInt = z.number().int().min(1);

/** β grid of the paper's Mamba sweep: linspace(0, 12, 25). */
export const DEFAULT_BETAS = Array.from({ length: 25 }, (_, i) => i * 0.5);

export const lreSection = z.strictObject({
  /** n: training facts per trial; J and b are averaged over them (Hernandez et al.: 5). */
  icl: posInt.max(64).default(5),
  /** Prompts carry in-context examples (the other training facts, "template(s) object" lines). */
  in_context: z.boolean().default(true),
  betas: z.array(z.number().finite()).min(1).default(DEFAULT_BETAS),
  trials: posInt.max(100).default(3),
  /** At most this many test facts per trial. */
  test: posInt.max(10_000).default(30),
  /** Also fit at the token embedding (layer −1, "emb" in the paper). */
  embedding: z.boolean().default(true),
  seed: z.number().int().min(0).default(1),
  /** Output coordinates per backward batch (engine default when absent). */
  jacobian_rows: posInt.optional(),
});
export type LreSection = z.infer<typeof lreSection>;

/** One pre-tokenized LRE fact as the engine takes it. */
export interface LreFact {
  ids: number[];
  subject_last: number;
  object_id: number;
}

/** The lre aggregate. */
export interface LreSummary {
  betas: number[];
  points: { relation: string; layer: number; beta: number; faithfulness: number | null; trials: number }[];
  /** Per relation: its best (layer, β). */
  best: { relation: string; layer: number; beta: number; faithfulness: number | null }[];
  /** The single (layer, β) with the highest mean faithfulness over relations, and each relation's value there. */
  overall: { layer: number; beta: number; mean: number | null; relations: { relation: string; faithfulness: number | null }[] } | null;
}

/** The layers an lre sweep fits at: −1 (embedding) when `lre.embedding`, then the spec's layers. */
export function lreLayers(spec: LreSpec, numLayers: number): number[] {
  return [...(spec.lre!.embedding ? [-1] : []), ...resolveLayers(spec.layers, numLayers)];
}

/**
 * Hernandez et al.'s in-context prompt: the examples as "template(subject) object" lines joined
 * by newlines, then the query. The query is tokenized alone and appended to the examples' tokens,
 * so the subject span is exact whatever the examples are.
 */
export function lrePrompt(tokenizer: PromptTokenizer, template: string, examples: readonly Fact[], query: Fact): LreFact {
  const text = template.replace("{}", query.subject);
  const { ids, subjectSpan } = tokenizer.encodeWithSubject(text, query.subject);
  const prefix = examples.length > 0 ? tokenizer.encode(examples.map((f) => `${template.replace("{}", f.subject)} ${f.object}`).join("\n") + "\n") : [];
  return { ids: [...prefix, ...ids], subject_last: prefix.length + subjectSpan[1] - 1, object_id: tokenizer.encode(` ${query.object.trim()}`)[0]! };
}

/** Train and test facts of one (relation, trial): a seeded shuffle, the first `icl` train, the next `test` (other subjects) test. */
export function lreSplit(facts: readonly Fact[], spec: LreSpec, relationIndex: number, trial: number): { train: Fact[]; test: Fact[] } {
  const l = spec.lre!;
  const order = shuffle(facts, mix(l.seed, relationIndex, trial));
  const train = order.slice(0, l.icl);
  const seen = new Set(train.map((f) => f.subject));
  const test = order
    .slice(l.icl)
    .filter((f) => !seen.has(f.subject))
    .slice(0, l.test);
  return { train, test };
}

const own = sectionKind("lre", lreSection);

/** Linear relation embeddings. */
export const lreKind: SweepKindModule<"lre", typeof own.specFields, LreSummary> = {
  ...own,
  plan(ctx) {
    const { spec, modelConfig } = ctx;
    const l = spec.lre!;
    const tok = needTokenizer(ctx);
    const rels = needRelations(ctx);
    const layers = lreLayers(spec, modelConfig.numLayers);
    const prompts: sweep.PromptSpec[] = [];
    const promptErrors: PlanError[] = [];
    const shards: sweep.Shard[] = [];
    let planned = 0;
    rels.forEach((rel, r) => {
      const template = rel.promptTemplates[spec.dataset.template_index];
      const prompt: sweep.PromptSpec = {
        index: r,
        promptKey: `${ctx.sweepId}/${r}`,
        text: template ?? "",
        subject: "",
        object: "",
        relation: rel.key,
        inputIds: [],
        subjectStart: 0,
        subjectEnd: 0,
        corruption: undefined,
      };
      try {
        if (template === undefined)
          throw new FactsweepError(
            `relation ${rel.key} has ${rel.promptTemplates.length} templates; dataset.template_index ${spec.dataset.template_index} is out of range`,
          );
        const facts: Fact[] = rel.samples.slice(0, spec.dataset.per_relation ?? Infinity).map((s, i) => ({
          text: template.replace("{}", s.subject),
          subject: s.subject,
          object: s.object,
          relation: rel.key,
          source: `${rel.key}.json#${i}`,
        }));
        if (facts.length < l.icl + 1) throw new FactsweepError(`relation ${rel.key} has ${facts.length} facts; lre needs at least icl + 1 = ${l.icl + 1}`);
        const parts: sweep.Shard[] = [];
        for (let t = 0; t < l.trials; t++) {
          const { train, test } = lreSplit(facts, spec, r, t);
          const trainFacts = train.map((f) => lrePrompt(tok, template, l.in_context ? train.filter((x) => x !== f) : [], f));
          const testFacts = test.map((f) => lrePrompt(tok, template, l.in_context ? train : [], f));
          layers.forEach((layer, li) => {
            const params = { layer, betas: l.betas, train: trainFacts, test: testFacts, ...(l.jacobian_rows ? { jacobian_rows: l.jacobian_rows } : {}) };
            parts[li * l.trials + t] = kindShard(ctx, prompt, li * l.trials + t, params);
          });
          planned += layers.length * testFacts.length;
        }
        prompts.push(prompt);
        shards.push(...parts);
      } catch (err) {
        if (err instanceof SpecError) throw err;
        promptErrors.push({ index: r, message: `${rel.key}: ${(err as Error).message}` });
      }
    });
    return { prompts, promptErrors, shards, plannedCells: planned };
  },
  units: (sh) => shardParams<{ test?: unknown[] }>(sh).test?.length ?? 0,
  columns: ["shard_id", "relation", "layer", "trial", "beta", "faithfulness", "n_test", "n_test_correct", "n_train"],
  aggregate(opts, promptsByIndex) {
    const sums = new Sums();
    return {
      fold(r, { prompt, part, bad }) {
        const f = r.faithfulness as (number | null)[] | undefined;
        const betas = r.betas as number[] | undefined;
        if (!Array.isArray(f) || !Array.isArray(betas)) throw bad("faithfulness and betas");
        const trial = part % opts.spec.lre!.trials;
        return betas.map((beta, i) => {
          sums.add(`${prompt.relation}|${r.layer}|${beta}`, f[i]);
          return {
            relation: prompt.relation,
            layer: Number(r.layer),
            trial,
            beta,
            faithfulness: f[i] ?? null,
            n_test: Number(r.n_test),
            n_test_correct: Number(r.n_test_correct),
            n_train: Number(r.n_train),
          };
        });
      },
      summary() {
        const l = opts.spec.lre!;
        const relations = [...new Set([...promptsByIndex.values()].map((p) => p.relation))];
        const layers = lreLayers(opts.spec, opts.numLayers);
        const points = relations.flatMap((relation) =>
          layers.flatMap((layer) =>
            l.betas.map((beta) => {
              const m = sums.get(`${relation}|${layer}|${beta}`);
              return { relation, layer, beta, faithfulness: m.mean, trials: m.n };
            }),
          ),
        );
        const best = relations.map((relation) => {
          const mine = points.filter((p) => p.relation === relation && p.faithfulness !== null);
          const b = mine.reduce<(typeof mine)[number] | undefined>((acc, p) => (!acc || p.faithfulness! > acc.faithfulness! ? p : acc), undefined);
          return { relation, layer: b?.layer ?? NaN, beta: b?.beta ?? NaN, faithfulness: b?.faithfulness ?? null };
        });
        let overall: LreSummary["overall"] = null;
        for (const layer of layers) {
          for (const beta of l.betas) {
            const here = relations.map((relation) => ({
              relation,
              faithfulness: points.find((p) => p.relation === relation && p.layer === layer && p.beta === beta)?.faithfulness ?? null,
            }));
            const vals = here.map((h) => h.faithfulness).filter((x): x is number => x !== null);
            const mean = vals.length ? vals.reduce((s, x) => s + x, 0) / vals.length : null;
            if (mean !== null && (!overall || overall.mean === null || mean > overall.mean)) overall = { layer, beta, mean, relations: here };
          }
        }
        return { betas: l.betas, points, best, overall };
      },
    };
  },
  report: {
    heading: "Linear relation embeddings",
    intro:
      "Jacobian LRE (Hernandez et al.) from h at the subject's last token to the last block's output; faithfulness = the LRE's top-1 equals the model's on test facts the model gets right, averaged over trials.",
    note(s) {
      const o = s.overall;
      const above = s.best.filter((b) => (b.faithfulness ?? 0) > 0.5).length;
      return `${o ? `best overall layer ${o.layer === -1 ? "emb" : o.layer}, β ${o.beta}, mean faithfulness ${o.mean?.toFixed(2)}` : "no faithfulness measured"}; ${above} of ${s.best.length} relations above 0.5 at their best layer/β`;
    },
    charts: [
      (s, label) => ({
        mark: "bar",
        title: `${label}: LRE faithfulness`,
        values: [
          ...(s.overall
            ? s.overall.relations.map((r) => ({
                relation: r.relation,
                faithfulness: r.faithfulness,
                at: `best overall (layer ${s.overall!.layer}, β ${s.overall!.beta})`,
              }))
            : []),
          ...s.best.map((b) => ({ relation: b.relation, faithfulness: b.faithfulness, at: "best layer/β per relation" })),
        ].filter((v) => v.faithfulness !== null),
        x: { field: "faithfulness", domain: [0, 1] },
        y: "relation",
        group: "at",
      }),
      (s, label) => {
        const cells = new Sums();
        for (const p of s.points) cells.add(`${p.layer}|${p.beta}`, p.faithfulness);
        const values = cells.keys().map((k) => {
          const [layer, beta] = k.split("|").map(Number);
          return { layer: layer === -1 ? "emb" : String(layer), order: layer, beta, faithfulness: cells.get(k).mean };
        });
        return {
          mark: "rect",
          title: `${label}: mean faithfulness, layer × β`,
          values,
          x: { field: "layer", title: "layer of h (emb = token embedding)", sort: "order" },
          y: { field: "beta", title: "β" },
          color: { field: "faithfulness", domain: [0, 1] },
        };
      },
    ],
  },
};

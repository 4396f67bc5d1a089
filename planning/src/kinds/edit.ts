// long-file: one kind module (spec, planning, folding, rows) as the other kinds; its covariance and trace-layer parts already live in edit-covariance.ts and edit-trace.ts
/**
 * The `edit` kind (paper §3, ROME; engine/experiments/rome/): a rank-one edit of one matrix at one
 * layer per (case, layer, matrix). Shard index = case, part = layer index × matrices + matrix;
 * aggregate: mean ES, PS, NS, EM, PM, NM (+ pre-edit ES/PS/NS) per (matrix, layer), S = harmonic
 * mean of the means (ROME's summarize). scripts/engine/make_edit_cases.mjs builds the engine's test
 * fixture with {@link editCaseParams}.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { sweep } from "@factsweep/proto";
import { FactsweepError } from "@factsweep/shared";
import { z } from "zod";
import type { Relation } from "../datasets.js";
import { SpecError } from "../errors.js";
import { isFromTrace, resolveLayers } from "../layers.js";
import type { PlanError } from "../prompts.js";
import { loadTokenizer, type PromptTokenizer } from "../tokenizer.js";
import { figure4Chart, traceEdits, traceIEAt, traceNote, tracePeakColumns, type EditTraceCurve, type TraceLayers } from "./edit-trace.js";
import { isTraceFolder } from "./trace-evidence.js";
import { checkAllowed, corpusSchema, kindShard, loadCorpus, mix, needRelations, needTokenizer, resolveCorpus, sectionKind, shuffle, Sums } from "./common.js";
import { planCovariance } from "./edit-covariance.js";
import type { KindPlan, KindPlanContext, SpecOf, SweepKindModule } from "./kind.js";

/** A spec as this kind sees it. */
type EditSpec = SpecOf<typeof own.specFields>;

/** A fact of a relation file. */
type RelationSample = Relation["samples"][number];

/** Editable matrices per model type (engine/experiments/rome). */
export const EDIT_MATRICES = { mamba: ["W_o", "W_a", "W_g"], mamba2: ["W_o", "W_a", "W_g"], gpt_neox: ["dense_4h_to_h"] } as const;

/** ROME hyperparameters the engine knows (rome HPARAMS); unknown keys are refused at spec time. */
export const EDIT_HPARAMS = [
  "v_num_grad_steps",
  "v_lr",
  "v_weight_decay",
  "clamp_norm_factor",
  "kl_factor",
  "v_loss_stop",
  "v_prob_stop",
  "v_prob_stop_after",
  "context_template_length_params",
  "context_seed",
  "context_top_k",
  "mom2_adjustment",
  "mom2_max_len",
  "mom2_batch_tokens",
  "cov_ridge",
] as const;

const posInt = z.number().int().min(1);

export const editSection = z.strictObject({
  /** Default per model type ({@link EDIT_MATRICES}). */
  matrices: z.array(z.string().min(1)).min(1).optional(),
  /** Cases (facts to rewrite), taken round-robin over the relations. */
  cases: posInt.max(100_000).default(50),
  paraphrases: z.number().int().min(0).max(32).default(7),
  neighbours: z.number().int().min(0).max(64).default(10),
  /** Covariance corpus: "dataset", a text file, or a .json of token-id lists (then sent as a path agents read, like model.path). */
  corpus: corpusSchema.default("dataset"),
  max_corpus: posInt.max(4096).default(256),
  /**
   * Covariance shards per C (ROME's key covariance, with mom2_adjustment): C of each (layer, key
   * module) is computed once per cluster from this many corpus slices, merged by the coordinator into
   * its object store and fetched by every agent; 0: each engine worker computes its own C.
   */
  cov_shards: z.number().int().min(0).max(256).default(2),
  corpus_tokens: posInt.max(2048).default(64),
  hparams: z.partialRecord(z.enum(EDIT_HPARAMS), z.unknown()).default({}),
  /** Sample continuations for generation entropy (slow; off by default as in the paper's sweeps). */
  generation: z.boolean().default(false),
  seed: z.number().int().min(0).default(1),
});
export type EditSection = z.infer<typeof editSection>;

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
  /** ROME's generation entropy over words of the decoded samples (bits); null when generation is off. */
  entropy: number | null;
}

/** The edit aggregate. */
export interface EditSummary {
  points: EditPoint[];
  trace?: EditTraceCurve;
}

/** The edit matrices of a spec for a model type, checked. */
export function editMatrices(spec: EditSpec, modelType: string): string[] {
  const allowed = (EDIT_MATRICES as Record<string, readonly string[]>)[modelType] ?? [];
  return checkAllowed(spec.edit?.matrices ?? [...allowed], allowed, "edit.matrices", "an editable matrix", modelType);
}

function withSpan(tok: PromptTokenizer, text: string, subject: string): { ids: number[]; subject: [number, number] } {
  const { ids, subjectSpan } = tok.encodeWithSubject(text, subject);
  return { ids, subject: [subjectSpan[0], subjectSpan[1]] };
}

/** Objects of a relation a case may be rewritten to: not the true object, and its first token differs. */
export function newObjectCandidates(tok: PromptTokenizer, samples: readonly RelationSample[], trueObject: string): string[] {
  const trueFirst = tok.encode(` ${trueObject}`)[0];
  return [...new Set(samples.map((x) => x.object))].filter((o) => o !== trueObject && tok.encode(` ${o}`)[0] !== trueFirst);
}

/** Other subjects of the relation with the same true object (the neighbourhood prompts' subjects, in order). */
export function neighbourCandidates(samples: readonly RelationSample[], sample: RelationSample): RelationSample[] {
  return samples.filter((x) => x.object === sample.object && x.subject !== sample.subject);
}

/**
 * One case's prompts pre-tokenized as rome's params take them: rewrite = the first template with
 * the subject (and its in-context form ". " + rewrite), paraphrases = the next templates, the
 * neighbourhood = the first template with `neighbours`, KL prompt "{subject} is a".
 * @throws SubjectNotFoundError when the subject cannot be located in a prompt's tokens.
 */
export function editCaseParams(
  tok: PromptTokenizer,
  templates: readonly string[],
  subject: string,
  trueObject: string,
  newObject: string,
  paraphrases: number,
  neighbours: readonly string[],
) {
  const rewriteText = templates[0]!.replace("{}", subject);
  const rewrite = withSpan(tok, rewriteText, subject);
  return {
    subject_ids: rewrite.ids.slice(rewrite.subject[0], rewrite.subject[1]),
    rewrite: { ...rewrite, in_context: withSpan(tok, `. ${rewriteText}`, subject) },
    target_new_ids: tok.encode(` ${newObject}`),
    target_true_ids: tok.encode(` ${trueObject}`),
    paraphrases: templates.slice(1, 1 + paraphrases).map((t) => tok.encode(t.replace("{}", subject))),
    neighbourhood: neighbours.map((x) => tok.encode(templates[0]!.replace("{}", x))),
    kl_prompts: [withSpan(tok, `${subject} is a`, subject)],
  };
}

/** Cases: per relation a seeded order, taken round-robin until `edit.cases` (every relation represented). */
function planEdit(ctx: KindPlanContext<EditSpec>): KindPlan {
  const { spec, modelConfig } = ctx;
  const e = spec.edit!;
  const tok = needTokenizer(ctx);
  const rels = needRelations(ctx);
  const trace = ctx.traceLayers;
  // layers: { from_trace } is resolved by planSweep (a trace's peaks per fact); otherwise one list for every case.
  const layers = trace ? [] : resolveLayers(spec.layers, modelConfig.numLayers);
  const matrices = editMatrices(spec, modelConfig.modelType);
  const queues = rels.map((rel, r) => shuffle(rel.samples.slice(0, spec.dataset.per_relation ?? Infinity), mix(e.seed, r)).map((s) => ({ rel, s })));
  const prompts: sweep.PromptSpec[] = [];
  const promptErrors: PlanError[] = [];
  const shards: sweep.Shard[] = [];
  const texts = rels.flatMap((rel) => rel.samples.map((s) => `${rel.promptTemplates[0]!.replace("{}", s.subject)} ${s.object}`));
  const corpus = loadCorpus(e.corpus, "edit.corpus", tok, texts, e.max_corpus, e.corpus_tokens, true, ctx.limits.maxFileBytes);
  let index = 0;
  for (let round = 0; prompts.length < e.cases && queues.some((q) => q.length > round); round++) {
    for (const q of queues) {
      if (prompts.length >= e.cases) break;
      const item = q[round];
      if (!item) continue;
      const { rel, s } = item;
      const at = index++;
      try {
        const newObject = shuffle(newObjectCandidates(tok, rel.samples, s.object), mix(e.seed, at))[0];
        if (newObject === undefined)
          throw new FactsweepError(`no new object: relation ${rel.key} has no other object whose first token differs from " ${s.object}"`);
        const neighbours = shuffle(neighbourCandidates(rel.samples, s), mix(e.seed, at, 7))
          .slice(0, e.neighbours)
          .map((x) => x.subject);
        const params = {
          ...editCaseParams(tok, rel.promptTemplates, s.subject, s.object, newObject, e.paraphrases, neighbours),
          ...("ids" in corpus ? { corpus: corpus.ids } : { corpus_path: corpus.path }),
          bos_id: 0,
          hparams: e.hparams,
          generation: e.generation ? { return_ids: true } : null, // decoded here: the entropy counts words, as ROME's does
        };
        const prompt: sweep.PromptSpec = {
          index: prompts.length,
          promptKey: `${ctx.sweepId}/${prompts.length}`,
          text: rel.promptTemplates[0]!.replace("{}", s.subject),
          subject: s.subject,
          object: s.object,
          relation: rel.key,
          inputIds: params.rewrite.ids,
          subjectStart: params.rewrite.subject[0],
          subjectEnd: params.rewrite.subject[1],
          corruption: undefined,
        };
        // Part = position in (layer, matrix) order: li × matrices + mi for a layer list.
        const edits = trace ? traceEdits(trace, prompt, matrices) : layers.flatMap((layer) => matrices.map((matrix) => ({ matrix, layer })));
        edits.forEach(({ matrix, layer }, part) => shards.push(kindShard(ctx, prompt, part, { matrix, layer, ...params })));
        prompts.push(prompt);
      } catch (err) {
        if (err instanceof SpecError) throw err;
        promptErrors.push({ index: at, message: `${rel.key}.json (${s.subject}): ${(err as Error).message}` });
      }
    }
  }
  if (e.cov_shards > 0 && e.hparams.mom2_adjustment !== false && prompts.length > 0) {
    // C once per cluster: covariance shards after the edits (on the first case's prompt); each edit names its C.
    // From a trace each case has its own layers (part = matrix): C for every layer some case edits.
    const covLayers = trace ? [...new Set(shards.map((sh) => (JSON.parse(sh.paramsJson) as { layer: number }).layer))].sort((a, b) => a - b) : layers;
    const firstPart = trace ? matrices.length : layers.length * matrices.length;
    const cov = planCovariance(ctx, prompts[0]!, firstPart, covLayers, matrices, corpus, e.hparams, e.cov_shards);
    for (const sh of shards) {
      const p = JSON.parse(sh.paramsJson) as { layer: number; matrix: string };
      sh.paramsJson = JSON.stringify({ ...p, covariance: { object: cov.objectOf.get(`${p.layer}|${p.matrix}`) } });
    }
    shards.push(...cov.shards);
  }
  return { prompts, promptErrors, shards, plannedCells: shards.length };
}

/**
 * Words as nltk's `word_tokenize` (ROME's generation entropy) splits them, closely: runs of letters
 * and digits (numbers keep inner "." and ","), contractions split off ("don't" → "do", "n't";
 * "it's" → "it", "'s"), every other non-space character alone.
 */
export function wordTokens(text: string): string[] {
  return text.match(/[\p{L}\p{N}]+(?=n't\b)|n't\b|'\p{L}+|\p{N}+(?:[.,]\p{N}+)+|[\p{L}\p{N}_]+|[^\s\p{L}\p{N}_]/gu) ?? [];
}

/** ROME's n-gram entropy of one sequence (bits): the mean of the 2- and 3-gram entropies weighted 2/3 and 4/3. */
export function ngramEntropy(tokens: readonly (string | number)[], ns: readonly number[] = [2, 3], weights: readonly number[] = [2 / 3, 4 / 3]): number {
  const ents = ns.map((n) => {
    const counts = new Map<string, number>();
    for (let i = 0; i + n <= tokens.length; i++) {
      const g = JSON.stringify(tokens.slice(i, i + n));
      counts.set(g, (counts.get(g) ?? 0) + 1);
    }
    const total = tokens.length - n + 1;
    let h = 0;
    for (const c of counts.values()) h -= (c / total) * Math.log2(c / total);
    return total > 0 ? h : 0;
  });
  return ents.reduce((sum, h, i) => sum + h * weights[i]!, 0) / ents.length;
}

/** The spec's tokenizer (model.tokenizer or the model folder's), or null when none can be read here. */
function specTokenizer(model: { path: string; tokenizer?: string }): PromptTokenizer | null {
  try {
    if (model.tokenizer) return loadTokenizer(model.tokenizer);
    const inFolder = join(model.path, "tokenizer.json");
    return existsSync(inFolder) ? loadTokenizer(inFolder) : null;
  } catch {
    return null;
  }
}

const METRICS = ["ES", "PS", "NS", "EM", "PM", "NM"] as const;
const SHOWN = ["ES", "PS", "NS", "S"] as const;
const own = sectionKind("edit", editSection);

/** Rank-one model editing. */
export const editKind: SweepKindModule<"edit", typeof own.specFields, EditSummary> = {
  ...own,
  resolvePaths: (spec, resolve) => {
    resolveCorpus(spec.edit, resolve);
    if (isFromTrace(spec.layers) && isTraceFolder(spec.layers.from_trace)) spec.layers.from_trace = resolve(spec.layers.from_trace);
  },
  plan: planEdit,
  units: () => 1,
  columns: [
    "shard_id",
    "case",
    "relation",
    "subject",
    "matrix",
    "layer",
    "ES",
    "PS",
    "NS",
    "S",
    "EM",
    "PM",
    "NM",
    "pre_ES",
    "pre_PS",
    "pre_NS",
    "entropy",
    "entropy_tokens",
    "restored",
    "trace_layer",
    "trace_ie",
  ],
  aggregate(opts: { spec: { model: { path: string; tokenizer?: string } }; traceLayers?: TraceLayers }) {
    const sums = new Sums();
    const trace = opts.traceLayers;
    let tok: PromptTokenizer | null | undefined; // loaded at the first sample that needs it
    /** ROME's entropy over words of the decoded samples; the engine's over token ids when no tokenizer can be read. */
    const entropyOf = (g: { entropy?: number; ids?: number[][] } | null | undefined): number | null => {
      if (!g) return null;
      if (Array.isArray(g.ids) && g.ids.length > 0 && (tok ??= specTokenizer(opts.spec.model))) {
        const t = tok;
        return g.ids.reduce((sum, ids) => sum + ngramEntropy(wordTokens(t.decode(ids))), 0) / g.ids.length;
      }
      return g.entropy ?? null;
    };
    return {
      fold(r, { prompt, bad }) {
        if (r.cov_only === true) return []; // a covariance shard: its moment went to the object store
        const post = r.post as (Record<string, number | null> & { generation?: { entropy?: number; ids?: number[][] } | null }) | undefined;
        const pre = r.pre as Record<string, number | null> | undefined;
        if (!post || !pre) throw bad("pre/post evaluation");
        const key = `${r.matrix}|${r.layer}`;
        const entropy = entropyOf(post.generation);
        for (const m of METRICS) sums.add(`${key}|${m}`, post[m]);
        for (const m of ["ES", "PS", "NS"]) sums.add(`${key}|pre_${m}`, pre[m]);
        sums.add(`${key}|entropy`, entropy);
        sums.add(`${key}|cases`, 1);
        return [
          {
            case: prompt.index,
            relation: prompt.relation,
            subject: prompt.subject,
            matrix: String(r.matrix),
            layer: Number(r.layer),
            ES: post.ES ?? null,
            PS: post.PS ?? null,
            NS: post.NS ?? null,
            S: post.S ?? null,
            EM: post.EM ?? null,
            PM: post.PM ?? null,
            NM: post.NM ?? null,
            pre_ES: pre.ES ?? null,
            pre_PS: pre.PS ?? null,
            pre_NS: pre.NS ?? null,
            entropy,
            entropy_tokens: post.generation?.entropy ?? null,
            restored: r.restored === true,
            // The fact's peak in the trace (layers: { from_trace }): where its IE at the last subject token was highest.
            ...tracePeakColumns(trace, prompt, String(r.matrix)),
          },
        ];
      },
      summary() {
        const keys = new Set(sums.keys().map((k) => k.split("|").slice(0, 2).join("|")));
        const points = [...keys].map((key): EditPoint => {
          const [matrix, layer] = key.split("|");
          const g = (m: string) => sums.get(`${key}|${m}`).mean;
          const [ES, PS, NS] = [g("ES"), g("PS"), g("NS")];
          return {
            matrix: matrix!,
            layer: Number(layer),
            cases: sums.get(`${key}|cases`).n,
            ES,
            PS,
            NS,
            S: harmonic([ES, PS, NS]),
            EM: g("EM"),
            PM: g("PM"),
            NM: g("NM"),
            pre_ES: g("pre_ES"),
            pre_PS: g("pre_PS"),
            pre_NS: g("pre_NS"),
            entropy: g("entropy"),
          };
        });
        points.sort((a, b) => a.matrix.localeCompare(b.matrix) || a.layer - b.layer);
        return trace ? { points, trace: { sweepId: trace.sweepId, chosen: !trace.editLayers, matrices: trace.matrices } } : { points };
      },
    };
  },
  report: {
    heading: "Rank-one editing (ROME)",
    intro: "Efficacy ES, paraphrase PS, neighbourhood NS after the edit, and S their harmonic mean (ROME's summarize), per edited matrix and layer.",
    charts: [
      (s, label) => ({
        mark: "line",
        title: `${label}: ROME scores per layer`,
        values: s.points.flatMap((p) => SHOWN.filter((m) => p[m] !== null).map((m) => ({ matrix: p.matrix, layer: p.layer, metric: m, score: 100 * p[m]! }))),
        x: { field: "layer", title: "layer" },
        y: { field: "score", title: "score (%)", domain: [0, 100] },
        color: "metric",
        facet: "matrix",
      }),
      figure4Chart,
    ],
    note: traceNote,
    table: {
      head: ["matrix", "layer", "cases", ...SHOWN, "trace IE"],
      rows: (s) =>
        s.points.map((p) => {
          const ie = traceIEAt(s, p.matrix, p.layer);
          return [p.matrix, p.layer, p.cases, ...SHOWN.map((m) => (p[m] === null ? "" : (100 * p[m]!).toFixed(1))), ie === null ? "" : (100 * ie).toFixed(1)];
        }),
    },
  },
};

/** ROME's S: the harmonic mean, null if a value is missing, 0 if one is 0. */
function harmonic(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null);
  if (v.length !== xs.length || v.length === 0) return null;
  return v.some((x) => x === 0) ? 0 : v.length / v.reduce((s, x) => s + 1 / x, 0);
}

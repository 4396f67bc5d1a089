/**
 * Planning of the experiment kinds: the coordinator tokenizes everything and builds each shard's
 * `params_json` in the schema the engine documents (engine/experiments/{knockout,sever,lre,rome}.py).
 *
 * Shard ids keep the `<sweep>.<index>.<part>` form: `index` is the prompt (knockout, sever), the
 * relation (lre) or the case (edit); `part` numbers the shards of it in a fixed order that
 * {@link KindAggregator} re-derives (sever cells, lre layer × trial, edit layer × matrix).
 */
import { readFileSync } from "node:fs";
import type { sweep } from "@factsweep/proto";
import { loadRelations, type Fact, type Relation } from "../datasets.js";
import { describeValue, FactsweepError } from "@factsweep/shared";
import { PromptError, SpecError } from "../errors.js";
import type { ModelConfig } from "../model-config.js";
import { planPrompts, type PlanError } from "../prompts.js";
import { seededRandom } from "../random.js";
import { resolveLayers, type SweepSpec } from "../spec.js";
import type { PromptTokenizer } from "../tokenizer.js";
import { GROUPS_BY_SCHEME, tokenGroups, type TokenGroup } from "../token-groups.js";
import { DEFAULT_SEVER_PATHS, EDIT_MATRICES, SEVER_PATHS, type ExperimentKind } from "./spec.js";

/** Largest `params_json` of one shard: NATS' default max payload is 1 MiB and the shard travels inside a gRPC message and a KV record. */
export const MAX_PARAMS_BYTES = 512 * 1024;

/** What the kind planners need (resolved by planSweep). */
export interface KindPlanContext {
  spec: SweepSpec;
  sweepId: string;
  modelConfig: ModelConfig;
  model: sweep.ModelRef;
  tokenizer: PromptTokenizer | null;
}

/** The plan of an experiment-kind sweep (same shape as a trace plan; `plannedCells` counts work units). */
export interface KindPlan {
  prompts: sweep.PromptSpec[];
  promptErrors: PlanError[];
  shards: sweep.Shard[];
  plannedCells: number;
}

const seeded = seededRandom;
const mix = (...xs: number[]): number => xs.reduce((h, x) => Math.imul(h ^ (x + 0x9e3779b9), 0x85ebca6b) >>> 0, 0x2545f491);
function shuffle<T>(xs: readonly T[], seed: number): T[] {
  const a = [...xs];
  const r = seeded(seed);
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

function shard(ctx: KindPlanContext, prompt: sweep.PromptSpec, part: number, params: unknown): sweep.Shard {
  const paramsJson = JSON.stringify(params);
  if (paramsJson.length > MAX_PARAMS_BYTES) {
    const section = ctx.spec.kind;
    throw new SpecError(
      `${section}: one shard's parameters are ${paramsJson.length} bytes, over the ${MAX_PARAMS_BYTES}-byte limit of a shard message; lower ${section}.max_corpus or ${section}.corpus_tokens`,
      { path: `${section}.max_corpus`, expected: `shard params under ${MAX_PARAMS_BYTES} bytes`, received: paramsJson.length },
    );
  }
  const sh: sweep.Shard = {
    sweepId: ctx.sweepId, shardId: `${ctx.sweepId}.${prompt.index}.${part}`, kind: ctx.spec.kind, model: ctx.model, prompt, cells: [], attempt: 0, paramsJson, units: 0,
  };
  sh.units = shardUnits(sh);
  return sh;
}

function needTokenizer(ctx: KindPlanContext): PromptTokenizer {
  if (!ctx.tokenizer) {
    throw new SpecError(`kind ${ctx.spec.kind} needs a tokenizer: set model.tokenizer to a tokenizer.json or put one in the model folder`, { path: "model.tokenizer", expected: "a tokenizer.json" });
  }
  return ctx.tokenizer;
}

function needRelations(ctx: KindPlanContext): Relation[] {
  const r = ctx.spec.dataset.relations;
  if (r === undefined) {
    throw new SpecError(`dataset: kind ${ctx.spec.kind} needs \`dataset.relations\` (relation files or folders laid out like shared/data/relations/factual), got ${ctx.spec.dataset.known ? "`known`" : "`prompts`"}`, {
      path: "dataset.relations", expected: "relation files or folders",
    });
  }
  return loadRelations(typeof r === "string" ? [r] : r);
}

/**
 * A corpus as token-id lists: "dataset" (the prompt texts), a .txt file (one document per
 * non-empty line) or a .json file (strings, `{text}` objects, token-id lists, or `{corpus: …}`).
 * Returns `{ path }` instead for a .json of token-id lists when `allowPath` (the engine reads it).
 */
export function loadCorpus(
  source: string, field: string, tokenizer: PromptTokenizer, datasetTexts: readonly string[], maxDocs: number, maxTokens: number, allowPath = false,
): { ids: number[][] } | { path: string } {
  let docs: (string | number[])[];
  if (source === "dataset") {
    docs = [...datasetTexts];
  } else {
    let text: string;
    try {
      text = readFileSync(source, "utf8");
    } catch (err) {
      throw new SpecError(`${field}: the corpus file ${source} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); give "dataset" or a readable .txt/.json file`, { path: field, expected: "a readable file", received: source }, { cause: err });
    }
    if (source.endsWith(".json")) {
      let data: unknown;
      try {
        data = JSON.parse(text);
      } catch (err) {
        throw new SpecError(`${field}: ${source} is not valid JSON (${(err as Error).message})`, { path: field, expected: "JSON", received: source }, { cause: err });
      }
      if (data && typeof data === "object" && !Array.isArray(data) && "corpus" in data) data = (data as { corpus: unknown }).corpus;
      if (!Array.isArray(data)) throw new SpecError(`${field}: ${source} must hold a JSON array (or {corpus: [...]}), got ${describeValue(data)}`, { path: field, expected: "a JSON array", received: source });
      docs = data.map((d, i) => {
        if (typeof d === "string") return d;
        if (Array.isArray(d) && d.every((x) => Number.isInteger(x) && x >= 0)) return d as number[];
        if (d && typeof d === "object" && typeof (d as { text?: unknown }).text === "string") return (d as { text: string }).text;
        throw new SpecError(`${field}: ${source}[${i}] must be a string, a {text} object or a token-id list, got ${describeValue(d)}`, { path: field, expected: "strings or token-id lists", received: d });
      });
      if (allowPath && docs.length > 0 && docs.every((d) => Array.isArray(d))) return { path: source };
    } else {
      docs = text.split("\n").filter((l) => l.trim());
    }
  }
  const ids = docs.slice(0, maxDocs).map((d) => (typeof d === "string" ? tokenizer.encode(d) : d).slice(0, maxTokens)).filter((d) => d.length > 0);
  if (ids.length === 0) throw new SpecError(`${field}: the corpus ${source} has no text`, { path: field, expected: "a non-empty corpus", received: source });
  return { ids };
}

// ---- knockout ------------------------------------------------------------------------------

function planKnockout(ctx: KindPlanContext): KindPlan {
  const { spec, modelConfig } = ctx;
  const k = spec.knockout!;
  const layers = resolveLayers(spec.layers, modelConfig.numLayers);
  // The clean run is all knockout needs; a one-sample noise corruption is the cheapest to prepare and never lacks a partner.
  const planSpec = { ...spec, corruption: { kind: "noise" as const, scale: 3, std: 1, samples: 1, seed: 1 } };
  const plan = planPrompts(planSpec, ctx.tokenizer, { sweepId: ctx.sweepId, maxPositions: modelConfig.maxPositions, vocabSize: modelConfig.vocabSize });
  let corpus: number[][] | undefined;
  if (modelConfig.modelType === "mamba" && plan.prompts.length > 0) {
    const c = loadCorpus(k.corpus, "knockout.corpus", needTokenizer(ctx), plan.prompts.map((p) => p.text), k.max_corpus, k.corpus_tokens);
    corpus = "ids" in c ? c.ids : [];
  }
  const shards = plan.prompts.map((p) => shard(ctx, p, 0, { layers, window: k.window, token_sets: k.token_sets, ...(corpus ? { corpus } : {}) }));
  return { prompts: plan.prompts, promptErrors: plan.errors, shards, plannedCells: plan.prompts.length * layers.length * k.token_sets.length };
}

// ---- sever ---------------------------------------------------------------------------------

/** A sever cell and the token selector that chose it (the aggregate is per selector). */
export interface SeverCell {
  token: number;
  layer: number;
  path: string;
  selector: string;
}

/** The sever paths of a spec for a model type, checked. */
export function severPaths(spec: SweepSpec, modelType: string): string[] {
  const allowed = (SEVER_PATHS as Record<string, readonly string[]>)[modelType] ?? [];
  const paths = spec.sever?.paths ?? [...((DEFAULT_SEVER_PATHS as Record<string, readonly string[]>)[modelType] ?? [])];
  paths.forEach((p, i) => {
    if (!allowed.includes(p)) {
      throw new SpecError(`sever.paths[${i}]: "${p}" is not a path of ${modelType} models; expected one of ${allowed.join(", ")}`, { path: `sever.paths[${i}]`, expected: allowed.join("|"), received: p });
    }
  });
  return paths;
}

/** Positions a sever token selector picks in a prompt. */
function selectorPositions(sel: string | number, prompt: Pick<sweep.PromptSpec, "index" | "inputIds" | "subjectStart" | "subjectEnd">, scheme: SweepSpec["token_groups"]): number[] {
  const n = prompt.inputIds.length;
  const span = [prompt.subjectStart, prompt.subjectEnd] as const;
  if (typeof sel === "number") {
    const t = sel < 0 ? n + sel : sel;
    if (t < 0 || t >= n) throw new PromptError(`sever.tokens: index ${sel} is outside this prompt of ${n} tokens`, prompt.index);
    return [t];
  }
  if (sel === "subject") return Array.from({ length: span[1] - span[0] }, (_, i) => span[0] + i);
  const all = [...GROUPS_BY_SCHEME.rome, ...GROUPS_BY_SCHEME.romba] as readonly string[];
  if (!all.includes(sel)) {
    throw new SpecError(`sever.tokens: "${sel}" is not a token group; expected subject, an index, or one of ${[...new Set(all)].join(", ")}`, { path: "sever.tokens", expected: "a token group", received: sel });
  }
  const sch = (GROUPS_BY_SCHEME[scheme] as readonly string[]).includes(sel) ? scheme : scheme === "rome" ? "romba" : "rome";
  const out: number[] = [];
  for (let t = 0; t < n; t++) if (tokenGroups(t, span, n, sch).includes(sel as TokenGroup)) out.push(t);
  return out;
}

/** Every sever cell of one prompt, in shard order (selector × position × layer × path). */
export function severCells(spec: SweepSpec, prompt: Pick<sweep.PromptSpec, "index" | "inputIds" | "subjectStart" | "subjectEnd">, modelType: string, numLayers: number): SeverCell[] {
  const layers = resolveLayers(spec.layers, numLayers);
  const paths = severPaths(spec, modelType);
  const cells: SeverCell[] = [];
  for (const sel of spec.sever!.tokens) {
    for (const token of selectorPositions(sel, prompt, spec.token_groups)) {
      for (const layer of layers) for (const path of paths) cells.push({ token, layer, path, selector: String(sel) });
    }
  }
  return cells;
}

function planSever(ctx: KindPlanContext): KindPlan {
  const { spec, modelConfig } = ctx;
  severPaths(spec, modelConfig.modelType);
  const plan = planPrompts(spec, ctx.tokenizer, { sweepId: ctx.sweepId, maxPositions: modelConfig.maxPositions, vocabSize: modelConfig.vocabSize });
  const prompts: sweep.PromptSpec[] = [];
  const errors = [...plan.errors];
  const shards: sweep.Shard[] = [];
  let planned = 0;
  for (const p of plan.prompts) {
    let cells: SeverCell[];
    try {
      cells = severCells(spec, p, modelConfig.modelType, modelConfig.numLayers);
    } catch (err) {
      if (err instanceof PromptError) {
        errors.push({ index: p.index, message: err.message });
        continue;
      }
      throw err;
    }
    prompts.push(p);
    planned += cells.length;
    for (let at = 0, part = 0; at < cells.length; at += spec.shard_cells, part++) {
      shards.push(shard(ctx, p, part, { cells: cells.slice(at, at + spec.shard_cells).map(({ token, layer, path }) => ({ token, layer, path })) }));
    }
  }
  errors.sort((a, b) => a.index - b.index);
  return { prompts, promptErrors: errors, shards, plannedCells: planned };
}

// ---- lre -----------------------------------------------------------------------------------

/** One pre-tokenized LRE fact as the engine takes it. */
export interface LreFact {
  ids: number[];
  subject_last: number;
  object_id: number;
}

/** The layers an lre sweep fits at: −1 (embedding) when `lre.embedding`, then the spec's layers. */
export function lreLayers(spec: SweepSpec, numLayers: number): number[] {
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
export function lreSplit(facts: readonly Fact[], spec: SweepSpec, relationIndex: number, trial: number): { train: Fact[]; test: Fact[] } {
  const l = spec.lre!;
  const order = shuffle(facts, mix(l.seed, relationIndex, trial));
  const train = order.slice(0, l.icl);
  const seen = new Set(train.map((f) => f.subject));
  const test = order.slice(l.icl).filter((f) => !seen.has(f.subject)).slice(0, l.test);
  return { train, test };
}

function planLre(ctx: KindPlanContext): KindPlan {
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
      index: r, promptKey: `${ctx.sweepId}/${r}`, text: template ?? "", subject: "", object: "", relation: rel.key, inputIds: [], subjectStart: 0, subjectEnd: 0, corruption: undefined,
    };
    try {
      if (template === undefined) throw new FactsweepError(`relation ${rel.key} has ${rel.promptTemplates.length} templates; dataset.template_index ${spec.dataset.template_index} is out of range`);
      const facts: Fact[] = rel.samples.slice(0, spec.dataset.per_relation ?? Infinity).map((s, i) => ({
        text: template.replace("{}", s.subject), subject: s.subject, object: s.object, relation: rel.key, source: `${rel.key}.json#${i}`,
      }));
      if (facts.length < l.icl + 1) throw new FactsweepError(`relation ${rel.key} has ${facts.length} facts; lre needs at least icl + 1 = ${l.icl + 1}`);
      const parts: sweep.Shard[] = [];
      for (let t = 0; t < l.trials; t++) {
        const { train, test } = lreSplit(facts, spec, r, t);
        const trainFacts = train.map((f) => lrePrompt(tok, template, l.in_context ? train.filter((x) => x !== f) : [], f));
        const testFacts = test.map((f) => lrePrompt(tok, template, l.in_context ? train : [], f));
        layers.forEach((layer, li) => {
          const params = { layer, betas: l.betas, train: trainFacts, test: testFacts, ...(l.jacobian_rows ? { jacobian_rows: l.jacobian_rows } : {}) };
          parts[li * l.trials + t] = shard(ctx, prompt, li * l.trials + t, params);
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
}

// ---- edit ----------------------------------------------------------------------------------

/** The edit matrices of a spec for a model type, checked. */
export function editMatrices(spec: SweepSpec, modelType: string): string[] {
  const allowed = (EDIT_MATRICES as Record<string, readonly string[]>)[modelType] ?? [];
  const m = spec.edit?.matrices ?? [...allowed];
  m.forEach((x, i) => {
    if (!allowed.includes(x)) {
      throw new SpecError(`edit.matrices[${i}]: "${x}" is not an editable matrix of ${modelType} models; expected one of ${allowed.join(", ")}`, { path: `edit.matrices[${i}]`, expected: allowed.join("|"), received: x });
    }
  });
  return m;
}

function withSpan(tok: PromptTokenizer, text: string, subject: string): { ids: number[]; subject: [number, number] } {
  const { ids, subjectSpan } = tok.encodeWithSubject(text, subject);
  return { ids, subject: [subjectSpan[0], subjectSpan[1]] };
}

function planEdit(ctx: KindPlanContext): KindPlan {
  const { spec, modelConfig } = ctx;
  const e = spec.edit!;
  const tok = needTokenizer(ctx);
  const rels = needRelations(ctx);
  const layers = resolveLayers(spec.layers, modelConfig.numLayers);
  const matrices = editMatrices(spec, modelConfig.modelType);
  // Candidates per relation in a seeded order, then taken round-robin so every relation is represented.
  const queues = rels.map((rel, r) => shuffle(rel.samples.slice(0, spec.dataset.per_relation ?? Infinity), mix(e.seed, r)).map((s) => ({ rel, s })));
  const prompts: sweep.PromptSpec[] = [];
  const promptErrors: PlanError[] = [];
  const shards: sweep.Shard[] = [];
  const texts = rels.flatMap((rel) => rel.samples.map((s) => `${rel.promptTemplates[0]!.replace("{}", s.subject)} ${s.object}`));
  const corpus = loadCorpus(e.corpus, "edit.corpus", tok, texts, e.max_corpus, e.corpus_tokens, true);
  let index = 0;
  for (let round = 0; prompts.length < e.cases && queues.some((q) => q.length > round); round++) {
    for (const q of queues) {
      if (prompts.length >= e.cases) break;
      const item = q[round];
      if (!item) continue;
      const { rel, s } = item;
      const at = index++;
      try {
        const tpl = rel.promptTemplates;
        const trueIds = tok.encode(` ${s.object}`);
        const objects = [...new Set(rel.samples.map((x) => x.object))].filter((o) => o !== s.object && tok.encode(` ${o}`)[0] !== trueIds[0]);
        const newObject = shuffle(objects, mix(e.seed, at))[0];
        if (newObject === undefined) throw new FactsweepError(`no new object: relation ${rel.key} has no other object whose first token differs from " ${s.object}"`);
        const rewriteText = tpl[0]!.replace("{}", s.subject);
        const rewrite = withSpan(tok, rewriteText, s.subject);
        const params = {
          subject_ids: rewrite.ids.slice(rewrite.subject[0], rewrite.subject[1]),
          rewrite: { ...rewrite, in_context: withSpan(tok, `. ${rewriteText}`, s.subject) },
          target_new_ids: tok.encode(` ${newObject}`),
          target_true_ids: trueIds,
          paraphrases: tpl.slice(1, 1 + e.paraphrases).map((t) => tok.encode(t.replace("{}", s.subject))),
          neighbourhood: shuffle(rel.samples.filter((x) => x.object === s.object && x.subject !== s.subject), mix(e.seed, at, 7))
            .slice(0, e.neighbours).map((x) => tok.encode(tpl[0]!.replace("{}", x.subject))),
          kl_prompts: [withSpan(tok, `${s.subject} is a`, s.subject)],
          ...("ids" in corpus ? { corpus: corpus.ids } : { corpus_path: corpus.path }),
          bos_id: 0,
          hparams: e.hparams,
          generation: e.generation ? {} : null,
        };
        const prompt: sweep.PromptSpec = {
          index: prompts.length, promptKey: `${ctx.sweepId}/${prompts.length}`, text: rewriteText, subject: s.subject, object: s.object, relation: rel.key,
          inputIds: rewrite.ids, subjectStart: rewrite.subject[0], subjectEnd: rewrite.subject[1], corruption: undefined,
        };
        layers.forEach((layer, li) => matrices.forEach((matrix, mi) => shards.push(shard(ctx, prompt, li * matrices.length + mi, { matrix, layer, ...params }))));
        prompts.push(prompt);
      } catch (err) {
        if (err instanceof SpecError) throw err;
        promptErrors.push({ index: at, message: `${rel.key}.json (${s.subject}): ${(err as Error).message}` });
      }
    }
  }
  return { prompts, promptErrors, shards, plannedCells: shards.length };
}

/** Plans an experiment-kind sweep. @throws SpecError for section values the model cannot take. */
export function planKind(ctx: KindPlanContext): KindPlan {
  const kind = ctx.spec.kind as ExperimentKind;
  switch (kind) {
    case "knockout":
      return planKnockout(ctx);
    case "sever":
      return planSever(ctx);
    case "lre":
      return planLre(ctx);
    case "edit":
      return planEdit(ctx);
  }
}

/** Work units of a shard, for progress: its cells (trace), or the experiment's rows. */
export function shardUnits(sh: Pick<sweep.Shard, "kind" | "cells" | "paramsJson">): number {
  if (!sh.kind || sh.kind === "trace" || !sh.paramsJson) return sh.cells.length;
  const p = JSON.parse(sh.paramsJson) as { cells?: unknown[]; layers?: unknown[]; token_sets?: unknown[]; test?: unknown[] };
  switch (sh.kind) {
    case "sever":
      return p.cells?.length ?? 0;
    case "knockout":
      return (p.layers?.length ?? 1) * (p.token_sets?.length ?? 4);
    case "lre":
      return p.test?.length ?? 0;
    default:
      return 1;
  }
}

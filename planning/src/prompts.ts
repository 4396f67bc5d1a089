/**
 * Turn a spec's dataset into the sweep's prompts: render, tokenize, find the subject span, and
 * build the corruption. A prompt that cannot be planned (subject not in the text, no swap partner,
 * bad span) is reported in `errors` with its index and skipped; the others proceed.
 */
import type { engine, sweep } from "@factsweep/proto";
import { knownFactsToFacts, loadKnownFacts, loadRelations, relationToFacts, type Fact } from "./datasets.js";
import { FactsweepError } from "@factsweep/shared";
import { limitsOf, raiseHint, type PlanLimits } from "./limits.js";
import { seededRandom } from "./random.js";
import type { BaseSpec, TokenizedPromptInput } from "./spec-base.js";
import type { PromptTokenizer, TokenSpan } from "./tokenizer.js";

/** A prompt that was skipped, and why. `index` is its position in the dataset selection. */
export interface PlanError {
  index: number;
  message: string;
}

/** Result of {@link planPrompts}. */
export interface PromptPlan {
  prompts: sweep.PromptSpec[];
  errors: PlanError[];
}

/** Options of {@link planPrompts}. */
export interface PlanPromptsOptions {
  /** Prefix of prompt keys (`<sweepId>/<index>`); default the spec's name. */
  sweepId?: string;
  /** Model's longest prompt in tokens (0/undefined: no limit); longer prompts are reported. */
  maxPositions?: number;
  /** Model's vocabulary size; pre-tokenized ids at or above it are reported. */
  vocabSize?: number;
  /** Caps (tokens per prompt, file size); default the limits the spec was parsed under. */
  limits?: Pick<PlanLimits, "maxPromptTokens" | "maxFileBytes">;
}

/** Default cap of facts per relation file (the paper's `n_trial`). */
export const DEFAULT_PER_RELATION = 150;

/** One entry of the dataset selection: a fact to render and tokenize, or a pre-tokenized prompt. */
export type DatasetItem = { kind: "fact"; fact: Fact } | { kind: "tokens"; input: TokenizedPromptInput };

/** The dataset selection of a spec (caps applied) and, per relation, every fact (swap partners). */
export function selectDataset(spec: BaseSpec, maxFileBytes = limitsOf(spec).maxFileBytes): { items: DatasetItem[]; pools: Map<string, Fact[]> } {
  const d = spec.dataset;
  let facts: Fact[] = [];
  let items: DatasetItem[];
  const pools = new Map<string, Fact[]>();
  const capPerRelation = (all: Fact[], cap: number | undefined): Fact[] => {
    if (cap === undefined) return all;
    const seen = new Map<string, number>();
    return all.filter((f) => {
      const n = seen.get(f.relation) ?? 0;
      seen.set(f.relation, n + 1);
      return n < cap;
    });
  };
  if (d.known !== undefined) {
    facts = knownFactsToFacts(loadKnownFacts(d.known, maxFileBytes), d.known);
    for (const f of facts) pools.set(f.relation, [...(pools.get(f.relation) ?? []), f]);
    items = capPerRelation(facts, d.per_relation).map((fact) => ({ kind: "fact", fact }));
  } else if (d.relations !== undefined) {
    const rels = loadRelations(typeof d.relations === "string" ? [d.relations] : d.relations, maxFileBytes);
    for (const rel of rels) {
      const all = relationToFacts(rel, d.template_index);
      pools.set(rel.key, all);
      facts.push(...all);
    }
    items = capPerRelation(facts, d.per_relation ?? DEFAULT_PER_RELATION).map((fact) => ({ kind: "fact", fact }));
  } else {
    items = (d.prompts ?? []).map((p, i): DatasetItem => {
      if ("input_ids" in p) return { kind: "tokens", input: p };
      return {
        kind: "fact",
        fact: { text: p.text, subject: p.subject, object: p.object ?? "", relation: p.relation ?? "inline", source: `dataset.prompts[${i}]` },
      };
    });
    for (const it of items) if (it.kind === "fact") pools.set(it.fact.relation, [...(pools.get(it.fact.relation) ?? []), it.fact]);
  }
  if (d.limit !== undefined) items = items.slice(0, d.limit);
  return { items, pools };
}

const rng = seededRandom;

/** Mix the spec seed with the prompt index so each prompt draws its own partner order. */
function promptSeed(seed: number, index: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (index + 0x85ebca6b), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

const sameAnswer = (a: string, b: string) => a.trim().toLowerCase() === b.trim().toLowerCase();

/**
 * Romba's swap corruption: another subject of the same relation with a different object, whose
 * prompt tokenizes to the same length with the subject's last token at the same index. Candidates
 * are tried in an order drawn from (seed, index).
 */
export function pickSwap(
  fact: Fact,
  index: number,
  ids: number[],
  span: TokenSpan,
  pool: Fact[],
  tokenizer: PromptTokenizer,
  seed: number,
): { corruptedIds: number[]; partner: Fact } {
  const candidates = pool.filter((f) => f.subject !== fact.subject && !sameAnswer(f.object, fact.object));
  const random = rng(promptSeed(seed, index));
  for (let i = candidates.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [candidates[i], candidates[j]] = [candidates[j]!, candidates[i]!];
  }
  const at = fact.text.indexOf(fact.subject);
  for (const partner of candidates) {
    const text = fact.text.slice(0, at) + partner.subject + fact.text.slice(at + fact.subject.length);
    let enc: { ids: number[]; subjectSpan: TokenSpan };
    try {
      enc = tokenizer.encodeWithSubject(text, partner.subject);
    } catch {
      continue;
    }
    if (enc.ids.length === ids.length && enc.subjectSpan[1] === span[1]) return { corruptedIds: enc.ids, partner };
  }
  throw new FactsweepError(
    candidates.length === 0
      ? `no swap partner: relation "${fact.relation}" has no other subject with a different object`
      : `no swap partner: none of the ${candidates.length} other subjects of relation "${fact.relation}" with a different object makes a prompt of ${ids.length} tokens with the last subject token at index ${span[1] - 1}; use noise corruption for this prompt`,
  );
}

function noiseCorruption(c: Extract<BaseSpec["corruption"], { kind: "noise" }>): engine.Corruption {
  return {
    kind: {
      $case: "noise",
      noise: { scale: c.scale, std: c.std === "auto" ? 0 : c.std, samples: c.samples, seed: c.seed, explicitNoise: Buffer.alloc(0) },
    },
  };
}

/**
 * Plan the prompts of a sweep. `tokenizer` may be null when every prompt is pre-tokenized (the
 * golden models ship no tokenizer); text prompts then report that a tokenizer is needed.
 */
export function planPrompts(spec: BaseSpec, tokenizer: PromptTokenizer | null, opts: PlanPromptsOptions = {}): PromptPlan {
  const limits = opts.limits ?? limitsOf(spec);
  const { items, pools } = selectDataset(spec, limits.maxFileBytes);
  const sweepId = opts.sweepId ?? spec.name;
  const prompts: sweep.PromptSpec[] = [];
  const errors: PlanError[] = [];
  const corruption = spec.corruption;
  items.forEach((item, index) => {
    try {
      const p = item.kind === "fact" ? planFact(item.fact, index, spec, tokenizer, pools) : planTokens(item.input, corruption);
      if (opts.maxPositions && p.inputIds.length > opts.maxPositions) {
        throw new FactsweepError(`prompt is ${p.inputIds.length} tokens; the model takes at most ${opts.maxPositions}`);
      }
      if (p.inputIds.length > limits.maxPromptTokens) {
        throw new FactsweepError(
          `prompt is ${p.inputIds.length} tokens, over the cap of ${limits.maxPromptTokens} tokens per prompt (${raiseHint("maxPromptTokens")})`,
        );
      }
      if (opts.vocabSize !== undefined) {
        const all = [...p.inputIds, ...(p.corruption?.kind?.$case === "swap" ? p.corruption.kind.swap.corruptedIds : [])];
        const bad = all.find((id) => id >= opts.vocabSize!);
        if (bad !== undefined) throw new FactsweepError(`token id ${bad} is outside the model's vocabulary (size ${opts.vocabSize})`);
      }
      prompts.push({ ...p, index, promptKey: `${sweepId}/${index}` });
    } catch (err) {
      // The index is reported beside the message; the source names the dataset entry.
      const source = item.kind === "fact" ? `${item.fact.source}: ` : "";
      errors.push({ index, message: `${source}${(err as Error).message}` });
    }
  });
  return { prompts, errors };
}

type Planned = Omit<sweep.PromptSpec, "index" | "promptKey">;

function planFact(fact: Fact, index: number, spec: BaseSpec, tokenizer: PromptTokenizer | null, pools: Map<string, Fact[]>): Planned {
  if (!tokenizer) {
    throw new FactsweepError(
      "a text prompt needs a tokenizer: set model.tokenizer to a tokenizer.json (or put one in the model folder), or give the prompt pre-tokenized (input_ids + subject span)",
    );
  }
  const { ids, subjectSpan } = tokenizer.encodeWithSubject(fact.text, fact.subject);
  let corruption: engine.Corruption;
  const c = spec.corruption;
  if (c.kind === "swap") {
    const { corruptedIds } = pickSwap(fact, index, ids, subjectSpan, pools.get(fact.relation) ?? [], tokenizer, c.seed);
    corruption = { kind: { $case: "swap", swap: { corruptedIds } } };
  } else {
    corruption = noiseCorruption(c);
  }
  let answerId: number | undefined;
  if (spec.dataset.answer === "object") {
    if (!fact.object) throw new FactsweepError('dataset.answer is "object" but this prompt has no object');
    answerId = tokenizer.encode(` ${fact.object.trim()}`)[0];
  }
  return {
    text: fact.text,
    subject: fact.subject,
    object: fact.object,
    relation: fact.relation,
    inputIds: ids,
    subjectStart: subjectSpan[0],
    subjectEnd: subjectSpan[1],
    corruption,
    answerId,
  };
}

function planTokens(p: TokenizedPromptInput, c: BaseSpec["corruption"]): Planned {
  const [start, end] = p.subject;
  const n = p.input_ids.length;
  if (!(start < end && end <= n)) {
    throw new FactsweepError(`subject span [${start}, ${end}) is not a non-empty span of the ${n} input_ids; expected 0 <= start < end <= ${n}`);
  }
  let corruption: engine.Corruption;
  if (c.kind === "swap") {
    if (!p.corrupted_ids)
      throw new FactsweepError(
        "swap corruption needs corrupted_ids for a pre-tokenized prompt (the same length as input_ids); add them or use noise corruption",
      );
    if (p.corrupted_ids.length !== n) throw new FactsweepError(`corrupted_ids has ${p.corrupted_ids.length} tokens; expected ${n}, the length of input_ids`);
    corruption = { kind: { $case: "swap", swap: { corruptedIds: p.corrupted_ids } } };
  } else {
    if (p.corrupted_ids) throw new FactsweepError("corrupted_ids given but the corruption is noise; remove them or use swap corruption");
    corruption = noiseCorruption(c);
  }
  return {
    text: p.text ?? "",
    subject: p.subject_text ?? "",
    object: p.object ?? "",
    relation: p.relation ?? "",
    inputIds: p.input_ids,
    subjectStart: start,
    subjectEnd: end,
    corruption,
    answerId: p.answer_id,
  };
}

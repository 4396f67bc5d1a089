/**
 * Helpers the kind modules share: seeded order, shards and their size limit, the per-prompt cell
 * loop (trace, sever), token selectors, tokenizer/relations/corpus inputs, running means.
 */
import type { sweep } from "@factsweep/proto";
import { z } from "zod";
import { loadRelations, type Relation } from "../datasets.js";
import { PromptError, SpecError } from "../errors.js";
import { parseJsonFile, readRegularFile, typeOfValue } from "../files.js";
import { DEFAULT_PLAN_LIMITS, overLimit, type PlanLimits } from "../limits.js";
import { planPrompts, type PlanError, type PromptPlan } from "../prompts.js";
import { seededRandom } from "../random.js";
import type { BaseSpec } from "../spec-base.js";
import { GROUPS_BY_SCHEME, tokenGroups, type TokenGroup } from "../token-groups.js";
import type { PromptTokenizer } from "../tokenizer.js";
import type { KindPlan, KindPlanContext, ShardList } from "./kind.js";

/** Largest `params_json` of one shard: NATS' default max payload is 1 MiB and the shard travels inside a gRPC message and a KV record. */
export const MAX_PARAMS_BYTES = 512 * 1024;

/** A seed from several numbers (kind seed, relation, trial, case). */
export const mix = (...xs: number[]): number => xs.reduce((h, x) => Math.imul(h ^ (x + 0x9e3779b9), 0x85ebca6b) >>> 0, 0x2545f491);

/** A seeded Fisher–Yates shuffle (a copy); `random` may be a shared stream or a seed. */
export function shuffle<T>(xs: readonly T[], random: number | (() => number)): T[] {
  const a = [...xs];
  const r = typeof random === "number" ? seededRandom(random) : random;
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** Start and number (`part`) of each slice of at most `size` items (shard_cells cuts). */
export function* slices(length: number, size: number): Generator<{ at: number; part: number }> {
  for (let at = 0, part = 0; at < length; at += size, part++) yield { at, part };
}

/** An experiment shard `<sweep>.<index>.<part>`; params over {@link MAX_PARAMS_BYTES} are a SpecError naming the section's corpus fields. */
export function kindShard(ctx: KindPlanContext, prompt: sweep.PromptSpec, part: number, params: unknown): sweep.Shard {
  const paramsJson = JSON.stringify(params);
  if (paramsJson.length > MAX_PARAMS_BYTES) {
    const section = ctx.spec.kind;
    throw new SpecError(
      `${section}: one shard's parameters are ${paramsJson.length} bytes, over the ${MAX_PARAMS_BYTES}-byte limit of a shard message; lower ${section}.max_corpus or ${section}.corpus_tokens`,
      { path: `${section}.max_corpus`, expected: `shard params under ${MAX_PARAMS_BYTES} bytes`, received: paramsJson.length },
    );
  }
  return {
    sweepId: ctx.sweepId,
    shardId: `${ctx.sweepId}.${prompt.index}.${part}`,
    kind: ctx.spec.kind,
    model: ctx.model,
    prompt,
    cells: [],
    attempt: 0,
    paramsJson,
    units: 0,
  };
}

/** A shard's params_json, parsed. */
export const shardParams = <T>(sh: Pick<sweep.Shard, "paramsJson">): T => JSON.parse(sh.paramsJson) as T;

/**
 * Every planned prompt's cells cut into shards (trace, sever): a prompt whose cells cannot be made
 * (a PromptError) is reported and skipped; errors come back sorted by prompt. `lazy`: the shards
 * are counted here and made again, a prompt at a time, when the list is iterated (so a
 * million-shard plan is never alive at once); they are the same shards in the same order.
 */
export function planCellsPerPrompt<C>(
  plan: PromptPlan,
  cellsOf: (p: sweep.PromptSpec) => C[],
  shardsOf: (p: sweep.PromptSpec, cells: C[]) => sweep.Shard[],
  limits?: Pick<PlanLimits, "maxCells" | "maxShards">,
  lazy?: false,
): KindPlan;
export function planCellsPerPrompt<C>(
  plan: PromptPlan,
  cellsOf: (p: sweep.PromptSpec) => C[],
  shardsOf: (p: sweep.PromptSpec, cells: C[]) => sweep.Shard[],
  limits: Pick<PlanLimits, "maxCells" | "maxShards">,
  lazy: boolean,
): KindPlan<ShardList>;
export function planCellsPerPrompt<C>(
  plan: PromptPlan,
  cellsOf: (p: sweep.PromptSpec) => C[],
  shardsOf: (p: sweep.PromptSpec, cells: C[]) => sweep.Shard[],
  limits: Pick<PlanLimits, "maxCells" | "maxShards"> = DEFAULT_PLAN_LIMITS,
  lazy = false,
): KindPlan<ShardList> {
  const prompts: sweep.PromptSpec[] = [];
  const promptErrors: PlanError[] = [...plan.errors];
  const shards: sweep.Shard[] = [];
  let shardCount = 0;
  let plannedCells = 0;
  for (const p of plan.prompts) {
    let cells: C[];
    try {
      cells = cellsOf(p);
    } catch (err) {
      if (err instanceof PromptError) {
        promptErrors.push({ index: p.index, message: err.message });
        continue;
      }
      throw err;
    }
    prompts.push(p);
    plannedCells += cells.length;
    // Checked as the plan grows, so a huge grid fails before it fills the heap.
    if (plannedCells > limits.maxCells)
      throw overLimit("", `the sweep's planned cells (at least; ${prompts.length} prompts so far)`, plannedCells, "maxCells", limits.maxCells);
    const made = shardsOf(p, cells);
    shardCount += made.length;
    if (!lazy) shards.push(...made);
    if (shardCount > limits.maxShards) throw overLimit("shard_cells", `the sweep's shards (at least)`, shardCount, "maxShards", limits.maxShards);
  }
  promptErrors.sort((a, b) => a.index - b.index);
  if (!lazy) return { prompts, promptErrors, shards, plannedCells };
  const kept = prompts.slice(); // the plan's prompts belong to the caller; the list re-plans these
  const list: ShardList = {
    length: shardCount,
    *[Symbol.iterator]() {
      for (const p of kept) yield* shardsOf(p, cellsOf(p));
    },
  };
  return { prompts, promptErrors, shards: list, plannedCells };
}

/** The prompt fields token selection needs. */
export type PromptTokens = Pick<sweep.PromptSpec, "index" | "inputIds" | "subjectStart" | "subjectEnd">;

/**
 * Positions one token selector picks in a prompt, ascending: an index (negative from the end;
 * outside the prompt: `outside(n)`), `subject`, or a token group (a name of the other scheme
 * selects under that scheme).
 */
export function selectorPositions(sel: string | number, prompt: PromptTokens, scheme: BaseSpec["token_groups"], outside: (n: number) => Error): number[] {
  const n = prompt.inputIds.length;
  const span = [prompt.subjectStart, prompt.subjectEnd] as const;
  if (typeof sel === "number") {
    const t = sel < 0 ? n + sel : sel;
    if (t < 0 || t >= n) throw outside(n);
    return [t];
  }
  if (sel === "subject") return Array.from({ length: span[1] - span[0] }, (_, i) => span[0] + i);
  const sch = (GROUPS_BY_SCHEME[scheme] as readonly string[]).includes(sel) ? scheme : scheme === "rome" ? "romba" : "rome";
  const out: number[] = [];
  for (let t = 0; t < n; t++) if (tokenGroups(t, span, n, sch).includes(sel as TokenGroup)) out.push(t);
  return out;
}

/** The name, spec fields (`<name>: section?`) and section schema of a kind with a section of its own. */
export function sectionKind<const N extends string, S extends z.ZodObject>(
  name: N,
  section: S,
): { name: N; specFields: { [K in N]: z.ZodOptional<S> }; section: S } {
  return { name, specFields: { [name]: section.optional() } as { [K in N]: z.ZodOptional<S> }, section };
}

/** The dataset's prompts planned for a kind (`spec`: the kind's variant of the spec, e.g. another corruption). */
export function planKindPrompts(ctx: KindPlanContext, spec: BaseSpec = ctx.spec): PromptPlan {
  return planPrompts(spec, ctx.tokenizer, {
    sweepId: ctx.sweepId,
    maxPositions: ctx.modelConfig.maxPositions,
    vocabSize: ctx.modelConfig.vocabSize,
    limits: ctx.limits,
  });
}

/** The spec's tokenizer, required by kinds that tokenize themselves. */
export function needTokenizer(ctx: KindPlanContext): PromptTokenizer {
  if (!ctx.tokenizer) {
    throw new SpecError(`kind ${ctx.spec.kind} needs a tokenizer: set model.tokenizer to a tokenizer.json or put one in the model folder`, {
      path: "model.tokenizer",
      expected: "a tokenizer.json",
    });
  }
  return ctx.tokenizer;
}

/** The spec's relation files, required by kinds that work per relation. */
export function needRelations(ctx: KindPlanContext): Relation[] {
  const r = ctx.spec.dataset.relations;
  if (r === undefined) {
    throw new SpecError(
      `dataset: kind ${ctx.spec.kind} needs \`dataset.relations\` (relation files or folders laid out like shared/data/relations/factual), got ${ctx.spec.dataset.known ? "`known`" : "`prompts`"}`,
      {
        path: "dataset.relations",
        expected: "relation files or folders",
      },
    );
  }
  return loadRelations(typeof r === "string" ? [r] : r, ctx.limits.maxFileBytes);
}

/** A text corpus: `dataset` (the dataset's prompt texts), or a file: .txt (one document per line) or .json (strings, {text} objects, or token-id lists). */
export const corpusSchema = z.union([z.literal("dataset"), z.string().min(1)], { error: 'expected "dataset" or the path of a .txt or .json corpus' });

/** A section's corpus file resolved against the spec's folder ("dataset" stays). */
export function resolveCorpus(section: { corpus: string } | undefined, resolvePath: (p: string) => string): void {
  if (section && section.corpus !== "dataset") section.corpus = resolvePath(section.corpus);
}

/**
 * A corpus as token-id lists: "dataset" (the prompt texts), a .txt file (one document per
 * non-empty line) or a .json file (strings, `{text}` objects, token-id lists, or `{corpus: …}`).
 * Returns `{ path }` instead for a .json of token-id lists when `allowPath` (the engine reads it).
 */
export function loadCorpus(
  source: string,
  field: string,
  tokenizer: PromptTokenizer,
  datasetTexts: readonly string[],
  maxDocs: number,
  maxTokens: number,
  allowPath = false,
  maxFileBytes = DEFAULT_PLAN_LIMITS.maxFileBytes,
): { ids: number[][] } | { path: string } {
  let docs: (string | number[])[];
  if (source === "dataset") {
    docs = [...datasetTexts];
  } else {
    const fail = (msg: string, cause?: unknown) =>
      new SpecError(
        `${field}: ${msg}; give "dataset" or a readable .txt/.json file`,
        { path: field, expected: "a readable regular file", received: source },
        { cause },
      );
    const text = readRegularFile(source, "the corpus file", maxFileBytes, fail);
    if (source.endsWith(".json")) {
      let data = parseJsonFile(
        text,
        "the corpus file",
        source,
        (msg, cause) => new SpecError(`${field}: ${msg}`, { path: field, expected: "JSON", received: source }, { cause }),
      );
      if (data && typeof data === "object" && !Array.isArray(data) && "corpus" in data) data = (data as { corpus: unknown }).corpus;
      if (!Array.isArray(data))
        throw new SpecError(`${field}: ${source} must hold a JSON array (or {corpus: [...]}), got ${typeOfValue(data)}`, {
          path: field,
          expected: "a JSON array",
          received: source,
        });
      docs = data.map((d, i) => {
        if (typeof d === "string") return d;
        if (Array.isArray(d) && d.every((x) => Number.isInteger(x) && x >= 0)) return d as number[];
        if (d && typeof d === "object" && typeof (d as { text?: unknown }).text === "string") return (d as { text: string }).text;
        throw new SpecError(`${field}: ${source}[${i}] must be a string, a {text} object or a token-id list, got ${typeOfValue(d)}`, {
          path: field,
          expected: "strings or token-id lists",
          received: typeOfValue(d),
        });
      });
      if (allowPath && docs.length > 0 && docs.every((d) => Array.isArray(d))) return { path: source };
    } else {
      docs = text.split("\n").filter((l) => l.trim());
    }
  }
  const ids = docs
    .slice(0, maxDocs)
    .map((d) => (typeof d === "string" ? tokenizer.encode(d) : d).slice(0, maxTokens))
    .filter((d) => d.length > 0);
  if (ids.length === 0) throw new SpecError(`${field}: the corpus ${source} has no text`, { path: field, expected: "a non-empty corpus", received: source });
  return { ids };
}

/** Checks a list of names against what a model type allows (`<section>.<field>[i]` on a miss); returns it. */
export function checkAllowed(values: string[], allowed: readonly string[], field: string, what: string, modelType: string): string[] {
  values.forEach((v, i) => {
    if (!allowed.includes(v)) {
      throw new SpecError(`${field}[${i}]: "${v}" is not ${what} of ${modelType} models; expected one of ${allowed.join(", ")}`, {
        path: `${field}[${i}]`,
        expected: allowed.join("|"),
        received: v,
      });
    }
  });
  return values;
}

/** Mean and count of one aggregated value. */
export interface MeanN {
  mean: number | null;
  n: number;
}

/** Running sums per key ("a|b|c"); non-finite values are not counted. */
export class Sums {
  private m = new Map<string, { sum: number; n: number }>();
  add(key: string, v: number | null | undefined): void {
    if (v === null || v === undefined || !Number.isFinite(v)) return;
    const e = this.m.get(key) ?? { sum: 0, n: 0 };
    e.sum += v;
    e.n += 1;
    this.m.set(key, e);
  }
  get(key: string): MeanN {
    const e = this.m.get(key);
    return e && e.n > 0 ? { mean: e.sum / e.n, n: e.n } : { mean: null, n: 0 };
  }
  keys(): string[] {
    return [...this.m.keys()];
  }
  /** Every key split at "|" with its mean, sorted by `order`. */
  points<P>(make: (parts: string[], m: MeanN) => P, order: (a: P, b: P) => number): P[] {
    return this.keys()
      .map((k) => make(k.split("|"), this.get(k)))
      .sort(order);
  }
}

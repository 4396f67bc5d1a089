/**
 * Grid expansion and sharding: a prompt × (site, window) × layer × token grid of cells, cut into
 * shards of at most `shard_cells` cells of one prompt (the unit of leasing, retry and result
 * publication).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { engine, sweep } from "@factsweep/proto";
import { describeValue } from "@factsweep/shared";
import { PromptError, SpecError } from "./errors.js";
import { readModelConfig, type ModelConfig } from "./model-config.js";
import { planPrompts, type PlanError } from "./prompts.js";
import { SITES_BY_MODEL_TYPE, siteToEnum, type SiteName } from "./sites.js";
import { resolveLayers, type SweepSpec } from "./spec.js";
import { GROUPS_BY_SCHEME, tokenGroups } from "./token-groups.js";
import { loadTokenizer, type PromptTokenizer } from "./tokenizer.js";
import { planKind } from "./kinds/plan.js";

/** Sweep ids appear in NATS subjects and shard ids (`<sweep>.<prompt>.<part>`): no dots or spaces. */
export const SWEEP_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** @throws SpecError when `sweepId` cannot be used in NATS subjects and shard ids. */
export function validateSweepId(sweepId: string): string {
  if (!SWEEP_ID_PATTERN.test(sweepId)) {
    throw new SpecError(`sweep_id: expected 1-64 letters, digits, '_' or '-' (starting with a letter or digit; no dots, it is used in NATS subjects), got ${describeValue(sweepId)}`, {
      path: "sweep_id",
      expected: SWEEP_ID_PATTERN.source,
      received: sweepId,
    });
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

/** Token positions a spec selects in one prompt, ascending. */
export function selectTokens(spec: Pick<SweepSpec, "tokens" | "token_groups">, prompt: Pick<sweep.PromptSpec, "index" | "inputIds" | "subjectStart" | "subjectEnd">): number[] {
  const n = prompt.inputIds.length;
  if (spec.tokens === "all") return Array.from({ length: n }, (_, i) => i);
  const span = [prompt.subjectStart, prompt.subjectEnd] as const;
  const picked = new Set<number>();
  for (const sel of spec.tokens) {
    if (typeof sel === "number") {
      const t = sel < 0 ? n + sel : sel;
      if (t < 0 || t >= n) {
        throw new PromptError(`tokens: index ${sel} is outside this prompt of ${n} tokens (valid ${-n}..${n - 1})`, prompt.index);
      }
      picked.add(t);
    } else if (sel === "subject") {
      for (let t = span[0]; t < span[1]; t++) picked.add(t);
    } else {
      // A group name of the other scheme (e.g. subject_2nd_last under rome) selects under that scheme.
      const scheme = GROUPS_BY_SCHEME[spec.token_groups].includes(sel) ? spec.token_groups : spec.token_groups === "rome" ? "romba" : "rome";
      for (let t = 0; t < n; t++) if (tokenGroups(t, span, n, scheme).includes(sel)) picked.add(t);
    }
  }
  return [...picked].sort((a, b) => a - b);
}

/**
 * Every cell of one prompt: grid entries (site, window) × layers × selected tokens. `embed` has no
 * layers: one cell per token at layer 0.
 * @throws SpecError for layers outside the model, PromptError for token indices outside the prompt.
 */
export function expandCells(prompt: sweep.PromptSpec, spec: Pick<SweepSpec, "grid" | "layers" | "tokens" | "token_groups">, numLayers: number): engine.Cell[] {
  const layers = resolveLayers(spec.layers, numLayers);
  const tokens = selectTokens(spec, prompt);
  const cells: engine.Cell[] = [];
  for (const { site, window } of spec.grid) {
    const s = siteToEnum(site);
    if (site === "embed") {
      for (const token of tokens) cells.push({ site: s, layer: 0, token, window: 1 });
      continue;
    }
    for (const layer of layers) for (const token of tokens) cells.push({ site: s, layer, token, window });
  }
  return cells;
}

/** Cut one prompt's cells into shards of at most `shardCells` cells. */
export function shardPrompt(
  prompt: sweep.PromptSpec,
  cells: engine.Cell[],
  opts: { sweepId: string; shardCells: number; model: sweep.ModelRef; kind?: string },
): sweep.Shard[] {
  const shards: sweep.Shard[] = [];
  for (let at = 0, part = 0; at < cells.length; at += opts.shardCells, part++) {
    shards.push({
      paramsJson: "",
      sweepId: opts.sweepId,
      shardId: shardId(opts.sweepId, prompt.index, part),
      kind: opts.kind ?? "trace",
      model: opts.model,
      prompt,
      cells: cells.slice(at, at + opts.shardCells),
      attempt: 0,
      units: Math.min(opts.shardCells, cells.length - at),
    });
  }
  return shards;
}

/** What {@link planSweep} needs besides the spec; read from the spec's paths when not given. */
export interface SweepDeps {
  /** Model shape; default `readModelConfig(spec.model.path)`. */
  model?: ModelConfig;
  /** Tokenizer; default `spec.model.tokenizer` or `<model.path>/tokenizer.json` if present, else null (pre-tokenized prompts only). */
  tokenizer?: PromptTokenizer | null;
}

/** A planned sweep: its prompts, the prompts skipped, its shards and cell count. */
export interface SweepPlan {
  sweepId: string;
  model: sweep.ModelRef;
  modelConfig: ModelConfig;
  prompts: sweep.PromptSpec[];
  promptErrors: PlanError[];
  shards: sweep.Shard[];
  plannedCells: number;
}

/** The tokenizer a spec names, or the one in the model folder, or null. */
export function loadSpecTokenizer(spec: SweepSpec): PromptTokenizer | null {
  if (spec.model.tokenizer) return loadTokenizer(spec.model.tokenizer);
  const inFolder = join(spec.model.path, "tokenizer.json");
  return existsSync(inFolder) ? loadTokenizer(inFolder) : null;
}

/**
 * Plan a sweep: read the model's shape, plan the prompts, expand and shard every prompt's grid.
 * @throws SpecError for a site the model lacks or layers outside it; ModelConfigError,
 *   TokenizerError, DatasetError for unusable paths. Per-prompt problems land in `promptErrors`.
 */
export function planSweep(spec: SweepSpec, sweepId: string, deps: SweepDeps = {}): SweepPlan {
  validateSweepId(sweepId);
  const modelConfig = deps.model ?? readModelConfig(spec.model.path);
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
  resolveLayers(spec.layers, modelConfig.numLayers); // fail on the spec before any prompt work
  const tokenizer = deps.tokenizer !== undefined ? deps.tokenizer : loadSpecTokenizer(spec);
  const model: sweep.ModelRef = {
    modelId: spec.model.id,
    path: spec.model.path,
    dtype: spec.model.dtype,
    modelType: modelConfig.modelType,
    numLayers: modelConfig.numLayers,
  };
  if (spec.kind !== "trace") return { sweepId, model, modelConfig, ...planKind({ spec, sweepId, modelConfig, model, tokenizer }) };
  const plan = planPrompts(spec, tokenizer, { sweepId, maxPositions: modelConfig.maxPositions, vocabSize: modelConfig.vocabSize });
  const prompts: sweep.PromptSpec[] = [];
  const promptErrors = [...plan.errors];
  const shards: sweep.Shard[] = [];
  let plannedCells = 0;
  for (const p of plan.prompts) {
    let cells: engine.Cell[];
    try {
      cells = expandCells(p, spec, modelConfig.numLayers);
    } catch (err) {
      if (err instanceof PromptError) {
        promptErrors.push({ index: p.index, message: err.message });
        continue;
      }
      throw err;
    }
    prompts.push(p);
    plannedCells += cells.length;
    shards.push(...shardPrompt(p, cells, { sweepId, shardCells: spec.shard_cells, model, kind: spec.kind }));
  }
  promptErrors.sort((a, b) => a.index - b.index);
  return { sweepId, model, modelConfig, prompts, promptErrors, shards, plannedCells };
}

/**
 * Planning a sweep of any kind: read the model's shape and the tokenizer, check the spec against
 * the model, and let the spec's kind module (kinds/index.ts) plan prompts and shards.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { sweep } from "@factsweep/proto";
import { validateSweepId } from "./grid.js";
import { resolveLayers } from "./layers.js";
import { limitsOf, overLimit, type PlanLimits } from "./limits.js";
import { readModelConfig, type ModelConfig } from "./model-config.js";
import type { PlanError } from "./prompts.js";
import type { SweepSpec } from "./spec.js";
import { loadTokenizer, type PromptTokenizer } from "./tokenizer.js";
import { KIND_MODULES, planKind } from "./kinds/index.js";

/** What {@link planSweep} needs besides the spec; read from the spec's paths when not given. */
export interface SweepDeps {
  /** Model shape; default `readModelConfig(spec.model.path)`. */
  model?: ModelConfig;
  /** Tokenizer; default `spec.model.tokenizer` or `<model.path>/tokenizer.json` if present, else null (pre-tokenized prompts only). */
  tokenizer?: PromptTokenizer | null;
  /** Caps; default the limits the spec was parsed under ({@link limitsOf}), else DEFAULT_PLAN_LIMITS. */
  limits?: PlanLimits;
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
export function loadSpecTokenizer(spec: SweepSpec, maxBytes = limitsOf(spec).maxFileBytes): PromptTokenizer | null {
  if (spec.model.tokenizer) return loadTokenizer(spec.model.tokenizer, maxBytes);
  const inFolder = join(spec.model.path, "tokenizer.json");
  return existsSync(inFolder) ? loadTokenizer(inFolder, maxBytes) : null;
}

/**
 * Plan a sweep: read the model's shape, check the spec against it, plan the prompts and shards
 * with the spec's kind.
 * @throws SpecError for a site the model lacks or layers outside it; ModelConfigError,
 *   TokenizerError, DatasetError for unusable paths. Per-prompt problems land in `promptErrors`.
 */
export function planSweep(spec: SweepSpec, sweepId: string, deps: SweepDeps = {}): SweepPlan {
  validateSweepId(sweepId);
  const limits = deps.limits ?? limitsOf(spec);
  const modelConfig = deps.model ?? readModelConfig(spec.model.path, limits);
  for (const k of KIND_MODULES) k.check?.(spec, modelConfig);
  resolveLayers(spec.layers, modelConfig.numLayers); // fail on the spec before any prompt work
  const tokenizer = deps.tokenizer !== undefined ? deps.tokenizer : loadSpecTokenizer(spec, limits.maxFileBytes);
  const model: sweep.ModelRef = {
    modelId: spec.model.id,
    path: spec.model.path,
    dtype: spec.model.dtype,
    modelType: modelConfig.modelType,
    numLayers: modelConfig.numLayers,
  };
  const plan = planKind({ spec, sweepId, modelConfig, model, tokenizer, limits });
  if (plan.plannedCells > limits.maxCells) throw overLimit("", "the sweep's planned cells (work units)", plan.plannedCells, "maxCells", limits.maxCells);
  if (plan.shards.length > limits.maxShards) throw overLimit("shard_cells", "the sweep's shards", plan.shards.length, "maxShards", limits.maxShards);
  return { sweepId, model, modelConfig, ...plan };
}

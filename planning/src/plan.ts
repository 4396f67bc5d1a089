/**
 * Planning a sweep of any kind: read the model's shape and the tokenizer, check the spec against
 * the model, and let the spec's kind module (kinds/index.ts) plan prompts and shards.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { sweep } from "@factsweep/proto";
import { SpecError } from "./errors.js";
import { modelFingerprint } from "./fingerprint.js";
import { validateSweepId } from "./grid.js";
import { isFromTrace, resolveLayers } from "./layers.js";
import { limitsOf, overLimit, type PlanLimits } from "./limits.js";
import { readModelConfig, type ModelConfig } from "./model-config.js";
import type { PlanError } from "./prompts.js";
import type { SweepSpec } from "./spec.js";
import { loadTokenizer, type PromptTokenizer } from "./tokenizer.js";
import { editMatrices, KIND_MODULES, planKind, planKindLazy } from "./kinds/index.js";
import type { KindPlan, KindPlanContext, ShardList } from "./kinds/kind.js";
import { traceLayersFor, traceLayersFrom, type TraceLayers } from "./kinds/edit-trace.js";
import { isTraceFolder, traceEvidenceFromRunFolder, type TraceEvidence } from "./kinds/trace-evidence.js";

/** What {@link planSweep} needs besides the spec; read from the spec's paths when not given. */
export interface SweepDeps {
  /** Model shape; default `readModelConfig(spec.model.path)`. */
  model?: ModelConfig;
  /** Tokenizer; default `spec.model.tokenizer` or `<model.path>/tokenizer.json` if present, else null (pre-tokenized prompts only). */
  tokenizer?: PromptTokenizer | null;
  /** Caps; default the limits the spec was parsed under ({@link limitsOf}), else DEFAULT_PLAN_LIMITS. */
  limits?: PlanLimits;
  /** `layers: { from_trace: <sweep id> }`: the trace sweep as the coordinator holds it (a run folder is read here). */
  traceEvidence?: TraceEvidence;
  /** `layers: { from_trace }` already resolved (a sweep's record: the re-plan sees the launch's choices). */
  traceLayers?: TraceLayers;
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
  /** `layers: { from_trace }`: the trace's peaks, cut to the planned cases' facts (kept with the sweep). */
  traceLayers?: TraceLayers;
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
  return planWith(spec, sweepId, deps, planKind);
}

/** A plan whose shards may be made as they are iterated (see {@link planSweepLazy}). */
export type LazySweepPlan = Omit<SweepPlan, "shards"> & { shards: ShardList };

/**
 * As {@link planSweep}, but a trace sweep's shards are made a prompt at a time as `shards` is
 * iterated (the coordinator's launch and restart: a million Shard objects at once were 331 MB of
 * heap); the same count, limits, errors and shards. Other kinds' shards are an array.
 */
export function planSweepLazy(spec: SweepSpec, sweepId: string, deps: SweepDeps = {}): LazySweepPlan {
  return planWith(spec, sweepId, deps, planKindLazy);
}

function planWith<P extends KindPlan<ShardList>>(spec: SweepSpec, sweepId: string, deps: SweepDeps, planKindWith: (ctx: KindPlanContext) => P) {
  validateSweepId(sweepId);
  const limits = deps.limits ?? limitsOf(spec);
  const modelConfig = deps.model ?? readModelConfig(spec.model.path, limits);
  for (const k of KIND_MODULES) k.check?.(spec, modelConfig);
  let traceLayers: TraceLayers | undefined;
  if (isFromTrace(spec.layers) && spec.kind === "edit")
    traceLayers = deps.traceLayers ?? resolveTrace(spec, spec.layers, modelConfig, deps.traceEvidence, limits);
  else resolveLayers(spec.layers, modelConfig.numLayers); // fail on the spec before any prompt work
  const tokenizer = deps.tokenizer !== undefined ? deps.tokenizer : loadSpecTokenizer(spec, limits.maxFileBytes);
  const model: sweep.ModelRef = {
    modelId: spec.model.id,
    path: spec.model.path,
    dtype: spec.model.dtype,
    modelType: modelConfig.modelType,
    numLayers: modelConfig.numLayers,
  };
  const plan = planKindWith({ spec, sweepId, modelConfig, model, tokenizer, limits, ...(traceLayers ? { traceLayers } : {}) });
  if (plan.plannedCells > limits.maxCells) throw overLimit("", "the sweep's planned cells (work units)", plan.plannedCells, "maxCells", limits.maxCells);
  if (plan.shards.length > limits.maxShards) throw overLimit("shard_cells", "the sweep's shards", plan.shards.length, "maxShards", limits.maxShards);
  if (traceLayers && plan.prompts.length === 0)
    throw new SpecError(
      `layers.from_trace: trace sweep ${traceLayers.sweepId} has none of this sweep's facts (${plan.promptErrors.length} skipped); trace the edit's dataset (the same relations), or edit the traced facts`,
      { path: "layers.from_trace", expected: "a trace of the edit's facts", received: traceLayers.source },
    );
  return { sweepId, model, modelConfig, ...plan, ...(traceLayers ? { traceLayers: traceLayersFor(traceLayers, plan.prompts) } : {}) };
}

/** The trace of `layers: { from_trace }`: a run folder read here, or a sweep the caller (the coordinator) looked up. */
function resolveTrace(
  spec: SweepSpec,
  layers: Extract<SweepSpec["layers"], { from_trace: string }>,
  modelConfig: ModelConfig,
  evidence: TraceEvidence | undefined,
  limits: PlanLimits,
): TraceLayers {
  const src = layers.from_trace;
  const ev = evidence ?? (isTraceFolder(src) ? traceEvidenceFromRunFolder(src, limits.maxFileBytes) : undefined);
  if (!ev)
    throw new SpecError(
      `layers.from_trace: "${src}" is a sweep id, which only the coordinator that ran it can look up (launch there); here give the trace's run folder (sweepctl local --out, or sweepctl archive --keep --out) as a path with a "/"`,
      { path: "layers.from_trace", expected: "a run folder path", received: src },
    );
  const model = { id: spec.model.id, path: spec.model.path, fingerprint: () => modelFingerprint(spec.model.path) };
  return traceLayersFrom(ev, layers, model, modelConfig, editMatrices(spec as Parameters<typeof editMatrices>[0], modelConfig.modelType));
}

/**
 * Caps on what one sweep may cost the coordinator: spec size, files a spec names, tokens per
 * prompt, cells and shards per sweep, and the dimensions a config.json may claim. Every cap is a
 * {@link SpecError} naming the field, the cap and how to raise it. The coordinator sets them from
 * its flags (`--max-spec-bytes`, …) and passes them to {@link parseSweepSpec}; the parsed spec
 * carries them into planSweep (see {@link limitsOf}).
 */
import { SpecError } from "./errors.js";

/** Caps of one sweep. */
export interface PlanLimits {
  /** Largest spec text, in bytes (UTF-8). */
  maxSpecBytes: number;
  /** Largest file a spec names (dataset, relation, corpus, tokenizer), in bytes. */
  maxFileBytes: number;
  /** Most tokens of one prompt (a longer prompt is reported and skipped, like one too long for the model). */
  maxPromptTokens: number;
  /** Most planned cells (work units) of one sweep. */
  maxCells: number;
  /** Most shards of one sweep. */
  maxShards: number;
  /** Most layers a config.json may claim. */
  maxLayers: number;
  /** Largest hidden size a config.json may claim. */
  maxHiddenSize: number;
}

/** The defaults: every shipped demo, example and test fits well inside them. */
export const DEFAULT_PLAN_LIMITS: Readonly<PlanLimits> = Object.freeze({
  maxSpecBytes: 256 * 1024,
  maxFileBytes: 32 * 1024 * 1024,
  maxPromptTokens: 2048,
  maxCells: 20_000_000,
  maxShards: 200_000,
  maxLayers: 1024,
  maxHiddenSize: 65_536,
});

/** The coordinator flag that raises each cap. */
export const LIMIT_FLAGS: Readonly<Record<keyof PlanLimits, string>> = Object.freeze({
  maxSpecBytes: "--max-spec-bytes",
  maxFileBytes: "--max-file-bytes",
  maxPromptTokens: "--max-prompt-tokens",
  maxCells: "--max-cells",
  maxShards: "--max-shards",
  maxLayers: "--max-layers",
  maxHiddenSize: "--max-hidden-size",
});

/** `DEFAULT_PLAN_LIMITS` with `over` applied; every value must be a positive integer. */
export function planLimits(over: Partial<PlanLimits> = {}): PlanLimits {
  const out = { ...DEFAULT_PLAN_LIMITS };
  for (const [k, v] of Object.entries(over) as [keyof PlanLimits, number | undefined][]) {
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v <= 0) throw new RangeError(`Expected limit ${k} to be a positive integer, got ${String(v)}`);
    out[k] = v;
  }
  return out;
}

/** How to raise a cap, for messages. */
export const raiseHint = (key: keyof PlanLimits): string => `limit ${key}; an operator raises it with the coordinator's ${LIMIT_FLAGS[key]}`;

/** A SpecError for `value` over the cap `key`, at spec field `path`. */
export function overLimit(path: string, what: string, value: number, key: keyof PlanLimits, cap: number): SpecError {
  return new SpecError(`${path || "spec"}: ${what} is ${value}, over the cap of ${cap} (${raiseHint(key)})`, {
    path,
    expected: `at most ${cap}`,
    received: value,
  });
}

const bySpec = new WeakMap<object, PlanLimits>();

/** Records the limits a spec was parsed under (parseSweepSpec does this). */
export function attachLimits<T extends object>(spec: T, limits: PlanLimits): T {
  bySpec.set(spec, limits);
  return spec;
}

/** The limits a spec was parsed under, or the defaults. */
export function limitsOf(spec: object): PlanLimits {
  return bySpec.get(spec) ?? DEFAULT_PLAN_LIMITS;
}

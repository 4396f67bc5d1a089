/**
 * The registry of experiment kinds: every kind module, listed once. Spec parsing (fields,
 * defaults, paths), planSweep, shardUnits, KindAggregator, kindCsvColumns and sweepctl's report
 * dispatch through {@link KIND_MODULES}. A new kind: one module here (kinds/<kind>.ts, a
 * {@link SweepKindModule}), one line in EXPERIMENT_KIND_MODULES, and engine/experiments/<kind>.py.
 */
import type { sweep } from "@factsweep/proto";
import type { z } from "zod";
import { editKind } from "./edit.js";
import type { KindPlan, KindPlanContext, ShardList, SweepKindModule } from "./kind.js";
import { knockoutKind } from "./knockout.js";
import { lreKind } from "./lre.js";
import { severKind } from "./sever.js";
import { traceKind } from "./trace.js";

/** The kinds that run as engine experiments (RunExperiment, `result_json`), in report order. */
export const EXPERIMENT_KIND_MODULES = [knockoutKind, severKind, lreKind, editKind] as const;
/** Every kind; `trace` (cells, ResultAggregator) first. */
export const KIND_MODULES = [traceKind, ...EXPERIMENT_KIND_MODULES] as const;

type AnyKind = (typeof KIND_MODULES)[number];
export type ExperimentKindModule = (typeof EXPERIMENT_KIND_MODULES)[number];
/** Every kind of sweep. */
export type SweepKind = AnyKind["name"];
/** Kinds that run as engine experiments rather than cells. */
export type ExperimentKind = ExperimentKindModule["name"];
/** The aggregate of each experiment kind, by kind name. */
export type KindSummaries = { [M in ExperimentKindModule as M["name"]]: M extends SweepKindModule<string, z.ZodRawShape, infer S> ? S : never };

type Intersect<U> = (U extends unknown ? (x: U) => void : never) extends (x: infer I) => void ? I : never;

/** Every kind of sweep, by name. `trace` is causal tracing; the others run the engine's RunExperiment. */
export const ALL_SWEEP_KINDS = KIND_MODULES.map((k) => k.name) as unknown as readonly [SweepKind, ...SweepKind[]];
/** Kinds that run as engine experiments (RunExperiment) rather than cells. */
export const EXPERIMENT_KINDS = EXPERIMENT_KIND_MODULES.map((k) => k.name) as unknown as readonly [ExperimentKind, ...ExperimentKind[]];

/** The spec fields of every kind (trace's `grid`, `tokens`; the others' sections), merged into the sweep spec schema. */
export const KIND_SPEC_FIELDS = Object.assign({}, ...KIND_MODULES.map((k) => k.specFields)) as Intersect<AnyKind["specFields"]>;

/** The module of a kind, or undefined for a name no module has. */
export function kindModule(name: string): SweepKindModule | undefined {
  return (KIND_MODULES as readonly SweepKindModule[]).find((k) => k.name === name);
}

/** The module of an experiment kind, or undefined (trace, unknown names). */
export function experimentKindModule(name: string): ExperimentKindModule | undefined {
  return EXPERIMENT_KIND_MODULES.find((k) => k.name === name);
}

/** A section given for another kind is a mistake (it would be silently ignored). */
export function checkKindSections(spec: { kind: string } & Record<string, unknown>, ctx: z.core.$RefinementCtx): void {
  for (const { name: k, section } of KIND_MODULES as readonly SweepKindModule[]) {
    if (section && spec[k] !== undefined && spec.kind !== k) {
      ctx.addIssue({
        code: "custom",
        path: [k],
        message: `section \`${k}\` only applies to kind ${k} (this sweep is kind ${spec.kind}); remove it or set kind: ${k}`,
      });
    }
  }
}

/** Fills the kind's section with its defaults when the spec left it out. */
export function applyKindDefaults<S extends { kind: string }>(spec: S): S {
  const k = kindModule(spec.kind);
  if (k?.section) (spec as Record<string, unknown>)[k.name] ??= k.section.parse({});
  return spec;
}

/** Resolves the spec's kind's file paths (corpora) against the spec's folder. */
export function resolveKindPaths(spec: Parameters<NonNullable<SweepKindModule["resolvePaths"]>>[0], resolvePath: (p: string) => string): void {
  kindModule(spec.kind)?.resolvePaths?.(spec, resolvePath);
}

/** Plans a sweep with its kind's module (units set per shard). @throws SpecError for section values the model cannot take. */
export function planKind(ctx: KindPlanContext): KindPlan {
  const k = kindModule(ctx.spec.kind);
  if (!k) throw new RangeError(`Expected a sweep kind (${ALL_SWEEP_KINDS.join(", ")}), got ${JSON.stringify(ctx.spec.kind)}`);
  const plan = k.plan(ctx);
  for (const sh of plan.shards) sh.units = k.units(sh);
  return plan;
}

/** As {@link planKind}, with the shards made as they are iterated where the kind can (trace); the others' arrays. */
export function planKindLazy(ctx: KindPlanContext): KindPlan<ShardList> {
  const k = kindModule(ctx.spec.kind);
  if (!k?.planLazy) return planKind(ctx);
  const plan = k.planLazy(ctx);
  const shards = plan.shards;
  return {
    ...plan,
    shards: {
      length: shards.length,
      *[Symbol.iterator]() {
        for (const sh of shards) {
          sh.units = k.units(sh);
          yield sh;
        }
      },
    },
  };
}

/** Work units of a shard, for progress: its cells (trace), or the experiment's rows. */
export function shardUnits(sh: Pick<sweep.Shard, "kind" | "cells" | "paramsJson">): number {
  if (!sh.paramsJson) return sh.cells.length;
  return kindModule(sh.kind || "trace")?.units(sh) ?? 1;
}

export { MAX_PARAMS_BYTES, loadCorpus, mix, shuffle, Sums, type MeanN } from "./common.js";
export * from "./kind.js";
export * from "./trace.js";
export * from "./knockout.js";
export * from "./sever.js";
export * from "./lre.js";
export * from "./edit.js";
export * from "./edit-trace.js";
export * from "./trace-evidence.js";

/**
 * Bridges to the planning and aggregation of @factsweep/planning: the only file that calls
 * `planSweepLazy` and `ResultAggregator`, so a change of their shapes is adapted here alone; and what a
 * planned sweep becomes in the coordinator (its id, its shards' pending records).
 */
import { randomBytes } from "node:crypto";
import { sweep, type control } from "@factsweep/proto";
import {
  KindAggregator,
  planSweepLazy,
  shardUnits,
  readModelConfig,
  ResultAggregator,
  traceEvidenceFromAggregator,
  type ShardList,
  type SweepDeps,
  type SweepSpec,
  type TraceEvidence,
  type TraceLayers,
} from "@factsweep/planning";
import { LeaseTable, type ShardEntry } from "./lease-table.js";
import type { ShardRecord } from "./state-store.js";

/** A planned sweep: prompts (with per-prompt errors) and shards. */
export interface Plan {
  model: sweep.ModelRef;
  prompts: sweep.PromptSpec[];
  promptErrors: { index: number; message: string }[];
  /** A trace sweep's are made a prompt at a time as they are iterated (walk them once). */
  shards: ShardList;
  plannedCells: number;
  /** `layers: { from_trace }` of an edit sweep: the trace's peaks for the planned cases (kept in the sweep's record). */
  traceLayers?: TraceLayers;
}

/** Plans the sweep (tokenization, subject spans, swap partners, grid, shards); `trace`: an edit's trace sweep, looked up or as recorded. */
export function plan(spec: SweepSpec, sweepId: string, trace: Pick<SweepDeps, "traceEvidence" | "traceLayers"> = {}): Plan {
  const p = planSweepLazy(spec, sweepId, trace);
  return {
    model: p.model,
    prompts: p.prompts,
    promptErrors: p.promptErrors,
    shards: p.shards,
    plannedCells: p.plannedCells,
    ...(p.traceLayers ? { traceLayers: p.traceLayers } : {}),
  };
}

/** What an edit's `layers: { from_trace: <id> }` reads of a trace sweep held here (kind, state, model, last-subject-token IE per fact). */
export function traceEvidence(held: {
  rec: { sweepId: string; kind: string; state: string; model: unknown };
  prompts: sweep.PromptSpec[];
  agg: Aggregator;
}): TraceEvidence {
  const model = sweep.ModelRef.fromJSON(held.rec.model);
  const meta = {
    sweepId: held.rec.sweepId,
    state: held.rec.state,
    kind: held.rec.kind,
    model: { id: model.modelId, modelType: model.modelType, numLayers: model.numLayers, path: model.path },
  };
  return held.agg instanceof ResultAggregator ? traceEvidenceFromAggregator(held.agg, held.prompts, meta) : { ...meta, grids: [] };
}

/** A sweep id from the spec's name: lower-case, dashes, at most 40 characters, and a random suffix. */
export function newSweepId(name: string): string {
  return `${
    name
      .toLowerCase()
      .replace(/[^a-z0-9_-]+/g, "-")
      .replace(/^-+|-+$/g, "")
      .slice(0, 40) || "sweep"
  }-${randomBytes(3).toString("hex")}`;
}

/**
 * A planned shard as a new, pending shard record: the shard's protobuf in base64 with its prompt
 * cut to the index and key, since the sweep record holds every prompt once (a prompt of many
 * shards is not stored with each); the scheduler puts the full prompt back into each grant.
 */
export function shardRecord(sweepId: string, sh: sweep.Shard): ShardRecord {
  const p = plannedShard(sweepId, sh);
  return { ...p, shard: Buffer.from(p.shard).toString("base64") };
}

/** A planned shard with its body as bytes (what the scheduler packs; no base64 string per shard). */
export type PlannedShard = ShardEntry & { shard: Uint8Array };

/**
 * A planned shard as a pending entry and its body: the prompt cut to index and key (as in
 * {@link shardRecord}), and without the sweep id, shard id and model, which the entry and the sweep
 * hold once (at 1M shards they were ~100 of a body's bytes); `shardOf` (shard-bodies.ts) puts them back.
 */
export function plannedShard(sweepId: string, sh: sweep.Shard): PlannedShard {
  const prompt = sh.prompt ? sweep.PromptSpec.fromPartial({ index: sh.prompt.index, promptKey: sh.prompt.promptKey }) : undefined;
  const entry: PlannedShard = LeaseTable.pending(
    sh.shardId,
    sweepId,
    sh.prompt?.promptKey ?? `${sweepId}/${sh.prompt?.index ?? 0}`,
    shardUnits(sh),
  ) as PlannedShard;
  entry.shard = sweep.Shard.encode({ ...sh, sweepId: "", shardId: "", model: undefined, prompt }).finish();
  return entry;
}

/** The aggregator of one sweep (idempotent by shard id): tracing's, or the experiment kinds'. */
export type Aggregator = ResultAggregator | KindAggregator;

/** A new, empty aggregator for a sweep's prompts. */
export function newAggregator(spec: SweepSpec, sweepId: string, prompts: sweep.PromptSpec[], traceLayers?: TraceLayers): Aggregator {
  if (spec.kind !== "trace") {
    const cfg = readModelConfig(spec.model.path); // sever re-derives each shard's cells from the model's layers
    return new KindAggregator({ sweepId, spec, prompts, modelType: cfg.modelType, numLayers: cfg.numLayers, ...(traceLayers ? { traceLayers } : {}) });
  }
  return new ResultAggregator({ sweepId, prompts, scheme: spec.token_groups, model: spec.model.id, corruption: spec.corruption.kind });
}

/** Adds a stored result (its protobuf): read in place by tracing's aggregator (a restart folds 1M of them), decoded for the kinds'. */
export function addStored(agg: Aggregator, bytes: Uint8Array): boolean {
  return agg instanceof ResultAggregator ? agg.addEncoded(bytes) : agg.add(sweep.ShardResult.decode(bytes));
}

/** The aggregator's per-cell rows as ResultRows of the Results RPC (lazily: a sweep may have millions). */
export function resultRows(agg: Aggregator): Iterable<control.ResultRow> {
  return agg.rows();
}

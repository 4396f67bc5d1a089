/**
 * ROME's key covariance C once per cluster (issue 17 item 2): the covariance shards of an edit
 * sweep. For each distinct (layer, module) the sweep edits, `edit.cov_shards` shards compute the
 * partial second moment Σ k kᵀ of one contiguous slice of the corpus each (`cov_only`, the moment
 * written to a file the agent uploads); the coordinator merges them into C in the object store
 * (shared/covariance.ts) and holds the edit shards until it exists. Every edit shard names its C
 * (`params.covariance.object`); the agent fetches it and hands it to the engine as a file.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { sweep } from "@factsweep/proto";
import { covarianceObjectName, MAX_COVARIANCE_PARTS, type CovarianceRef } from "@factsweep/shared";
import { SpecError } from "../errors.js";
import { parseJsonFile, readRegularFile } from "../files.js";
import { kindShard } from "./common.js";
import type { KindPlanContext } from "./kind.js";

/** The module whose input is the key of each matrix: W_a and W_g share in_proj's input, hence one C. */
const KEY_MODULE: Record<string, Record<string, string>> = {
  mamba: { W_o: "out_proj", W_a: "in_proj", W_g: "in_proj" },
  mamba2: { W_o: "out_proj", W_a: "in_proj", W_g: "in_proj" },
  gpt_neox: { dense_4h_to_h: "dense_4h_to_h" },
};

/** The engine's default mom2_max_len (rome/params.py HPARAMS): part of C's identity. */
const DEFAULT_MOM2_MAX_LEN = 2048;

const sha16 = (data: string | Buffer): string => createHash("sha256").update(data).digest("hex").slice(0, 16);

/**
 * A fingerprint of a checkpoint folder as this host sees it: config.json's bytes, the dtype it runs
 * in, and each weight file's name, size and modification time (hashing gigabytes of weights at
 * every launch would cost minutes; new weights written there change the time).
 */
export function modelFingerprint(path: string, dtype: string): string {
  const h = createHash("sha256")
    .update(readFileSync(join(path, "config.json")))
    .update(`\0${dtype}\0`);
  for (const f of readdirSync(path).sort()) {
    if (!/\.(safetensors|bin|pt)$|index\.json$/.test(f)) continue;
    const st = statSync(join(path, f));
    h.update(`${f}\0${st.size}\0${Math.trunc(st.mtimeMs)}\0`);
  }
  return h.digest("hex").slice(0, 16);
}

/** The corpus of an edit sweep as its shards carry it: token-id lists, or a .json file of them the engine reads. */
export type EditCorpus = { ids: number[][] } | { path: string };

/** Sequences and hash of the corpus (for a file: its bytes; for ids: the engine's own corpus_hash). */
function corpusIdentity(corpus: EditCorpus, maxFileBytes: number): { sequences: number; hash: string } {
  if ("ids" in corpus) return { sequences: corpus.ids.length, hash: sha16(JSON.stringify(corpus.ids)) };
  const fail = (msg: string) => new SpecError(`edit.corpus: ${msg}`, { path: "edit.corpus", expected: "a readable .json file", received: corpus.path });
  const text = readRegularFile(corpus.path, "the corpus file", maxFileBytes, fail);
  let data = parseJsonFile(text, "the corpus file", corpus.path, fail);
  if (data && typeof data === "object" && !Array.isArray(data)) data = (data as { corpus?: unknown }).corpus;
  return { sequences: Array.isArray(data) ? data.length : 0, hash: sha16(text) };
}

/** The covariance shards of an edit sweep and the C each (layer, matrix) uses. */
export interface CovariancePlan {
  shards: sweep.Shard[];
  /** The object name of C for `${layer}|${matrix}`. */
  objectOf: Map<string, string>;
}

/**
 * Plans the covariance shards: per distinct (layer, key module), `parts` slices of the corpus (at
 * most one per sequence), shard parts numbered from `firstPart` on the sweep's first prompt.
 */
export function planCovariance(
  ctx: KindPlanContext,
  prompt: sweep.PromptSpec,
  firstPart: number,
  layers: readonly number[],
  matrices: readonly string[],
  corpus: EditCorpus,
  hparams: Record<string, unknown>,
  parts: number,
): CovariancePlan {
  const { modelConfig, model } = ctx;
  const maxLen = typeof hparams.mom2_max_len === "number" ? hparams.mom2_max_len : DEFAULT_MOM2_MAX_LEN;
  const fingerprint = modelFingerprint(model.path, model.dtype);
  const { sequences, hash } = corpusIdentity(corpus, ctx.limits.maxFileBytes);
  const n = Math.min(parts, MAX_COVARIANCE_PARTS, Math.max(1, sequences));
  const objectOf = new Map<string, string>();
  const shards: sweep.Shard[] = [];
  const seen = new Set<string>();
  // Only what the engine's covariance reads: hparams that change C, nothing of the cases.
  const hp = Object.fromEntries(Object.entries(hparams).filter(([k]) => k === "mom2_max_len" || k === "mom2_batch_tokens"));
  for (const layer of layers) {
    for (const matrix of matrices) {
      const module = KEY_MODULE[modelConfig.modelType]?.[matrix] ?? matrix;
      const object = covarianceObjectName(fingerprint, layer, module, hash, maxLen);
      objectOf.set(`${layer}|${matrix}`, object);
      if (seen.has(object)) continue;
      seen.add(object);
      for (let k = 0; k < n; k++) {
        const slice = [Math.floor((k * sequences) / n), Math.floor(((k + 1) * sequences) / n)] as const;
        const covariance: CovarianceRef = { object, part: k, parts: n };
        const params = {
          matrix,
          layer,
          ...("ids" in corpus ? { corpus: corpus.ids.slice(slice[0], slice[1]) } : { corpus_path: corpus.path, corpus_slice: slice }),
          hparams: hp,
          cov_only: true,
          covariance,
        };
        shards.push(kindShard(ctx, prompt, firstPart + shards.length, params));
      }
    }
  }
  return { shards, objectOf };
}

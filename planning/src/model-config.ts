/**
 * Read the shape of a Hugging Face checkpoint from its `config.json`, so the coordinator can plan a
 * grid (layers, sites) without loading weights.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import { ModelConfigError } from "./errors.js";
import { parseJsonFile, readRegularFile, typeOfValue } from "./files.js";
import { DEFAULT_PLAN_LIMITS, raiseHint, type PlanLimits } from "./limits.js";
import { MODEL_TYPES, type ModelType } from "./sites.js";

/** What planning needs to know about a model. */
export interface ModelConfig {
  modelType: ModelType;
  numLayers: number;
  hiddenSize: number;
  vocabSize: number;
  /** Longest prompt in tokens; 0 = no limit (Mamba). */
  maxPositions: number;
  /** Mamba-2: heads of the SSM (`num_heads`), what a grid entry's `heads` may name; absent for other models. */
  numHeads?: number;
}

/** Largest config.json read (real ones are a few KiB). */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** Largest vocabulary a config.json may claim. */
export const MAX_VOCAB_SIZE = 4_194_304;

// Field names differ between architectures and between original and HF-converted configs.
const LAYER_KEYS = ["num_hidden_layers", "n_layer", "n_layers", "num_layers"];
const HIDDEN_KEYS = ["hidden_size", "d_model", "n_embd"];

/**
 * transformers 4.x writes Mamba-2's `time_step_limit` as `[0.0, Infinity]`, which is not JSON: a bare
 * `Infinity` / `-Infinity` (outside strings) is read as `null` (planning reads no such field); NaN
 * stays invalid.
 */
function bareInfinityAsNull(text: string): string {
  return text.replace(/"(?:[^"\\]|\\.)*"|-?\bInfinity\b/g, (m) => (m.startsWith('"') ? m : "null"));
}

function pick(cfg: Record<string, unknown>, keys: string[], file: string, modelPath: string, what: string): number {
  for (const k of keys) {
    const v = cfg[k];
    if (v === undefined) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new ModelConfigError(`${file}: expected \`${k}\` (${what}) to be a positive integer, got ${typeof v === "number" ? v : typeOfValue(v)}`, modelPath);
    }
    return v;
  }
  throw new ModelConfigError(`${file}: missing ${what} (expected one of ${keys.map((k) => `\`${k}\``).join(", ")})`, modelPath);
}

/**
 * Read `<path>/config.json`.
 * @throws ModelConfigError for a missing folder or file, invalid JSON, or an unsupported `model_type`.
 */
export function readModelConfig(path: string, limits: Pick<PlanLimits, "maxLayers" | "maxHiddenSize"> = DEFAULT_PLAN_LIMITS): ModelConfig {
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch (err) {
    throw new ModelConfigError(
      `model folder ${path} does not exist; set model.path to a local Hugging Face checkpoint folder (with config.json and *.safetensors)`,
      path,
      { cause: err },
    );
  }
  if (!isDir) throw new ModelConfigError(`model path ${path} is not a folder; set model.path to the checkpoint folder, not a file in it`, path);
  const file = join(path, "config.json");
  const fail = (msg: string, cause?: unknown) =>
    new ModelConfigError(
      `${(cause as NodeJS.ErrnoException | undefined)?.code === "ENOENT" ? `${file} not found` : msg}: ${path} is not a usable Hugging Face checkpoint folder (it needs config.json and *.safetensors)`,
      path,
      { cause },
    );
  const cfg = parseJsonFile(
    bareInfinityAsNull(readRegularFile(file, "config file", MAX_CONFIG_BYTES, fail)),
    "config file",
    file,
    (msg, cause) => new ModelConfigError(msg, path, { cause }),
  );
  if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg)) {
    throw new ModelConfigError(`${file}: expected a JSON object, got ${typeOfValue(cfg)}`, path);
  }
  const c = cfg as Record<string, unknown>;
  const modelType = c.model_type;
  if (typeof modelType !== "string" || !(MODEL_TYPES as string[]).includes(modelType)) {
    throw new ModelConfigError(
      `${file}: unsupported model_type${typeof modelType === "string" && /^[\w.-]{1,40}$/.test(modelType) ? ` "${modelType}" (string)` : ` (${typeOfValue(modelType)})`}; supported: ${MODEL_TYPES.join(", ")}`,
      path,
    );
  }
  const maxPos = c.max_position_embeddings;
  const numLayers = pick(c, LAYER_KEYS, file, path, "number of layers");
  const hiddenSize = pick(c, HIDDEN_KEYS, file, path, "hidden size");
  const vocabSize = pick(c, ["vocab_size"], file, path, "vocabulary size");
  const sane = (v: number, cap: number, what: string, key: "maxLayers" | "maxHiddenSize" | null) => {
    if (v > cap)
      throw new ModelConfigError(`${file}: ${what} ${v} is over the cap of ${cap}${key ? ` (${raiseHint(key)})` : ""}; is this config.json right?`, path);
  };
  sane(numLayers, limits.maxLayers, "number of layers", "maxLayers");
  sane(hiddenSize, limits.maxHiddenSize, "hidden size", "maxHiddenSize");
  sane(vocabSize, MAX_VOCAB_SIZE, "vocabulary size", null);
  // Mamba-2's heads: only a spec that names heads needs them (trace's check says so when they are missing).
  const heads = modelType === "mamba2" && c.num_heads !== undefined ? pick(c, ["num_heads"], file, path, "number of heads") : undefined;
  if (heads !== undefined) sane(heads, limits.maxHiddenSize, "number of heads", "maxHiddenSize");
  return {
    modelType: modelType as ModelType,
    numLayers,
    hiddenSize,
    vocabSize,
    maxPositions: modelType === "mamba" ? 0 : typeof maxPos === "number" && Number.isInteger(maxPos) && maxPos > 0 ? maxPos : 0,
    ...(heads !== undefined ? { numHeads: heads } : {}),
  };
}

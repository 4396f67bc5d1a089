/**
 * Read the shape of a Hugging Face checkpoint from its `config.json`, so the coordinator can plan a
 * grid (layers, sites) without loading weights.
 */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { describeValue } from "@factsweep/shared";
import { ModelConfigError } from "./errors.js";
import { MODEL_TYPES, type ModelType } from "./sites.js";

/** What planning needs to know about a model. */
export interface ModelConfig {
  modelType: ModelType;
  numLayers: number;
  hiddenSize: number;
  vocabSize: number;
  /** Longest prompt in tokens; 0 = no limit (Mamba). */
  maxPositions: number;
}

// Field names differ between architectures and between original and HF-converted configs.
const LAYER_KEYS = ["num_hidden_layers", "n_layer", "n_layers", "num_layers"];
const HIDDEN_KEYS = ["hidden_size", "d_model", "n_embd"];

function pick(cfg: Record<string, unknown>, keys: string[], file: string, modelPath: string, what: string): number {
  for (const k of keys) {
    const v = cfg[k];
    if (v === undefined) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new ModelConfigError(`${file}: expected \`${k}\` (${what}) to be a positive integer, got ${describeValue(v)}`, modelPath);
    }
    return v;
  }
  throw new ModelConfigError(`${file}: missing ${what} (expected one of ${keys.map((k) => `\`${k}\``).join(", ")})`, modelPath);
}

/**
 * Read `<path>/config.json`.
 * @throws ModelConfigError for a missing folder or file, invalid JSON, or an unsupported `model_type`.
 */
export function readModelConfig(path: string): ModelConfig {
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
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ModelConfigError(`${file} not found: ${path} is not a Hugging Face checkpoint folder (it needs config.json and *.safetensors)`, path, {
      cause: err,
    });
  }
  let cfg: unknown;
  try {
    cfg = JSON.parse(text);
  } catch (err) {
    throw new ModelConfigError(`${file} is not valid JSON: ${(err as Error).message}`, path, { cause: err });
  }
  if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg)) {
    throw new ModelConfigError(`${file}: expected a JSON object, got ${describeValue(cfg)}`, path);
  }
  const c = cfg as Record<string, unknown>;
  const modelType = c.model_type;
  if (typeof modelType !== "string" || !(MODEL_TYPES as string[]).includes(modelType)) {
    throw new ModelConfigError(`${file}: unsupported model_type ${describeValue(modelType)}; supported: ${MODEL_TYPES.join(", ")}`, path);
  }
  const maxPos = c.max_position_embeddings;
  return {
    modelType: modelType as ModelType,
    numLayers: pick(c, LAYER_KEYS, file, path, "number of layers"),
    hiddenSize: pick(c, HIDDEN_KEYS, file, path, "hidden size"),
    vocabSize: pick(c, ["vocab_size"], file, path, "vocabulary size"),
    maxPositions: modelType === "mamba" ? 0 : typeof maxPos === "number" && Number.isInteger(maxPos) && maxPos > 0 ? maxPos : 0,
  };
}

/**
 * Every path of a sweep spec is confined to configured roots, so a spec cannot make the
 * coordinator read (or agents load) files elsewhere on the machine: the model folder and tokenizer
 * to the model roots (`--model-root`), dataset files and folders and a kind's corpus to the data
 * roots (`--data-root`; the model roots when none is given). Real paths are compared on both
 * sides (a root or a path through a symlink is resolved), only regular files and folders pass (a
 * FIFO, device or socket is refused after a stat, never opened), and no message holds file bytes.
 * The checks themselves are planning's (`confinePath`); this maps them to the coordinator's errors.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { confineDataPaths, confinePath, isUnder, PathDeniedError, PathUnusableError, realPathLoose, realRoots, type SpecPaths } from "@factsweep/planning";
import { CoordinatorError, InvalidSpecError, ModelNotFoundError, ModelPathDeniedError } from "./errors.js";

/** Resolves roots once to real paths (symlinks resolved; a missing root keeps its resolved path). */
export function normalizeRoots(roots: readonly string[]): string[] {
  return realRoots(roots);
}

/** A dataset or corpus path outside every data root (or none configured). */
export class DataPathDeniedError extends CoordinatorError {
  readonly field: string;
  readonly path: string;
  constructor(message: string, field: string, path: string) {
    super(message, status.PERMISSION_DENIED);
    this.name = "DataPathDeniedError";
    this.field = field;
    this.path = path;
  }
}

const modelRoots = (roots: readonly string[]) => ({ roots, name: "model roots", flag: "--model-root" });

/**
 * Checks that `modelPath` (absolute) is a checkpoint folder inside one of `roots` (real paths) and
 * returns its real path.
 * @throws ModelPathDeniedError outside every root; ModelNotFoundError when missing or without config.json.
 */
export function confineModelPath(modelPath: string, roots: readonly string[]): string {
  let real: string;
  try {
    real = confinePath(modelPath, "model.path", "folder", modelRoots(roots));
  } catch (err) {
    if (err instanceof PathDeniedError) throw new ModelPathDeniedError(modelPath, roots);
    const missing = err instanceof PathUnusableError && /does not exist/.test(err.message);
    throw new ModelNotFoundError(
      modelPath,
      missing
        ? `model folder "${modelPath}" does not exist (spec field model.path); check the path or copy the checkpoint there`
        : `model folder "${modelPath}" is not a Hugging Face checkpoint (spec field model.path): expected a folder with config.json and *.safetensors`,
      { cause: err },
    );
  }
  let ok = false;
  try {
    ok = statSync(join(real, "config.json")).isFile();
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new ModelNotFoundError(
      modelPath,
      `model folder "${modelPath}" is not a Hugging Face checkpoint (spec field model.path): expected a folder with config.json and *.safetensors`,
    );
  }
  return real;
}

/** Whether `p` lies inside one of `roots` (real paths on both sides; a missing path by its deepest existing folder). */
export function isInsideRoots(p: string, roots: readonly string[]): boolean {
  const { real } = realPathLoose(p);
  return roots.some((r) => isUnder(real, r));
}

/**
 * Confines every path of a parsed spec and replaces each with its real path: model folder and
 * tokenizer to `roots` (model roots), dataset and corpus paths to `dataRoots`.
 * @throws ModelPathDeniedError, ModelNotFoundError (model); DataPathDeniedError (PERMISSION_DENIED)
 *   outside the data roots; InvalidSpecError naming the field for a missing path or one that is not
 *   a regular file / folder.
 */
export function confineSweepSpec<S extends SpecPaths>(spec: S, roots: readonly string[], dataRoots: readonly string[]): S {
  spec.model.path = confineModelPath(spec.model.path, roots);
  try {
    if (spec.model.tokenizer) spec.model.tokenizer = confinePath(spec.model.tokenizer, "model.tokenizer", "file", modelRoots(roots));
    return confineDataPaths(spec, { roots: dataRoots, name: "data roots", flag: "--data-root" });
  } catch (err) {
    if (err instanceof PathDeniedError) {
      if (err.field.startsWith("model.")) throw new ModelPathDeniedError(err.path, roots);
      throw new DataPathDeniedError(err.message, err.field, err.path);
    }
    if (err instanceof PathUnusableError) throw new InvalidSpecError(err.field, err.message, { cause: err });
    throw err;
  }
}

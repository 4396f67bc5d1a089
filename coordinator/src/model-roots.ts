/**
 * Model paths are confined to configured model roots: a sweep spec cannot make agents load (or
 * the coordinator read) files elsewhere on the machine. Checked on the lexical path and again on
 * the real path, so a symlink inside a root cannot point outside it.
 */
import { realpathSync, statSync } from "node:fs";
import { join, resolve, sep } from "node:path";
import { ModelNotFoundError, ModelPathDeniedError } from "./errors.js";

/** Resolves roots once (real paths); missing roots are kept lexically so the error names them. */
export function normalizeRoots(roots: readonly string[]): string[] {
  return roots.map((r) => {
    try {
      return realpathSync(resolve(r));
    } catch {
      return resolve(r);
    }
  });
}

const inside = (p: string, root: string): boolean => p === root || p.startsWith(root.endsWith(sep) ? root : root + sep);

/**
 * Checks that `modelPath` (absolute) is a checkpoint folder inside one of `roots` and returns
 * its real path.
 * @throws ModelPathDeniedError outside every root; ModelNotFoundError when missing or without config.json.
 */
export function confineModelPath(modelPath: string, roots: readonly string[]): string {
  const lexical = resolve(modelPath);
  if (!roots.some((r) => inside(lexical, r))) throw new ModelPathDeniedError(modelPath, roots);
  let real: string;
  try {
    real = realpathSync(lexical);
  } catch (err) {
    throw new ModelNotFoundError(modelPath, `model folder "${modelPath}" does not exist (spec field model.path); check the path or copy the checkpoint there`, {
      cause: err,
    });
  }
  if (!roots.some((r) => inside(real, r))) throw new ModelPathDeniedError(`${modelPath} (resolves to ${real})`, roots);
  try {
    if (!statSync(real).isDirectory()) throw new Error("not a directory");
    statSync(join(real, "config.json"));
  } catch (err) {
    throw new ModelNotFoundError(
      modelPath,
      `model folder "${modelPath}" is not a Hugging Face checkpoint (spec field model.path): expected a folder with config.json and *.safetensors`,
      { cause: err },
    );
  }
  return real;
}

/** Whether `p` lies (lexically and, when it exists, really) inside one of `roots`. */
export function isInsideRoots(p: string, roots: readonly string[]): boolean {
  const lexical = resolve(p);
  if (!roots.some((r) => inside(lexical, r))) return false;
  try {
    const real = realpathSync(lexical);
    return roots.some((r) => inside(real, r));
  } catch {
    return true;
  }
}

/** A cheap fingerprint of a model folder: what run.json records and what `layers: { from_trace }` compares. */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

/** What {@link modelFingerprint} returns (run.json's `model`). */
export interface ModelFingerprint {
  path: string;
  /** sha256 of config.json and of each safetensors index. */
  sha256: Record<string, string>;
  /** Name and size of every weight file. */
  weights: { file: string; bytes: number }[];
  tokenizer?: { path: string; sha256: string };
}

const sha256 = (file: string): string => createHash("sha256").update(readFileSync(file)).digest("hex");

/**
 * A fingerprint of the model folder that stays cheap for 2.8B checkpoints: sha256 of config.json,
 * of the tokenizer and of each safetensors index, and the name and size of every weight file.
 */
export function modelFingerprint(dir: string, tokenizerPath?: string): ModelFingerprint {
  const files = existsSync(dir) ? readdirSync(dir).sort() : [];
  const hashed = files.filter((f) => f === "config.json" || f.endsWith(".index.json"));
  const weights = files.filter((f) => /\.(safetensors|bin|pt)$/.test(f)).map((f) => ({ file: f, bytes: statSync(join(dir, f)).size }));
  const tokenizer = tokenizerPath ?? (files.includes("tokenizer.json") ? join(dir, "tokenizer.json") : undefined);
  return {
    path: dir,
    sha256: Object.fromEntries(hashed.map((f) => [f, sha256(join(dir, f))])),
    weights,
    ...(tokenizer && existsSync(tokenizer) ? { tokenizer: { path: tokenizer, sha256: sha256(tokenizer) } } : {}),
  };
}

/** Why two fingerprints are not of the same weights (config or weight files differ), or undefined when they agree. */
export function fingerprintMismatch(a: Pick<ModelFingerprint, "sha256" | "weights">, b: Pick<ModelFingerprint, "sha256" | "weights">): string | undefined {
  for (const k of new Set([...Object.keys(a.sha256 ?? {}), ...Object.keys(b.sha256 ?? {})]))
    if (a.sha256?.[k] !== b.sha256?.[k])
      return `${k} differs (sha256 ${a.sha256?.[k]?.slice(0, 12) ?? "absent"} vs ${b.sha256?.[k]?.slice(0, 12) ?? "absent"})`;
  const w = (f: Pick<ModelFingerprint, "weights">) => JSON.stringify([...(f.weights ?? [])].sort((x, y) => x.file.localeCompare(y.file)));
  if (w(a) !== w(b)) return `the weight files differ (${w(a)} vs ${w(b)})`;
  return undefined;
}

/**
 * Test-only helper (not exported from index.ts): where the project's shared data lives. DESIGN.md
 * calls it `../shared` from the repository root; worktrees sit one level deeper, CI may set
 * FACTSWEEP_SHARED_DIR.
 */
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The shared data folder (golden/, data/), or undefined when it is not on this machine. */
export const SHARED_DIR: string | undefined = [
  process.env.FACTSWEEP_SHARED_DIR,
  join(repoRoot, "../shared"),
  join(repoRoot, "../../shared"),
  "/work/shared",
].find((p): p is string => !!p && existsSync(join(p, "golden")));

/** Path under the shared folder, or undefined when absent. */
export function sharedPath(...parts: string[]): string | undefined {
  if (!SHARED_DIR) return undefined;
  const p = join(SHARED_DIR, ...parts);
  return existsSync(p) ? p : undefined;
}

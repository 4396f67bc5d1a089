import { test } from "node:test";
import assert from "node:assert/strict";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { MODEL_TYPES, SITES_BY_MODEL_TYPE } from "../sites.js";
import { EDIT_MATRICES } from "./edit.js";
import { DEFAULT_SEVER_PATHS, SEVER_PATHS } from "./sever.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

interface EngineTable {
  sites: string[];
  sever_paths: string[];
  default_sever_paths: string[];
  edit_matrices: string[];
}

/** The engine's architecture tables (`python -m engine.architectures`), or why they cannot be read here. */
async function engineTables(): Promise<Record<string, EngineTable> | string> {
  const py = await execa("bash", [join(REPO, "scripts/find-python.sh")], { reject: false });
  if (py.exitCode !== 0) return `no Python with torch and protobuf here (scripts/find-python.sh: ${py.stderr.trim()})`;
  const out = await execa("bash", [join(REPO, "scripts/engine-python.sh"), "-m", "engine.architectures"], { cwd: REPO });
  return JSON.parse(out.stdout) as Record<string, EngineTable>;
}

const tables = await engineTables();
const skip = typeof tables === "string" ? tables : false;

test("the TypeScript architecture lists are the engine's tables (sites, sever paths, default sever paths, edit matrices)", { skip }, () => {
  const t = tables as Record<string, EngineTable>;
  assert.deepEqual([...MODEL_TYPES].sort(), Object.keys(t).sort(), "model types");
  for (const mt of MODEL_TYPES) {
    assert.deepEqual([...SITES_BY_MODEL_TYPE[mt]], t[mt]!.sites, `${mt} sites (proto Site enum order)`);
    assert.deepEqual([...SEVER_PATHS[mt]], t[mt]!.sever_paths, `${mt} sever paths`);
    assert.deepEqual([...DEFAULT_SEVER_PATHS[mt]], t[mt]!.default_sever_paths, `${mt} default sever paths`);
    assert.deepEqual([...EDIT_MATRICES[mt]], t[mt]!.edit_matrices, `${mt} edit matrices`);
  }
});

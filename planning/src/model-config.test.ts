import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readModelConfig } from "./model-config.js";
import { ModelConfigError } from "./errors.js";

import { sharedPath } from "@factsweep/testing";

const GOLDEN = sharedPath("golden");

test("the golden Mamba and GPT-NeoX checkpoints report their shapes", { skip: !GOLDEN && "shared/golden is not on this machine" }, () => {
  assert.deepEqual(readModelConfig(`${GOLDEN}/mamba-tiny`), { modelType: "mamba", numLayers: 4, hiddenSize: 64, vocabSize: 1000, maxPositions: 0 });
  assert.deepEqual(readModelConfig(`${GOLDEN}/neox-tiny`), { modelType: "gpt_neox", numLayers: 4, hiddenSize: 64, vocabSize: 1000, maxPositions: 128 });
});

test("a Mamba-2 config.json reports its shape, with time_step_limit as transformers 5 and as transformers 4 write it", () => {
  const golden2 = sharedPath("golden-mamba2", "mamba2-tiny");
  if (golden2) assert.deepEqual(readModelConfig(golden2), { modelType: "mamba2", numLayers: 4, hiddenSize: 64, vocabSize: 1000, maxPositions: 0, numHeads: 8 });
  const dir = mkdtempSync(join(tmpdir(), "fs-model-"));
  try {
    const cfg = { model_type: "mamba2", num_hidden_layers: 3, hidden_size: 32, vocab_size: 64, note: "Infinity in a string stays" };
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, time_step_limit: [0.0, "INF"] }).replace('"INF"', "Infinity"));
    assert.deepEqual(readModelConfig(dir), { modelType: "mamba2", numLayers: 3, hiddenSize: 32, vocabSize: 64, maxPositions: 0 });
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, time_step_limit: [0.0, "INF"] }).replace('"INF"', "NaN"));
    assert.throws(
      () => readModelConfig(dir),
      (e: unknown) => e instanceof ModelConfigError && /is not valid JSON/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a missing folder, a folder without config.json and an unknown model_type are ModelConfigErrors that say what to fix", () => {
  const dir = mkdtempSync(join(tmpdir(), "fs-model-"));
  try {
    assert.throws(
      () => readModelConfig(join(dir, "nope")),
      (e: unknown) => e instanceof ModelConfigError && /does not exist/.test(e.message),
    );
    assert.throws(
      () => readModelConfig(dir),
      (e: unknown) => e instanceof ModelConfigError && /config\.json not found/.test(e.message),
    );
    writeFileSync(join(dir, "config.json"), JSON.stringify({ model_type: "llama", num_hidden_layers: 2 }));
    assert.throws(() => readModelConfig(dir), /unsupported model_type "llama" \(string\); supported: mamba, mamba2, gpt_neox/);
    writeFileSync(join(dir, "config.json"), JSON.stringify({ model_type: "mamba", n_layer: 2, d_model: 8 }));
    assert.throws(() => readModelConfig(dir), /missing vocabulary size/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

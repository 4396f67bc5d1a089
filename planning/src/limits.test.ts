import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { SpecError } from "./errors.js";
import { DEFAULT_PLAN_LIMITS, planLimits } from "./limits.js";
import { planSweep } from "./plan.js";
import { parseSweepSpec, validateSweepSpec } from "./spec.js";
import { sharedPath } from "@factsweep/testing";

const GOLDEN = sharedPath("golden/mamba-tiny");
const noGolden = !GOLDEN && "shared/golden is absent";

test("a 1 MB spec is refused cleanly before it is parsed, naming the cap and how to raise it", () => {
  const big = `name: big\nmodel: { id: m, path: /m }\ndataset:\n  prompts:\n${"    - { text: 'The Eiffel Tower is in', subject: 'Eiffel Tower' }\n".repeat(16_000)}`;
  assert.ok(big.length > 1_000_000);
  const t0 = Date.now();
  assert.throws(
    () => parseSweepSpec(big),
    (e: unknown) => {
      assert.ok(e instanceof SpecError);
      assert.match(e.message, /spec: the spec's size in bytes is \d+, over the cap of 262144 \(limit maxSpecBytes; .*--max-spec-bytes\)/);
      return true;
    },
  );
  assert.ok(Date.now() - t0 < 1000);
  // Configurable: the same spec parses under a raised cap.
  assert.equal(parseSweepSpec(big, { limits: planLimits({ maxSpecBytes: 2_000_000 }) }).dataset.prompts!.length, 16_000);
});

const spec = (extra: Record<string, unknown>, limits?: ReturnType<typeof planLimits>) =>
  validateSweepSpec(
    {
      name: "g",
      model: { id: "m", path: GOLDEN ?? "/missing" },
      dataset: { prompts: [{ input_ids: [1, 2, 3, 4, 5], subject: [1, 3], corrupted_ids: [1, 7, 8, 4, 5] }] },
      ...extra,
    },
    { limits },
  );

test("duplicate grid entries are refused naming both", () => {
  assert.throws(
    () => spec({ grid: [{ site: "residual" }, { site: "mixer", window: 3 }, { site: "residual", window: 1 }] }),
    (e: unknown) => e instanceof SpecError && e.path === "grid[2]" && /duplicate of grid\[0\] \(residual, window 1\)/.test(e.message),
  );
  assert.throws(() => spec({ grid: [{ site: "embed" }, { site: "embed", window: 2 }] }), /grid\[1\]: duplicate of grid\[0\]/);
});

test("windows are capped by the model's depth: past 2 × layers every window is the same cells", { skip: noGolden }, () => {
  const plan = planSweep(spec({ grid: [{ site: "mixer", window: 1_000_000 }] }), "w");
  assert.ok(
    plan.shards[0]!.cells.every((c) => c.window === 8),
    "4 layers: window cut to 8",
  );
  assert.throws(
    () =>
      planSweep(
        spec({
          grid: [
            { site: "mixer", window: 8 },
            { site: "mixer", window: 50 },
          ],
        }),
        "w",
      ),
    /grid\[1\]: same cells as grid\[0\] on this 4-layer model/,
  );
});

test("a prompt over the token cap is refused (reported, not planned) naming the cap", { skip: noGolden }, () => {
  const long = Array.from({ length: 3000 }, (_, i) => 1 + (i % 50));
  const s = spec({ dataset: { prompts: [{ input_ids: long, subject: [1, 3], corrupted_ids: long }] } });
  const plan = planSweep(s, "long", { model: { modelType: "mamba", numLayers: 4, hiddenSize: 16, vocabSize: 1000, maxPositions: 0 }, tokenizer: null });
  assert.equal(plan.prompts.length, 0);
  assert.equal(plan.shards.length, 0);
  assert.match(plan.promptErrors[0]!.message, /prompt is 3000 tokens, over the cap of 2048 tokens per prompt \(limit maxPromptTokens; .*--max-prompt-tokens\)/);
  // Configurable: a raised cap plans it; a lowered one refuses the default prompt.
  const raised = planSweep(
    spec({ dataset: s.dataset, layers: [0], grid: [{ site: "residual" }], tokens: ["last"] }, planLimits({ maxPromptTokens: 4000 })),
    "long",
  );
  assert.equal(raised.prompts.length, 1);
  assert.equal(planSweep(spec({}, planLimits({ maxPromptTokens: 4 })), "short").promptErrors.length, 1);
});

test("caps on cells and shards per sweep are SpecErrors naming the cap; configurable", { skip: noGolden }, () => {
  const cells = 3 * 4 * 5; // (residual, mixer, ssm) × 4 layers × 5 tokens
  const s = (l: Partial<typeof DEFAULT_PLAN_LIMITS>) =>
    spec({ grid: [{ site: "residual" }, { site: "mixer" }, { site: "ssm" }], shard_cells: 4 }, planLimits(l));
  assert.equal(planSweep(s({}), "c").plannedCells, cells);
  assert.throws(
    () => planSweep(s({ maxCells: cells - 1 }), "c"),
    (e: unknown) => e instanceof SpecError && /planned cells .* over the cap of 59 \(limit maxCells; .*--max-cells\)/.test(e.message),
  );
  assert.throws(
    () => planSweep(s({ maxShards: 10 }), "c"),
    (e: unknown) => e instanceof SpecError && e.path === "shard_cells" && /over the cap of 10 \(limit maxShards/.test(e.message),
  );
  assert.throws(() => planLimits({ maxCells: 0 }), /positive integer/);
});

test("config.json dimensions are sanity-checked against caps", { skip: noGolden }, async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { readModelConfig } = await import("./model-config.js");
  const dir = mkdtempSync(join(tmpdir(), "fs-cfg-"));
  try {
    writeFileSync(join(dir, "config.json"), JSON.stringify({ model_type: "mamba", n_layer: 100_000, d_model: 64, vocab_size: 100 }));
    assert.throws(() => readModelConfig(dir), /number of layers 100000 is over the cap of 1024 \(limit maxLayers; .*--max-layers\)/);
    writeFileSync(join(dir, "config.json"), JSON.stringify({ model_type: "mamba", n_layer: 2, d_model: 10_000_000, vocab_size: 100 }));
    assert.throws(() => readModelConfig(dir), /hidden size 10000000 is over the cap of 65536/);
    assert.equal(readModelConfig(dir, planLimits({ maxHiddenSize: 10_000_000 })).hiddenSize, 10_000_000);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

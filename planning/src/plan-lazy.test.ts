import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { REPO_ROOT } from "@factsweep/testing";
import { SpecError } from "./errors.js";
import { planLimits } from "./limits.js";
import { planSweep, planSweepLazy } from "./plan.js";
import { validateSweepSpec } from "./spec.js";

// The repository's tiny Mamba (8 layers, a tokenizer): the lazy plan must be the coordinator's launch plan exactly.
const MODEL = join(REPO_ROOT, "models/mamba-facts");

const prompt = (n: number, subject: [number, number]) => {
  const ids = Array.from({ length: n }, (_, i) => 10 + i);
  return { input_ids: ids, subject, corrupted_ids: ids.map((t, i) => (i >= subject[0] && i < subject[1] ? t + 100 : t)) };
};

const spec = (extra: Record<string, unknown>, limits?: ReturnType<typeof planLimits>) =>
  validateSweepSpec(
    {
      name: "lazy",
      model: { id: "m", path: MODEL },
      // 3 tokens: index -5 is outside it (a PromptError, skipped); 40 tokens: over maxPromptTokens below.
      dataset: { prompts: [prompt(6, [1, 3]), prompt(3, [0, 1]), prompt(9, [2, 5]), prompt(40, [1, 2]), prompt(5, [0, 2])] },
      ...extra,
    },
    { limits },
  );

const SPECS: [string, ReturnType<typeof spec>][] = [
  [
    "several shards a prompt, a prompt skipped for its tokens",
    spec({ grid: [{ site: "residual" }, { site: "mixer", window: 3 }], tokens: [-5, "last"], shard_cells: 7 }),
  ],
  ["one cell a shard, every token", spec({ grid: [{ site: "embed" }, { site: "ssm" }], layers: "2:5", tokens: "all", shard_cells: 1 })],
  ["a prompt a shard, a prompt over maxPromptTokens", spec({ tokens: ["subject", -1], layers: "all" }, planLimits({ maxPromptTokens: 20 }))],
  ["every prompt skipped", spec({ tokens: [45] })],
];

for (const [name, s] of SPECS) {
  test(`planSweepLazy gives planSweep's plan, shard by shard: ${name}`, () => {
    const eager = planSweep(s, "sw");
    const lazy = planSweepLazy(s, "sw");
    assert.deepEqual(lazy.prompts, eager.prompts);
    assert.deepEqual(lazy.promptErrors, eager.promptErrors);
    assert.equal(lazy.plannedCells, eager.plannedCells);
    assert.equal(lazy.shards.length, eager.shards.length);
    assert.ok(!Array.isArray(lazy.shards), "a trace plan's shards are made as they are iterated");
    assert.deepEqual([...lazy.shards], eager.shards);
    assert.deepEqual([...lazy.shards], eager.shards, "a second walk makes the same shards");
  });
}

test("the specs above plan what they say: skipped prompts with their errors, several shards a prompt", () => {
  const [withSkip, oneCell, overTokens, none] = SPECS.map(([, s]) => planSweepLazy(s, "sw"));
  assert.deepEqual(
    withSkip!.promptErrors.map((e) => e.index),
    [1],
  );
  assert.match(withSkip!.promptErrors[0]!.message, /index -5 is outside this prompt of 3 tokens/);
  assert.ok(withSkip!.shards.length > withSkip!.prompts.length);
  assert.equal(oneCell!.shards.length, oneCell!.plannedCells);
  assert.deepEqual(
    overTokens!.promptErrors.map((e) => e.index),
    [3],
  );
  assert.equal(none!.shards.length, 0);
  assert.deepEqual([...none!.shards], []);
});

test("planSweepLazy refuses over maxCells and maxShards as planSweep does", () => {
  const s = (l: Parameters<typeof planLimits>[0]) => spec({ grid: [{ site: "residual" }, { site: "mixer" }], tokens: "all", shard_cells: 4 }, planLimits(l));
  const cells = planSweep(s({}), "c").plannedCells;
  const shards = planSweep(s({}), "c").shards.length;
  for (const l of [{ maxCells: cells - 1 }, { maxShards: shards - 1 }]) {
    const eager = (() => {
      try {
        planSweep(s(l), "c");
      } catch (e) {
        return e as SpecError;
      }
      assert.fail(`planSweep under ${JSON.stringify(l)} planned`);
    })();
    assert.ok(eager instanceof SpecError);
    assert.throws(
      () => planSweepLazy(s(l), "c"),
      (e: unknown) => e instanceof SpecError && e.message === eager.message && e.path === eager.path,
    );
  }
  assert.equal(planSweepLazy(s({ maxCells: cells, maxShards: shards }), "c").shards.length, shards);
});

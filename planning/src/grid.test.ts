import { test } from "node:test";
import assert from "node:assert/strict";
import { engine, type sweep } from "@factsweep/proto";
import { expandCells, parseShardId, selectTokens, shardPrompt } from "./grid.js";
import { planSweep } from "./plan.js";
import { validateSweepSpec } from "./spec.js";
import { SpecError } from "./errors.js";
import { sharedPath } from "@factsweep/testing";

const prompt = (n: number, span: [number, number], index = 0): sweep.PromptSpec => ({
  index,
  promptKey: `sw/${index}`,
  text: "",
  subject: "",
  object: "",
  relation: "",
  inputIds: Array.from({ length: n }, (_, i) => i + 10),
  subjectStart: span[0],
  subjectEnd: span[1],
  corruption: undefined,
  answerId: undefined,
});

const spec = (extra: Record<string, unknown>) =>
  validateSweepSpec({
    name: "g",
    model: { id: "m", path: sharedPath("golden/mamba-tiny") ?? "/missing" },
    dataset: { prompts: [{ input_ids: [1, 2, 3, 4, 5], subject: [1, 3], corrupted_ids: [1, 7, 8, 4, 5] }] },
    ...extra,
  });

test("cells are sites × windows × layers × selected tokens, each exactly once", () => {
  const s = spec({ grid: [{ site: "residual" }, { site: "mixer", window: 3 }], layers: "0:3", tokens: ["subject_last", "last"] });
  const cells = expandCells(prompt(6, [1, 3]), s, 4);
  assert.equal(cells.length, 2 * 3 * 2);
  const keys = new Set(cells.map((c) => `${c.site}/${c.window}/${c.layer}/${c.token}`));
  assert.equal(keys.size, cells.length);
  assert.ok(cells.every((c) => c.token === 2 || c.token === 5));
  assert.ok(cells.filter((c) => c.site === engine.Site.SITE_MIXER).every((c) => c.window === 3));
});

test("embed cells have no layer dimension: one per token", () => {
  const cells = expandCells(prompt(4, [0, 2]), spec({ grid: [{ site: "embed" }], layers: "all", tokens: "all" }), 4);
  assert.deepEqual(
    cells.map((c) => [c.layer, c.token]),
    [
      [0, 0],
      [0, 1],
      [0, 2],
      [0, 3],
    ],
  );
});

test("token selectors take group names of either scheme, 'subject', and negative indices", () => {
  const p = prompt(8, [2, 6]);
  assert.deepEqual(selectTokens({ tokens: ["subject"], token_groups: "rome" }, p), [2, 3, 4, 5]);
  assert.deepEqual(selectTokens({ tokens: ["subject_middle"], token_groups: "rome" }, p), [3, 4]);
  assert.deepEqual(selectTokens({ tokens: ["subject_2nd_last", -1], token_groups: "rome" }, p), [4, 7]);
  assert.deepEqual(selectTokens({ tokens: ["further"], token_groups: "romba" }, p), [6]);
  assert.deepEqual(selectTokens({ tokens: ["further"], token_groups: "rome" }, p), []); // token 6 is first_subsequent, 7 is last
  assert.throws(() => selectTokens({ tokens: [9], token_groups: "rome" }, p), /index 9 is outside this prompt of 8 tokens/);
});

test("a prompt's cells are cut into shards of at most shard_cells, ids <sweep>.<prompt>.<part>, none lost", () => {
  const p = prompt(10, [2, 4], 7);
  const cells = expandCells(p, spec({ grid: [{ site: "residual" }, { site: "ssm", window: 2 }], tokens: "all" }), 4);
  assert.equal(cells.length, 80);
  const model = { modelId: "m", path: "/m", dtype: "float32", modelType: "mamba", numLayers: 4 };
  const shards = shardPrompt(p, cells, { sweepId: "sw", shardCells: 30, model });
  assert.deepEqual(
    shards.map((s) => s.shardId),
    ["sw.7.0", "sw.7.1", "sw.7.2"],
  );
  assert.deepEqual(
    shards.map((s) => s.cells.length),
    [30, 30, 20],
  );
  assert.deepEqual(
    shards.flatMap((s) => s.cells),
    cells,
  );
  assert.deepEqual(parseShardId("sw.7.2"), { sweepId: "sw", promptIndex: 7, part: 2 });
});

const GOLDEN = sharedPath("golden/mamba-tiny");

test("planSweep on the golden Mamba plans prompts, shards and the cell count", { skip: !GOLDEN && "shared/golden is absent" }, () => {
  const plan = planSweep(spec({ grid: [{ site: "residual" }, { site: "mixer", window: 10 }], shard_cells: 16 }), "demo-1");
  assert.equal(plan.model.numLayers, 4);
  assert.equal(plan.model.modelType, "mamba");
  assert.equal(plan.prompts.length, 1);
  assert.equal(plan.prompts[0]!.promptKey, "demo-1/0");
  assert.equal(plan.plannedCells, 2 * 4 * 5);
  assert.equal(plan.shards.length, 3);
  assert.equal(
    plan.shards.reduce((n, s) => n + s.cells.length, 0),
    plan.plannedCells,
  );
});

test("by default (shard_cells: prompt) a prompt's whole grid is one shard", { skip: !GOLDEN && "shared/golden is absent" }, () => {
  const plan = planSweep(spec({ grid: [{ site: "residual" }, { site: "mixer", window: 10 }] }), "demo-2");
  assert.equal(plan.shards.length, plan.prompts.length);
  assert.equal(plan.shards[0]!.cells.length, plan.plannedCells);
  assert.equal(plan.shards[0]!.shardId, "demo-2.0.0");
});

test("a site the model lacks and a layer beyond it are SpecErrors naming the field", { skip: !GOLDEN && "shared/golden is absent" }, () => {
  assert.throws(
    () => planSweep(spec({ grid: [{ site: "residual" }, { site: "attn" }] }), "x"),
    (e: unknown) => {
      assert.ok(e instanceof SpecError);
      assert.equal(e.path, "grid[1].site");
      assert.match(e.message, /"attn" is not a site of mamba models; expected one of embed, residual, mixer, ssm, gate, conv, in_ssm/);
      return true;
    },
  );
  assert.throws(() => planSweep(spec({ layers: [0, 4] }), "x"), /layers: expected layer numbers in 0\.\.3/);
  assert.throws(() => planSweep(spec({}), "bad.id"), /sweep_id: .*no dots/);
});

const GOLDEN_M2 = sharedPath("golden-mamba2/mamba2-tiny");
const m2spec = (grid: unknown[]) =>
  validateSweepSpec({
    name: "h",
    model: { id: "m2", path: GOLDEN_M2 ?? "/missing" },
    dataset: { prompts: [{ input_ids: [1, 2, 3, 4, 5], subject: [1, 3], corrupted_ids: [1, 7, 8, 4, 5] }] },
    grid,
    layers: "all",
    tokens: "all",
  });

test(
  "heads: all plans one ssm cell per head of the Mamba-2 model, beside the whole-site cells without a head",
  { skip: !GOLDEN_M2 && "shared/golden-mamba2 is not on this machine" },
  () => {
    const plan = planSweep(
      m2spec([
        { site: "ssm", window: 1 },
        { site: "ssm", window: 1, heads: "all" },
        { site: "ssm", window: 3, heads: [0, 7] },
      ]),
      "h",
    );
    const cells = plan.shards.flatMap((s) => s.cells);
    assert.equal(cells.length, 5 * 4 * (1 + 8 + 2));
    assert.equal(cells.filter((c) => c.head === undefined).length, 5 * 4);
    assert.deepEqual([...new Set(cells.filter((c) => c.window === 1 && c.head !== undefined).map((c) => c.head))].sort(), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual([...new Set(cells.filter((c) => c.window === 3).map((c) => c.head))].sort(), [0, 7]);
  },
);

test(
  "heads are refused, naming grid[i].heads, past the model's heads, on a site without heads, twice, or on a model without heads",
  { skip: !GOLDEN_M2 && "shared/golden-mamba2 is not on this machine" },
  () => {
    const refused = (grid: unknown[], re: RegExp) =>
      assert.throws(
        () => planSweep(m2spec(grid), "h"),
        (e: unknown) => e instanceof SpecError && re.test(e.message),
      );
    refused([{ site: "ssm", heads: [8] }], /grid\[0\]\.heads: head 8 is outside this model's 8 heads; expected indices 0\.\.7/);
    refused([{ site: "mixer", heads: "all" }], /grid\[0\]\.heads: site "mixer" of mamba2 has no heads: only ssm has per-head restores/);
    refused([{ site: "ssm", heads: [1, 1] }], /grid\[0\]\.heads.*each head index once/);
    refused([{ site: "ssm", heads: [] }], /grid\[0\]\.heads/);
    refused(
      [
        { site: "ssm", heads: "all" },
        { site: "ssm", heads: [2] },
      ],
      /grid\[1\]: same cells as grid\[0\]/,
    );
    assert.throws(
      () => planSweep(spec({ grid: [{ site: "ssm", heads: "all" }] }), "h"),
      (e: unknown) => e instanceof SpecError && /grid\[0\]\.heads: site "ssm" of mamba has no heads: mamba models have no per-head sites/.test(e.message),
    );
  },
);

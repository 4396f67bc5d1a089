// Issue 15 (fuzzing in CI, bounded in time): property tests of the spec parser and the planner.
// Every property runs a fixed number of cases from a fixed seed (deterministic in CI); a failure
// prints fast-check's seed, path and counterexample, so `{ seed, path }` replays it.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { stringify as toYaml } from "yaml";
import { FactsweepError } from "@factsweep/shared";
import { sharedPath } from "@factsweep/testing";
import { parseSweepSpec, validateSweepSpec } from "./spec.js";
import { planSweep } from "./plan.js";
import { SpecError } from "./errors.js";
import { SITES_BY_MODEL_TYPE, siteToEnum } from "./sites.js";
import { effectiveWindow } from "./grid.js";

const SEED = 0x15f5;
const run = <T>(prop: fc.IProperty<T>, numRuns: number) => fc.assert(prop, { seed: SEED, numRuns, verbose: 1, endOnFailure: true });

/** A SpecError names the field it is about: its path is in the message (the whole spec: "spec"). */
function assertNamesField(err: unknown): void {
  if (!(err instanceof SpecError)) throw err;
  if (err.path === "") assert.match(err.message, /spec/, `a SpecError without a path should be about the spec: ${err.message}`);
  else assert.ok(err.message.includes(err.path), `SpecError message should name ${err.path}: ${err.message}`);
}

test("arbitrary text, JSON and YAML never crash the parser with anything but a SpecError naming a field", () => {
  const text = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.fullUnicodeString({ maxLength: 100 }),
    fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v) ?? "null"),
    fc.jsonValue({ maxDepth: 4 }).map((v) => toYaml(v)),
    fc
      .dictionary(
        fc.constantFrom(
          "name",
          "kind",
          "model",
          "dataset",
          "corruption",
          "grid",
          "layers",
          "tokens",
          "token_groups",
          "shard_cells",
          "max_attempts",
          "knockout",
          "x",
        ),
        fc.jsonValue({ maxDepth: 3 }),
      )
      .map((v) => toYaml(v)),
  );
  run(
    fc.property(text, fc.constantFrom<"yaml" | "json">("yaml", "json"), (t, format) => {
      try {
        parseSweepSpec(t, { format, baseDir: "/nonexistent/specs" });
      } catch (err) {
        assertNamesField(err);
      }
    }),
    300,
  );
});

const MAMBA = sharedPath("golden/mamba-tiny");
const NEOX = sharedPath("golden/neox-tiny");
const noGolden = (!MAMBA || !NEOX) && "shared/golden is absent";
const NUM_LAYERS = 4; // both golden tiny models
const VOCAB = 1000;

type Selector = number | "subject" | "subject_first" | "subject_last" | "last";

interface Generated {
  modelType: "mamba" | "gpt_neox";
  prompts: { input_ids: number[]; subject: [number, number]; corrupted_ids?: number[] }[];
  grid: { site: string; window: number }[];
  layers: "all" | number[] | string;
  tokens: "all" | Selector[];
  shardCells: number;
  swap: boolean;
}

const prompt = fc
  .integer({ min: 2, max: 10 })
  .chain((n) =>
    fc
      .tuple(
        fc.array(fc.integer({ min: 0, max: VOCAB - 1 }), { minLength: n, maxLength: n }),
        fc.array(fc.integer({ min: 0, max: VOCAB - 1 }), { minLength: n, maxLength: n }),
        fc.integer({ min: 0, max: n - 1 }),
      )
      .chain(([ids, corrupted, s]) => fc.integer({ min: s + 1, max: n }).map((e) => ({ ids, corrupted, span: [s, e] as [number, number] }))),
  );

const layersArb = fc.oneof(
  fc.constant<"all">("all"),
  fc.uniqueArray(fc.integer({ min: 0, max: NUM_LAYERS - 1 }), { minLength: 1, maxLength: NUM_LAYERS }),
  fc
    .tuple(fc.integer({ min: 0, max: NUM_LAYERS - 1 }), fc.integer({ min: 1, max: NUM_LAYERS }), fc.option(fc.integer({ min: 1, max: 5 })))
    .filter(([a, b]) => a < b)
    .map(([a, b, c]) => (c === null ? `${a}:${b}` : `${a}:${b}:${c}`)),
);

const selector: fc.Arbitrary<Selector> = fc.oneof(
  fc.integer({ min: -12, max: 11 }),
  fc.constantFrom<Selector>("subject", "subject_first", "subject_last", "last"),
);

const generated: fc.Arbitrary<Generated> = fc.constantFrom<"mamba" | "gpt_neox">("mamba", "gpt_neox").chain((modelType) =>
  fc.record({
    modelType: fc.constant(modelType),
    prompts: fc.array(prompt, { minLength: 1, maxLength: 4 }).map((ps) => ps.map((p) => ({ input_ids: p.ids, subject: p.span, corrupted_ids: p.corrupted }))),
    // (site, effective window) pairs are unique, as the planner requires; embed once, its window ignored
    grid: fc
      .uniqueArray(fc.record({ site: fc.constantFrom(...SITES_BY_MODEL_TYPE[modelType]), window: fc.integer({ min: 1, max: 12 }) }), {
        minLength: 1,
        maxLength: 5,
        selector: (g) => (g.site === "embed" ? "embed" : `${g.site}|${effectiveWindow(g.window, NUM_LAYERS)}`),
      })
      .map((g) => [...g]),
    layers: layersArb,
    tokens: fc.oneof(fc.constant<"all">("all"), fc.array(selector, { minLength: 1, maxLength: 4 })),
    shardCells: fc.integer({ min: 1, max: 64 }),
    swap: fc.boolean(),
  }),
);

function specObject(g: Generated): Record<string, unknown> {
  return {
    name: "property",
    kind: "trace",
    model: { id: g.modelType === "mamba" ? "mamba-tiny" : "neox-tiny", path: g.modelType === "mamba" ? MAMBA : NEOX },
    dataset: { prompts: g.prompts.map((p) => (g.swap ? p : { input_ids: p.input_ids, subject: p.subject })) },
    corruption: g.swap ? { kind: "swap", seed: 1 } : { kind: "noise", samples: 2, seed: 3 },
    grid: g.grid,
    layers: g.layers,
    tokens: g.tokens,
    shard_cells: g.shardCells,
  };
}

/** The layers a `layers` field selects, computed here independently of the planner. */
function expectedLayers(layers: Generated["layers"]): number[] {
  if (layers === "all") return [0, 1, 2, 3];
  if (Array.isArray(layers)) return [...new Set(layers)].sort((a, b) => a - b);
  const [a, b, c] = layers.split(":").map(Number);
  const out: number[] = [];
  for (let l = a!; l < b!; l += c ?? 1) out.push(l);
  return out;
}

/** Token positions a selection picks in one prompt, or undefined when an index is outside it. */
function expectedTokens(tokens: Generated["tokens"], n: number, [s, e]: [number, number]): number[] | undefined {
  if (tokens === "all") return Array.from({ length: n }, (_, i) => i);
  const out = new Set<number>();
  for (const t of tokens) {
    if (typeof t === "number") {
      if (t < -n || t >= n) return undefined;
      out.add(t < 0 ? n + t : t);
    } else if (t === "subject") for (let i = s; i < e; i++) out.add(i);
    else if (t === "subject_first") out.add(s);
    else if (t === "subject_last") out.add(e - 1);
    else out.add(n - 1);
  }
  return [...out];
}

test("valid generated specs plan exactly grid × layers × selected tokens per prompt, every cell in range, none twice", { skip: noGolden }, () => {
  run(
    fc.property(generated, fc.constantFrom("yaml", "json"), (g, format) => {
      const obj = specObject(g);
      const spec = parseSweepSpec(format === "json" ? JSON.stringify(obj) : toYaml(obj), { format: format as "yaml" | "json" });
      const plan = planSweep(spec, "prop-1");
      const layers = expectedLayers(g.layers);
      let expected = 0;
      const planned = new Set<number>();
      const errored = new Set(plan.promptErrors.map((e) => e.index));
      for (const [i, p] of g.prompts.entries()) {
        const tokens = expectedTokens(g.tokens, p.input_ids.length, p.subject);
        if (tokens === undefined) {
          assert.ok(errored.has(i), `prompt ${i}: a token index outside it is a reported prompt error`);
          continue;
        }
        assert.ok(!errored.has(i), `prompt ${i} should plan: ${JSON.stringify(plan.promptErrors)}`);
        planned.add(i);
        for (const entry of g.grid) expected += (entry.site === "embed" ? 1 : layers.length) * tokens.length;
      }
      assert.equal(plan.plannedCells, expected, "planned cells = Σ prompts Σ grid entries layers × tokens");
      const cells = plan.shards.flatMap((sh) => sh.cells.map((c) => ({ c, p: sh.prompt!.index })));
      assert.equal(cells.length, expected, "the shards hold every planned cell");
      const keys = new Set<string>();
      const wantSites = new Set(g.grid.map((e) => siteToEnum(e.site as never)));
      for (const { c, p } of cells) {
        assert.ok(planned.has(p), `cell of an unplanned prompt ${p}`);
        const n = g.prompts[p]!.input_ids.length;
        assert.ok(Number.isInteger(c.layer) && c.layer >= 0 && c.layer < NUM_LAYERS, `layer ${c.layer} in range`);
        assert.ok(Number.isInteger(c.token) && c.token >= 0 && c.token < n, `token ${c.token} in a prompt of ${n}`);
        assert.ok(c.window >= 1 && c.window <= 2 * NUM_LAYERS, `window ${c.window} capped at 2 × layers`);
        assert.ok(wantSites.has(c.site), `site ${c.site} from the grid`);
        const k = `${p}/${c.site}/${c.layer}/${c.token}/${c.window}`;
        assert.ok(!keys.has(k), `cell ${k} planned twice`);
        keys.add(k);
      }
      for (const sh of plan.shards) {
        assert.ok(sh.cells.length >= 1 && sh.cells.length <= g.shardCells, `shard ${sh.shardId} holds 1..${g.shardCells} cells`);
        assert.match(sh.shardId, new RegExp(`^prop-1\\.${sh.prompt!.index}\\.\\d+$`));
      }
      assert.equal(new Set(plan.shards.map((s) => s.shardId)).size, plan.shards.length, "shard ids unique");
    }),
    150,
  );
});

/** Paths into a spec object: every key at any depth, and array indices. */
function pathsOf(v: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [];
  if (Array.isArray(v)) v.forEach((x, i) => out.push([...prefix, i], ...pathsOf(x, [...prefix, i])));
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) out.push([...prefix, k], ...pathsOf(x, [...prefix, k]));
  return out;
}

type Mutation = { op: "delete" } | { op: "set"; value: unknown } | { op: "add"; key: string; value: unknown };

function mutate(obj: Record<string, unknown>, path: (string | number)[], m: Mutation): Record<string, unknown> {
  const copy = structuredClone(obj);
  let parent: Record<string | number, unknown> = copy;
  for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
  const last = path[path.length - 1]!;
  if (m.op === "delete") {
    if (Array.isArray(parent)) parent.splice(last as number, 1);
    else delete parent[last];
  } else if (m.op === "set") parent[last] = m.value;
  else {
    const target = parent[last];
    if (target && typeof target === "object" && !Array.isArray(target)) (target as Record<string, unknown>)[m.key] = m.value;
    else parent[last] = { [m.key]: m.value };
  }
  return copy;
}

const hostile = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(-1, 0, 1, 1.5, 2 ** 31, 2 ** 53 + 2, 1e308, -0, "", " ", "all", "0:0", "3:1", "0:99", "0:4:0", "::", "-1:2", [], {}, [-1], [1e9], null),
);
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.constant<Mutation>({ op: "delete" }),
  hostile.map((value): Mutation => ({ op: "set", value })),
  fc.tuple(fc.string({ maxLength: 8 }), hostile).map(([key, value]): Mutation => ({ op: "add", key, value })),
);

test("mutated valid specs are planned or refused with a typed error; a SpecError names its field", { skip: noGolden }, () => {
  run(
    fc.property(generated, fc.nat(), fc.array(mutation, { minLength: 1, maxLength: 3 }), (g, pick, ms) => {
      let obj = specObject(g);
      for (const m of ms) {
        const paths = pathsOf(obj).filter((p) => !(p[0] === "model" && p[1] === "path")); // not a walk of the file system
        if (paths.length === 0) break;
        obj = mutate(obj, paths[pick % paths.length]!, m);
      }
      try {
        const spec = validateSweepSpec(obj, { baseDir: "/nonexistent/specs" });
        const plan = planSweep(spec, "prop-2");
        for (const sh of plan.shards)
          for (const c of sh.cells) {
            assert.ok(c.layer >= 0 && c.layer < NUM_LAYERS && c.token >= 0 && c.token < sh.prompt!.inputIds.length, "cells in range");
          }
      } catch (err) {
        if (err instanceof SpecError) assertNamesField(err);
        else assert.ok(err instanceof FactsweepError, `expected a typed planning error, got ${(err as Error)?.stack ?? String(err)}`);
      }
    }),
    300,
  );
});

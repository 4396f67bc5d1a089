/**
 * The sweep spec: what a user writes (YAML or JSON) to launch a sweep. Validated with zod; every
 * problem becomes a {@link SpecError} naming the field path, what was expected and what came in.
 * The full format with an example is in planning/README.md.
 */
import { isAbsolute, resolve } from "node:path";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { z } from "zod";
import { describeValue } from "@factsweep/shared";
import { SpecError } from "./errors.js";
import { TOKEN_GROUP_SCHEMES } from "./token-groups.js";
import { ALL_SWEEP_KINDS, applyKindDefaults, checkKindSections, KIND_SPEC_FIELDS, resolveKindPaths } from "./kinds/index.js";

export { resolveLayers, type LayersSpec } from "./layers.js";

/** Kinds of experiment a sweep can be (one module each in kinds/, listed in kinds/index.ts). */
export const SWEEP_KINDS = ALL_SWEEP_KINDS;
/** Kinds not implemented yet (none now; kept so callers that list them keep compiling). */
export const PLANNED_SWEEP_KINDS = [] as const;

const DTYPES = ["float32", "bfloat16", "float16"] as const;

const nonNegInt = z.number().int().min(0);
const posInt = z.number().int().min(1);
const path = z.string().min(1);

const textPrompt = z.strictObject({
  text: z.string().min(1),
  subject: z.string().min(1),
  object: z.string().optional(),
  relation: z.string().optional(),
});
const tokenizedPrompt = z.strictObject({
  input_ids: z.array(nonNegInt).min(1),
  subject: z.tuple([nonNegInt, nonNegInt], { error: "expected a token span [start, end)" }),
  corrupted_ids: z.array(nonNegInt).optional(),
  answer_id: nonNegInt.optional(),
  text: z.string().optional(),
  subject_text: z.string().optional(),
  object: z.string().optional(),
  relation: z.string().optional(),
});
const promptInput = z.union([textPrompt, tokenizedPrompt], {
  error: "expected { text, subject, object? } or { input_ids: [...], subject: [start, end), corrupted_ids?: [...] }",
});

const dataset = z
  .strictObject({
    known: path.optional(),
    relations: z.union([path, z.array(path).min(1)], { error: "expected a relation file or folder, or a list of them" }).optional(),
    prompts: z.array(promptInput).min(1).optional(),
    template_index: nonNegInt.default(0),
    limit: posInt.optional(),
    per_relation: posInt.optional(), // relations: default 150 (the paper's n_trial); known: no cap unless given
    answer: z.enum(["argmax", "object"]).default("argmax"),
  })
  .superRefine((d, ctx) => {
    const given = (["known", "relations", "prompts"] as const).filter((k) => d[k] !== undefined);
    if (given.length !== 1) {
      ctx.addIssue({
        code: "custom",
        path: given.length > 1 ? [given[1]!] : [],
        message:
          given.length === 0
            ? "expected exactly one source: `known` (known_1000.json), `relations` (files or folders) or `prompts` (inline list)"
            : `expected exactly one source, got ${given.map((g) => `\`${g}\``).join(" and ")}; keep one`,
      });
    }
  });

const swap = z.strictObject({ kind: z.literal("swap"), seed: nonNegInt.default(1) });
const noise = z.strictObject({
  kind: z.literal("noise"),
  scale: z.number().positive().default(3),
  std: z.union([z.literal("auto"), z.number().positive()], { error: 'expected "auto" or a positive number' }).default("auto"),
  samples: posInt.max(1024).default(10),
  seed: nonNegInt.default(1),
});
const corruption = z.discriminatedUnion("kind", [swap, noise], { error: 'expected kind "swap" or "noise"' });

const layers = z.union(
  [
    z.literal("all"),
    z.array(nonNegInt).min(1),
    z.string().regex(/^\s*\d*\s*:\s*\d*\s*(:\s*\d+\s*)?$/, { message: 'expected a range "start:end" or "start:end:step"' }),
  ],
  { error: 'expected "all", a list of layer numbers, or a range "start:end[:step]" (end exclusive)' },
);

const kind = z.enum(SWEEP_KINDS, { error: `expected one of ${SWEEP_KINDS.join(", ")}` });

/** The zod schema of a sweep spec (snake_case, as written by users). */
export const sweepSpecSchema = z.strictObject({
  name: z.string().min(1).max(200),
  kind: kind.default("trace"),
  model: z.strictObject({
    id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, { message: "expected a name of letters, digits, '.', '_', '-'" }),
    path,
    dtype: z.enum(DTYPES).default("float32"),
    tokenizer: path.optional(),
  }),
  dataset,
  corruption: corruption.default({ kind: "swap", seed: 1 }),
  layers: layers.default("all"),
  token_groups: z.enum(TOKEN_GROUP_SCHEMES).default("rome"),
  shard_cells: posInt.max(1_000_000).default(512),
  max_attempts: posInt.max(100).default(3),
  ...KIND_SPEC_FIELDS,
}).superRefine(checkKindSections);

/** A validated sweep spec; relative paths are resolved against the spec's folder (`baseDir`). */
export type SweepSpec = z.infer<typeof sweepSpecSchema>;
/** A prompt given inline in the spec. */
export type PromptInput = z.infer<typeof promptInput>;
export type TextPromptInput = z.infer<typeof textPrompt>;
export type TokenizedPromptInput = z.infer<typeof tokenizedPrompt>;
export type CorruptionSpec = SweepSpec["corruption"];
export type GridEntry = SweepSpec["grid"][number];

function formatPath(p: readonly PropertyKey[]): string {
  let out = "";
  for (const k of p) out += typeof k === "number" ? `[${k}]` : `${out ? "." : ""}${String(k)}`;
  return out || "(spec root)";
}

function valueAt(root: unknown, p: readonly PropertyKey[]): unknown {
  let v = root;
  for (const k of p) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

/**
 * For a union that failed, the branch the user most likely meant: fewest problems, then the
 * deepest path (it got furthest). Its first issue, with the union's path prepended, is more
 * helpful than "Invalid input"; a branch that failed at its root keeps the union's own message.
 */
function narrowUnion(issue: z.core.$ZodIssue): z.core.$ZodIssue {
  if (issue.code !== "invalid_union" || !issue.errors || issue.errors.length === 0) return issue;
  const depth = (b: z.core.$ZodIssue[]) => Math.max(...b.map((i) => i.path.length));
  const best = [...issue.errors].sort((a, b) => a.length - b.length || depth(b) - depth(a))[0];
  const inner = best?.[0];
  if (!inner || inner.path.length === 0) return issue;
  return narrowUnion({ ...inner, path: [...issue.path, ...inner.path] } as z.core.$ZodIssue);
}

function issueText(rawIssue: z.core.$ZodIssue, root: unknown): { path: string; message: string; expected: string; issuePath: PropertyKey[] } {
  const issue = narrowUnion(rawIssue);
  const issuePath = [...issue.path];
  const p = formatPath(issue.path);
  let expected = issue.message.replace(/^Invalid (input|option): /, "").replace(/, received \w+$/, "");
  const received: unknown = valueAt(root, issue.path);
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.map((k) => `\`${k}\``).join(", ");
    const where = issue.path.length ? ` in ${p}` : "";
    return { path: p, issuePath, expected: "no unknown fields", message: `unknown field ${keys}${where}; remove it or check its spelling (see planning/README.md for the spec format)` };
  }
  if (issue.code === "too_small" && issue.origin === "array") expected = `a list of at least ${String(issue.minimum)} item(s)`;
  if (issue.code === "invalid_type" && received === undefined) {
    return { path: p, issuePath, expected, message: `${p}: required field is missing (${expected})` };
  }
  return { path: p, issuePath, expected, message: `${p}: ${expected}, got ${describeValue(received)}` };
}

/** Resolve `p` against `baseDir` unless absolute. */
function resolvePath(p: string, baseDir: string): string {
  return isAbsolute(p) ? p : resolve(baseDir, p);
}

/**
 * Parse and validate a sweep spec. YAML is a superset of JSON, so `format` only matters for error
 * messages; relative paths (model, tokenizer, dataset) resolve against `baseDir` (default cwd).
 * @throws SpecError naming the field path, the expected and the received value.
 */
export function parseSweepSpec(text: string, opts: { format?: "yaml" | "json"; baseDir?: string } = {}): SweepSpec {
  let raw: unknown;
  const format = opts.format ?? "yaml";
  try {
    raw = format === "json" ? JSON.parse(text) : parseYaml(text, { prettyErrors: true });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}, column ${err.linePos[0].col}` : "";
    throw new SpecError(`spec is not valid ${format.toUpperCase()}${where}: ${(err as Error).message}`, { path: "", expected: `${format} text` }, { cause: err });
  }
  return validateSweepSpec(raw, opts);
}

/** Validate an already-parsed spec object (see {@link parseSweepSpec}). */
export function validateSweepSpec(raw: unknown, opts: { baseDir?: string } = {}): SweepSpec {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new SpecError(`spec: expected a mapping with fields name, model, dataset, ..., got ${describeValue(raw)}`, {
      path: "",
      expected: "a mapping",
      received: raw,
    });
  }
  const res = sweepSpecSchema.safeParse(raw, { reportInput: true });
  if (!res.success) {
    const issues = res.error.issues.map((i) => issueText(i, raw));
    const first = issues[0]!;
    const message =
      issues.length === 1 ? `invalid sweep spec: ${first.message}` : `invalid sweep spec (${issues.length} problems):\n${issues.map((i) => `  - ${i.message}`).join("\n")}`;
    throw new SpecError(message, {
      path: first.path,
      expected: first.expected,
      received: valueAt(raw, first.issuePath),
      issues: issues.map((i) => ({ path: i.path, message: i.message })),
    });
  }
  const spec = applyKindDefaults(res.data as SweepSpec);
  const baseDir = opts.baseDir ?? process.cwd();
  resolveKindPaths(spec, (p) => resolvePath(p, baseDir));
  spec.model.path = resolvePath(spec.model.path, baseDir);
  if (spec.model.tokenizer) spec.model.tokenizer = resolvePath(spec.model.tokenizer, baseDir);
  if (spec.dataset.known) spec.dataset.known = resolvePath(spec.dataset.known, baseDir);
  if (spec.dataset.relations !== undefined) {
    const list = typeof spec.dataset.relations === "string" ? [spec.dataset.relations] : spec.dataset.relations;
    spec.dataset.relations = list.map((p) => resolvePath(p, baseDir));
  }
  return spec;
}

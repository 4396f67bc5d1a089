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
import { attachLimits, DEFAULT_PLAN_LIMITS, overLimit, type PlanLimits } from "./limits.js";
import { baseSpecFields } from "./spec-base.js";
import { ALL_SWEEP_KINDS, applyKindDefaults, checkKindSections, KIND_SPEC_FIELDS, resolveKindPaths } from "./kinds/index.js";

export { isFromTrace, resolveLayers, type LayerList, type LayersSpec } from "./layers.js";

/** Kinds of experiment a sweep can be (one module each in kinds/, listed in kinds/index.ts). */
export const SWEEP_KINDS = ALL_SWEEP_KINDS;

const kind = z.enum(SWEEP_KINDS, { error: `expected one of ${SWEEP_KINDS.join(", ")}` });

const { name, ...common } = baseSpecFields;
/** The zod schema of a sweep spec (snake_case, as written by users). */
export const sweepSpecSchema = z
  .strictObject({
    name,
    kind: kind.default("trace"),
    ...common,
    ...KIND_SPEC_FIELDS,
  })
  .superRefine(checkKindSections);

/** A validated sweep spec; relative paths are resolved against the spec's folder (`baseDir`). */
export type SweepSpec = z.infer<typeof sweepSpecSchema>;
export type { PromptInput, TextPromptInput, TokenizedPromptInput, CorruptionSpec } from "./spec-base.js";
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
    return {
      path: p,
      issuePath,
      expected: "no unknown fields",
      message: `unknown field ${keys}${where}; remove it or check its spelling (see planning/README.md for the spec format)`,
    };
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
export function parseSweepSpec(text: string, opts: { format?: "yaml" | "json"; baseDir?: string; limits?: PlanLimits } = {}): SweepSpec {
  let raw: unknown;
  const format = opts.format ?? "yaml";
  const limits = opts.limits ?? DEFAULT_PLAN_LIMITS;
  // Before any parsing: a huge spec is refused before it is built into objects.
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > limits.maxSpecBytes) throw overLimit("", "the spec's size in bytes", bytes, "maxSpecBytes", limits.maxSpecBytes);
  try {
    raw = format === "json" ? JSON.parse(text) : parseYaml(text, { prettyErrors: true });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}, column ${err.linePos[0].col}` : "";
    throw new SpecError(
      `spec is not valid ${format.toUpperCase()}${where}: ${(err as Error).message}`,
      { path: "", expected: `${format} text` },
      { cause: err },
    );
  }
  return validateSweepSpec(raw, opts);
}

/** Validate an already-parsed spec object (see {@link parseSweepSpec}); `limits` travel with the spec into planSweep. */
export function validateSweepSpec(raw: unknown, opts: { baseDir?: string; limits?: PlanLimits } = {}): SweepSpec {
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
      issues.length === 1
        ? `invalid sweep spec: ${first.message}`
        : `invalid sweep spec (${issues.length} problems):\n${issues.map((i) => `  - ${i.message}`).join("\n")}`;
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
  return attachLimits(spec, opts.limits ?? DEFAULT_PLAN_LIMITS);
}

/**
 * What makes a run's results self-describing: per prompt, its text, relation, subject, expected
 * object, token strings and swap partner (from the sweep's plan, which is deterministic: the same
 * spec and sweep id plan the same prompts); and per run, `run.json` with the spec, the code version,
 * the seeds and a fingerprint of the model and tokenizer files.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { control, sweep } from "@factsweep/proto";
import { loadSpecTokenizer, modelFingerprint as folderFingerprint, parseSweepSpec, planSweep, type PromptTokenizer, type SweepSpec } from "@factsweep/planning";

/** Columns a trace row gets from its prompt (after RESULT_COLUMNS). */
export const PROVENANCE_COLUMNS = ["answer_id", "answer", "prompt", "relation", "object", "token_str", "swap_subject", "corrupted_prompt"] as const;
export type ProvenanceRecord = Record<(typeof PROVENANCE_COLUMNS)[number], string | number>;

interface PromptInfo {
  prompt: string;
  relation: string;
  object: string;
  tokens: string[];
  swapSubject: string;
  corruptedPrompt: string;
}

/** Per-prompt provenance of a sweep, from its plan. */
export class Provenance {
  private constructor(
    private readonly prompts: Map<number, PromptInfo>,
    private readonly tokenizer: PromptTokenizer | null,
  ) {}

  /** Plans `spec` as sweep `sweepId` (reads the model's config.json, the tokenizer and the dataset). */
  static fromSpec(spec: SweepSpec, sweepId: string): Provenance {
    const tokenizer = loadSpecTokenizer(spec);
    const plan = planSweep(spec, sweepId, { tokenizer });
    return new Provenance(new Map(plan.prompts.map((p) => [p.index, promptInfo(p, tokenizer)])), tokenizer);
  }

  /** {@link fromSpec} of a spec file (relative paths against its folder). */
  static fromSpecFile(file: string, sweepId: string): Provenance {
    const p = resolve(file);
    return Provenance.fromSpec(parseSweepSpec(readFileSync(p, "utf8"), { baseDir: dirname(p), format: extname(p) === ".json" ? "json" : "yaml" }), sweepId);
  }

  /** The provenance columns of a trace row (answer_id from the row itself; the rest from the plan). */
  record(r: control.ResultRow): ProvenanceRecord {
    const answerId = answerIdOf(r);
    const p = this.prompts.get(r.promptIndex);
    return {
      answer_id: answerId ?? "",
      answer: answerId !== undefined && this.tokenizer ? this.tokenizer.decode([answerId]) : "",
      prompt: p?.prompt ?? "",
      relation: p?.relation ?? "",
      object: p?.object ?? "",
      token_str: p?.tokens[r.token] ?? "",
      swap_subject: p?.swapSubject ?? "",
      corrupted_prompt: p?.corruptedPrompt ?? "",
    };
  }

  /** One row per planned prompt: what `prompts.csv` of a run holds. */
  *promptRows(): Generator<Record<string, string | number>> {
    for (const [index, p] of [...this.prompts].sort((a, b) => a[0] - b[0]))
      yield {
        prompt_index: index,
        prompt: p.prompt,
        relation: p.relation,
        object: p.object,
        tokens: JSON.stringify(p.tokens),
        swap_subject: p.swapSubject,
        corrupted_prompt: p.corruptedPrompt,
      };
  }
}

/** The answer token id a trace row carries in fields_json (rows of older coordinators have none). */
export function answerIdOf(r: Pick<control.ResultRow, "fieldsJson">): number | undefined {
  if (!r.fieldsJson) return undefined;
  try {
    const v = (JSON.parse(r.fieldsJson) as { answer_id?: unknown }).answer_id;
    return typeof v === "number" ? v : undefined;
  } catch {
    return undefined;
  }
}

function promptInfo(p: sweep.PromptSpec, tok: PromptTokenizer | null): PromptInfo {
  const decode = (ids: number[]): string => (tok ? tok.decode(ids) : "");
  const swap = p.corruption?.kind?.$case === "swap" ? p.corruption.kind.swap.corruptedIds : undefined;
  return {
    prompt: p.text || decode(p.inputIds),
    relation: p.relation,
    object: p.object,
    tokens: tok ? p.inputIds.map((id) => decode([id])) : [],
    // The partner's tokens end where the subject's do and the prompt keeps its length (romba's aligned swap).
    swapSubject: swap ? decode(swap.slice(p.subjectStart, p.subjectEnd)).trim() : "",
    corruptedPrompt: swap ? decode(swap) : "",
  };
}

// ---- run.json ------------------------------------------------------------------------------

const REPO = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The code that ran: the git commit of this checkout (and whether it had uncommitted changes), else the package version. */
export function codeVersion(): { commit?: string; dirty?: boolean; version: string } {
  const version = (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string }).version;
  try {
    const git = (...args: string[]) => execFileSync("git", ["-C", REPO, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    return { commit: git("rev-parse", "HEAD"), dirty: git("status", "--porcelain", "--untracked-files=no").length > 0, version };
  } catch {
    return { version }; // not a git checkout (an npm install, a copied tree)
  }
}

/** The model folder's fingerprint (planning's modelFingerprint: config and index hashes, weight file sizes, tokenizer hash). */
export function modelFingerprint(spec: SweepSpec): Record<string, unknown> {
  return { ...folderFingerprint(spec.model.path, spec.model.tokenizer) };
}

/** Every seed of a spec, by field path (corruption.seed, <kind>.seed). */
export function seedsOf(spec: SweepSpec): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (v: unknown, path: string): void => {
    if (v && typeof v === "object" && !Array.isArray(v))
      for (const [k, x] of Object.entries(v)) {
        const p = path ? `${path}.${k}` : k;
        if (k === "seed" && typeof x === "number") out[p] = x;
        else walk(x, p);
      }
  };
  walk(spec, "");
  return out;
}

/** What `run.json` of a run folder holds. */
export function runRecord(o: {
  sweepId: string;
  specFile: string;
  specText: string;
  spec: SweepSpec;
  startedMs: number;
  /** Local agents and engine workers per agent the run used (for rates measured from it). */
  agents?: number;
  workers?: number;
  state?: string;
}): Record<string, unknown> {
  return {
    sweep_id: o.sweepId,
    spec_file: o.specFile,
    spec: o.specText,
    ...(o.agents ? { agents: o.agents, workers: o.workers ?? 1 } : {}),
    seeds: seedsOf(o.spec),
    code: codeVersion(),
    node: process.version,
    model: modelFingerprint(o.spec),
    started: new Date(o.startedMs).toISOString(),
    ...(o.state ? { state: o.state, finished: new Date().toISOString() } : {}),
  };
}

/**
 * The trace sweep an edit's `layers: { from_trace }` reads ({@link TraceEvidence}): from a
 * coordinator's aggregate, or from a run folder of `sweepctl local` / `sweepctl archive`. What is
 * read: per fact, the IE at its last subject token per layer, for every traced site.
 * Checking it and choosing the layers is edit-trace.ts.
 */
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { StringDecoder } from "node:string_decoder";
import type { sweep } from "@factsweep/proto";
import { parse as parseYaml } from "yaml";
import type { ResultAggregator } from "../aggregator.js";
import { SpecError } from "../errors.js";
import { parseJsonFile, readRegularFile, typeOfValue } from "../files.js";
import type { ModelFingerprint } from "../fingerprint.js";

const FIELD = "layers.from_trace";

/** One traced fact: its prompt and its IE at the last subject token per layer of its grid (null: undefined IE or no cell). */
export interface TraceFact {
  /** The trace's prompt index (tells apart facts a folder without prompt texts cannot). */
  prompt: number;
  subject: string;
  relation: string;
  text: string;
  ie: (number | null)[];
}

/** What a trace sweep offers for choosing edit layers. */
export interface TraceEvidence {
  sweepId: string;
  /** "done", "running", … */
  state: string;
  kind: string;
  model: { id: string; modelType?: string; numLayers?: number; path?: string; fingerprint?: Pick<ModelFingerprint, "sha256" | "weights"> };
  /** Every (site, window) traced, with its facts. */
  grids: { site: string; window: number; layers: number[]; facts: TraceFact[] }[];
}

/** Whether a `from_trace` value names a run folder rather than a sweep id (sweep ids have no "/"). */
export const isTraceFolder = (source: string): boolean => source.includes("/") || source === "." || source === "..";

const specError = (message: string, expected: string, received?: unknown, path = FIELD) => new SpecError(`${path}: ${message}`, { path, expected, received });

/** The trace view of a coordinator's aggregate: each fact's IE at its last subject token per (site, window) and layer. */
export function traceEvidenceFromAggregator(agg: ResultAggregator, prompts: readonly sweep.PromptSpec[], meta: Omit<TraceEvidence, "grids">): TraceEvidence {
  const byIndex = new Map(prompts.map((p) => [p.index, p]));
  const grids = agg.grids().map(({ site, window }) => {
    const r = agg.factRows(site, window, "subject_last");
    const facts = r.prompts.map((pi, i) => {
      const p = byIndex.get(pi);
      return { prompt: pi, subject: p?.subject ?? "", relation: p?.relation ?? "", text: p?.text ?? "", ie: r.ie[i]! };
    });
    return { site, window, layers: r.layers, facts };
  });
  return { ...meta, grids };
}

/** Each line of a text file, read in 1 MiB pieces (a trace's results.jsonl may be far larger than a file read whole). */
function* lines(file: string): Generator<string> {
  const fd = openSync(file, "r");
  try {
    const buf = Buffer.alloc(1 << 20);
    const utf8 = new StringDecoder("utf8"); // a character cut at a piece's end is completed by the next
    let rest = "";
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0;) {
      const parts = (rest + utf8.write(buf.subarray(0, n))).split("\n");
      rest = parts.pop()!;
      yield* parts;
    }
    if (rest) yield rest;
  } finally {
    closeSync(fd);
  }
}

/**
 * The trace view of a run folder (`sweepctl local --out`, `sweepctl archive --out`): sweep.json
 * (id, state, kind), run.json (the spec's model id and the model's fingerprint, when written by
 * `local`) and results.jsonl (the cells; rows of the last subject token are read).
 */
export function traceEvidenceFromRunFolder(dir: string, maxFileBytes: number): TraceEvidence {
  const json = (name: string, required: boolean): Record<string, unknown> | undefined => {
    const file = join(dir, name);
    let st;
    try {
      st = statSync(file);
    } catch {
      if (!required) return undefined;
      throw specError(
        `${dir} has no ${name}: it is not a run folder; give the folder \`sweepctl local --out\` or \`sweepctl archive --out\` wrote, or a trace sweep's id`,
        "a run folder",
        dir,
      );
    }
    if (!st.isFile()) throw specError(`${file} is not a file`, "a run folder", dir);
    const fail = (msg: string, cause?: unknown) => new SpecError(`${FIELD}: ${msg}`, { path: FIELD, expected: "a run folder", received: dir }, { cause });
    const v = parseJsonFile(readRegularFile(file, name, maxFileBytes, fail), name, file, fail);
    if (!v || typeof v !== "object" || Array.isArray(v)) throw specError(`${file} must hold a JSON object, got ${typeOfValue(v)}`, "a run folder", dir);
    return v as Record<string, unknown>;
  };
  const info = json("sweep.json", true)!;
  const run = json("run.json", false);
  const str = (v: unknown): string => (typeof v === "string" ? v : "");
  let specModel: { id?: unknown } = {};
  if (run && typeof run.spec === "string") {
    try {
      specModel = ((parseYaml(run.spec) as { model?: { id?: unknown } } | null)?.model ?? {}) as { id?: unknown };
    } catch {
      specModel = {};
    }
  }
  const fp = run?.model as ModelFingerprint | undefined;
  const model: TraceEvidence["model"] = {
    id: str(specModel.id),
    ...(fp && typeof fp === "object" ? { path: str(fp.path), ...(fp.sha256 && Array.isArray(fp.weights) ? { fingerprint: fp } : {}) } : {}),
  };
  const byGrid = new Map<string, { site: string; window: number; layers: Set<number>; facts: Map<number, TraceFact & { at: Map<number, number | null> }> }>();
  const file = join(dir, "results.jsonl");
  try {
    if (!statSync(file).isFile()) throw new Error("not a file");
  } catch {
    throw specError(
      `${dir} has no results.jsonl (the trace's cells); write the run folder with \`sweepctl local\` or \`sweepctl archive\``,
      "a run folder",
      dir,
    );
  }
  let lineNo = 0;
  for (const line of lines(file)) {
    lineNo++;
    if (!line.trim()) continue;
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch (err) {
      throw new SpecError(
        `${FIELD}: ${file} line ${lineNo} is not JSON (${(err as Error).message})`,
        { path: FIELD, expected: "results.jsonl of a trace", received: dir },
        { cause: err },
      );
    }
    if (!model.id && typeof r.model === "string") model.id = r.model;
    const site = str(r.site);
    if (!site) continue;
    const window = Number(r.window);
    const key = `${site}|${window}`;
    let g = byGrid.get(key);
    if (!g) byGrid.set(key, (g = { site, window, layers: new Set(), facts: new Map() }));
    const layer = Number(r.layer);
    g.layers.add(layer);
    if (r.token_group !== "subject_last") continue;
    const pi = Number(r.prompt_index);
    let f = g.facts.get(pi);
    if (!f) g.facts.set(pi, (f = { prompt: pi, subject: str(r.subject), relation: str(r.relation), text: str(r.prompt), ie: [], at: new Map() }));
    f.at.set(layer, typeof r.ie === "number" && Number.isFinite(r.ie) ? r.ie : null);
  }
  const grids = [...byGrid.values()].map((g) => {
    const layers = [...g.layers].sort((a, b) => a - b);
    const facts = [...g.facts.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([, f]) => ({ prompt: f.prompt, subject: f.subject, relation: f.relation, text: f.text, ie: layers.map((l) => f.at.get(l) ?? null) }));
    return { site: g.site, window: g.window, layers, facts };
  });
  return { sweepId: str(info.sweepId) || str(run?.sweep_id), state: str(info.state) || str(run?.state), kind: str(info.kind) || "trace", model, grids };
}

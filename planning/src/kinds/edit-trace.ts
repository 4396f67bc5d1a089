/**
 * `layers: { from_trace }` of the edit kind (issue 17, the paper's figure 4): tracing chooses the
 * edit. A finished trace sweep of the same model gives, per fact, the indirect effect at the last
 * subject token on the site each edited matrix writes (Mamba: W_o → `mixer` (o), W_a → `ssm` (s),
 * W_g → `gate` (g); NeoX: dense_4h_to_h → `mlp`), per layer (window as traced). Each case is
 * edited at its fact's peak layer; or, with `edit_layers`, at those layers with the trace beside.
 *
 * The trace arrives as {@link TraceEvidence} (from a coordinator's aggregate, or from a run folder
 * of `sweepctl local` / `sweepctl archive`), is checked and reduced to {@link TraceLayers} (small:
 * peaks per fact and the mean curve), which the coordinator keeps with the edit sweep so a re-plan
 * and the aggregation see the same choices.
 */
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import type { sweep } from "@factsweep/proto";
import { parse as parseYaml } from "yaml";
import type { ResultAggregator } from "../aggregator.js";
import { SpecError } from "../errors.js";
import { parseJsonFile, readRegularFile, typeOfValue } from "../files.js";
import { fingerprintMismatch, type ModelFingerprint } from "../fingerprint.js";
import { resolveLayers, type LayersSpec } from "../layers.js";
import type { ModelConfig } from "../model-config.js";
import type { SiteName } from "../sites.js";

/** The traced site whose state each editable matrix writes. */
export const TRACE_SITE_OF_MATRIX = { W_o: "mixer", W_a: "ssm", W_g: "gate", dense_4h_to_h: "mlp" } as const satisfies Record<string, SiteName>;
const TRACE_SITES: readonly string[] = Object.values(TRACE_SITE_OF_MATRIX);

const FIELD = "layers.from_trace";

/** One traced fact: its prompt and its IE at the last subject token per layer of its grid (null: undefined IE or no cell). */
export interface TraceFact {
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
  /** Every (site, window) traced; `facts` are read for the sites a matrix needs (empty for others). */
  grids: { site: string; window: number; layers: number[]; facts: TraceFact[] }[];
}

/** The peak of one fact for one matrix. */
export interface TracePeak {
  layer: number;
  ie: number;
}

/** A checked trace reduced to what the edit sweep needs (JSON-safe; kept in the sweep's record). */
export interface TraceLayers {
  /** The trace sweep (its id) and the spec's value (an id or a folder). */
  sweepId: string;
  source: string;
  /** Per edited matrix: the site and window read, the traced layers and the mean IE at the last subject token over all traced facts. */
  matrices: { matrix: string; site: string; window: number; layers: number[]; meanIE: (number | null)[]; facts: number }[];
  /** Per traced fact, its peak per matrix (a matrix is absent where the fact's IE is undefined at every layer). */
  facts: { subject: string; relation: string; text: string; peaks: Record<string, TracePeak> }[];
  /** `edit_layers` resolved: every case edited at these layers; absent: each case at its peak. */
  editLayers?: number[];
}

/**
 * The layer of the highest IE; a tie goes to the lowest layer (deterministic, and the earliest
 * layer where the fact is fully expressed); null when no layer has a defined IE.
 */
export function peakLayer(layers: readonly number[], ie: readonly (number | null)[]): TracePeak | null {
  let best: TracePeak | null = null;
  layers.forEach((layer, i) => {
    const v = ie[i];
    if (v === null || v === undefined || !Number.isFinite(v)) return;
    if (!best || v > best.ie || (v === best.ie && layer < best.layer)) best = { layer, ie: v };
  });
  return best;
}

/** Whether a `from_trace` value names a run folder rather than a sweep id (sweep ids have no "/"). */
export const isTraceFolder = (source: string): boolean => source.includes("/") || source === "." || source === "..";

const specError = (message: string, expected: string, received?: unknown, path = FIELD) => new SpecError(`${path}: ${message}`, { path, expected, received });

/** The trace view of a coordinator's aggregate: facts at the last subject token for the sites a matrix writes. */
export function traceEvidenceFromAggregator(agg: ResultAggregator, prompts: readonly sweep.PromptSpec[], meta: Omit<TraceEvidence, "grids">): TraceEvidence {
  const byIndex = new Map(prompts.map((p) => [p.index, p]));
  const grids = agg.grids().map(({ site, window }) => {
    if (!TRACE_SITES.includes(site)) return { site, window, layers: [], facts: [] };
    const r = agg.factRows(site, window, "subject_last");
    const facts = r.prompts.map((pi, i) => {
      const p = byIndex.get(pi);
      return { subject: p?.subject ?? "", relation: p?.relation ?? "", text: p?.text ?? "", ie: r.ie[i]! };
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
    let rest = "";
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) {
      const parts = (rest + buf.toString("utf8", 0, n)).split("\n");
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
      throw specError(`${dir} has no ${name}: it is not a run folder; give the folder \`sweepctl local --out\` or \`sweepctl archive --out\` wrote, or a trace sweep's id`, "a run folder", dir);
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
    throw specError(`${dir} has no results.jsonl (the trace's cells); write the run folder with \`sweepctl local\` or \`sweepctl archive\``, "a run folder", dir);
  }
  let lineNo = 0;
  for (const line of lines(file)) {
    lineNo++;
    if (!line.trim()) continue;
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch (err) {
      throw new SpecError(`${FIELD}: ${file} line ${lineNo} is not JSON (${(err as Error).message})`, { path: FIELD, expected: "results.jsonl of a trace", received: dir }, { cause: err });
    }
    if (!model.id && typeof r.model === "string") model.id = r.model;
    const site = str(r.site);
    if (!site) continue;
    const window = Number(r.window);
    const key = `${site}|${window}`;
    let g = byGrid.get(key);
    if (!g) byGrid.set(key, (g = { site, window, layers: new Set(), facts: new Map() }));
    if (!TRACE_SITES.includes(site)) continue;
    const layer = Number(r.layer);
    g.layers.add(layer);
    if (r.token_group !== "subject_last") continue;
    const pi = Number(r.prompt_index);
    let f = g.facts.get(pi);
    if (!f) g.facts.set(pi, (f = { subject: str(r.subject), relation: str(r.relation), text: str(r.prompt), ie: [], at: new Map() }));
    f.at.set(layer, typeof r.ie === "number" && Number.isFinite(r.ie) ? r.ie : null);
  }
  const grids = [...byGrid.values()].map((g) => {
    const layers = [...g.layers].sort((a, b) => a - b);
    const facts = [...g.facts.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([, f]) => ({ subject: f.subject, relation: f.relation, text: f.text, ie: layers.map((l) => f.at.get(l) ?? null) }));
    return { site: g.site, window: g.window, layers, facts };
  });
  return { sweepId: str(info.sweepId) || str(run?.sweep_id), state: str(info.state) || str(run?.state), kind: str(info.kind) || "trace", model, grids };
}

/** Facts of a trace keyed by subject (what a case is looked up by first). */
type FactIndex = Map<string, TraceLayers["facts"]>;

function factIndex(t: TraceLayers): FactIndex {
  const m: FactIndex = new Map();
  for (const f of t.facts) m.set(f.subject, [...(m.get(f.subject) ?? []), f]);
  return m;
}

const indexes = new WeakMap<TraceLayers, FactIndex>();

/**
 * The traced fact of a case: same subject and relation, else same subject and prompt text, else
 * (a run folder without each row's prompt) the one traced fact of that subject.
 */
export function traceFactOf(t: TraceLayers, c: { subject: string; relation: string; text: string }): TraceLayers["facts"][number] | undefined {
  let idx = indexes.get(t);
  if (!idx) indexes.set(t, (idx = factIndex(t)));
  const same = idx.get(c.subject) ?? [];
  return (
    same.find((f) => f.relation !== "" && f.relation === c.relation) ??
    same.find((f) => f.text !== "" && f.text === c.text) ??
    (same.length === 1 && same[0]!.relation === "" && same[0]!.text === "" ? same[0] : undefined)
  );
}

/**
 * Checks a trace against the edit spec and reduces it to each fact's peaks per matrix: the trace is
 * a finished (`done`) `trace` sweep of the same model (id, type, depth, folder or fingerprint)
 * and has the site each matrix needs (one window, or `layers.window`).
 * @throws SpecError naming `layers.from_trace` (or `layers.window`, `layers.edit_layers`) and the fix.
 */
export function traceLayersFrom(
  ev: TraceEvidence,
  layers: Extract<LayersSpec, { from_trace: string }>,
  model: { id: string; path: string; fingerprint?: () => Pick<ModelFingerprint, "sha256" | "weights"> },
  modelConfig: Pick<ModelConfig, "modelType" | "numLayers">,
  matrices: readonly string[],
): TraceLayers {
  const src = layers.from_trace;
  const name = `trace sweep ${ev.sweepId || src}`;
  if (ev.kind !== "trace") throw specError(`${name} is kind ${ev.kind}, not trace; give a trace sweep's id or run folder`, "a trace sweep", src);
  if (ev.state !== "done")
    throw specError(
      `${name} is ${ev.state || "of unknown state"}, not done; wait for it to finish (sweepctl watch ${ev.sweepId}) or resume it (sweepctl resume ${ev.sweepId}), then launch the edit`,
      "a finished (done) trace sweep",
      src,
    );
  const other = (what: string) =>
    specError(`${name} traced another model (${what}); trace model ${model.id} (${model.path}) first, or edit the traced one`, `a trace of model ${model.id}`, src);
  if (ev.model.id && ev.model.id !== model.id) throw other(`model.id ${ev.model.id}, this spec's ${model.id}`);
  if (ev.model.modelType && ev.model.modelType !== modelConfig.modelType) throw other(`a ${ev.model.modelType} model, this one is ${modelConfig.modelType}`);
  if (ev.model.numLayers && ev.model.numLayers !== modelConfig.numLayers) throw other(`${ev.model.numLayers} layers, this model has ${modelConfig.numLayers}`);
  if (ev.model.fingerprint && model.fingerprint) {
    const why = fingerprintMismatch(ev.model.fingerprint, model.fingerprint());
    if (why) throw other(`its checkpoint's ${why}`);
  } else if (ev.model.path && ev.model.path !== model.path) throw other(`folder ${ev.model.path}, this spec's ${model.path}`);

  const editLayers = layers.edit_layers === undefined ? undefined : resolveLayers(layers.edit_layers, modelConfig.numLayers, "layers.edit_layers");
  const facts = new Map<string, TraceLayers["facts"][number] & { sums: Map<string, { layers: number[]; sum: number[]; n: number[] }> }>();
  const out: TraceLayers["matrices"] = [];
  for (const matrix of matrices) {
    const site = (TRACE_SITE_OF_MATRIX as Record<string, string>)[matrix];
    if (!site) throw specError(`edit matrix ${matrix} has no traced site to choose its layer from`, Object.keys(TRACE_SITE_OF_MATRIX).join("|"), matrix, "edit.matrices");
    const all = ev.grids.filter((g) => g.site === site);
    if (all.length === 0)
      throw specError(
        `${name} traced no \`${site}\` site, which edit matrix ${matrix} needs (traced: ${[...new Set(ev.grids.map((g) => g.site))].join(", ") || "nothing"}); trace it (grid: [{ site: ${site}, window: 10 }]) or leave ${matrix} out of edit.matrices`,
        `a trace with site ${site}`,
        src,
      );
    let grid = all[0]!;
    if (layers.window !== undefined) {
      const w = all.find((g) => g.window === layers.window);
      if (!w) throw specError(`${name} traced \`${site}\` with window ${all.map((g) => g.window).join(", ")}, not ${layers.window}; set layers.window to one of them`, all.map((g) => g.window).join("|"), layers.window, "layers.window");
      grid = w;
    } else if (all.length > 1)
      throw specError(`${name} traced \`${site}\` with several windows (${all.map((g) => g.window).join(", ")}); choose one with layers.window`, all.map((g) => g.window).join("|"), undefined, "layers.window");
    if (grid.facts.length === 0)
      throw specError(`${name} has no result at the last subject token for \`${site}\` (window ${grid.window}); trace with tokens: all (or subject_last)`, "results at the last subject token", src);
    // A fact traced more than once (the same subject and relation in several prompts): its IEs are averaged per layer.
    const sums = new Map<number, { sum: number; n: number }>();
    for (const f of grid.facts) {
      const key = `${f.relation}\u0000${f.subject}\u0000${f.relation ? "" : f.text}`;
      let e = facts.get(key);
      if (!e) facts.set(key, (e = { subject: f.subject, relation: f.relation, text: f.text, peaks: {}, sums: new Map() }));
      let s = e.sums.get(matrix);
      if (!s) e.sums.set(matrix, (s = { layers: grid.layers, sum: grid.layers.map(() => 0), n: grid.layers.map(() => 0) }));
      f.ie.forEach((v, i) => {
        if (v === null || !Number.isFinite(v)) return;
        s.sum[i]! += v;
        s.n[i]!++;
        const m = sums.get(i) ?? { sum: 0, n: 0 };
        sums.set(i, { sum: m.sum + v, n: m.n + 1 });
      });
    }
    const meanIE = grid.layers.map((_, i) => {
      const m = sums.get(i);
      return m && m.n > 0 ? m.sum / m.n : null;
    });
    out.push({ matrix, site, window: grid.window, layers: grid.layers, meanIE, facts: grid.facts.length });
  }
  const list = [...facts.values()].map(({ sums, ...f }) => {
    for (const [matrix, s] of sums) {
      const peak = peakLayer(
        s.layers,
        s.sum.map((v, i) => (s.n[i]! > 0 ? v / s.n[i]! : null)),
      );
      if (peak) f.peaks[matrix] = peak;
    }
    return f;
  });
  return { sweepId: ev.sweepId || src, source: src, matrices: out, facts: list, ...(editLayers ? { editLayers } : {}) };
}

/** The trace cut to the facts of planned cases (what the sweep's record keeps). */
export function traceLayersFor(t: TraceLayers, cases: readonly Pick<sweep.PromptSpec, "subject" | "relation" | "text">[]): TraceLayers {
  const keep = new Set(cases.map((c) => traceFactOf(t, c)).filter((f) => f !== undefined));
  return { ...t, facts: t.facts.filter((f) => keep.has(f)) };
}

/**
 * `layers: { from_trace }` of the edit kind (issue 17, the paper's figure 4): tracing chooses the
 * edit. A finished trace sweep of the same model gives, per fact, the indirect effect at the last
 * subject token on the site paired with each edited matrix (Mamba: W_o → `mixer` (o), W_a → `ssm` (s),
 * W_g → `gate` (g); NeoX: dense_4h_to_h → `mlp`), per layer (window as traced). Each case is
 * edited at its fact's peak layer; or, with `edit_layers`, at those layers with the trace beside.
 *
 * The trace arrives as {@link TraceEvidence} (from a coordinator's aggregate, or from a run folder
 * of `sweepctl local` / `sweepctl archive`), is checked and reduced to {@link TraceLayers} (small:
 * peaks per fact and the mean curve), which the coordinator keeps with the edit sweep so a re-plan
 * and the aggregation see the same choices.
 */
import type { sweep } from "@factsweep/proto";
import { FactsweepError } from "@factsweep/shared";
import { SpecError } from "../errors.js";
import { fingerprintMismatch, type ModelFingerprint } from "../fingerprint.js";
import { resolveLayers, type LayersSpec } from "../layers.js";
import type { ModelConfig } from "../model-config.js";
import { SITES_BY_MODEL_TYPE, type SiteName } from "../sites.js";
import type { TraceEvidence } from "./trace-evidence.js";

/**
 * The traced site each editable matrix is matched with by default (the paper's figure 4): W_o
 * with o (`mixer`, its output), W_a with s (`ssm`, the SSM path it feeds), W_g with g (`gate`, its
 * output after SiLU); NeoX dense_4h_to_h with `mlp`. `layers.sites` overrides one (e.g. W_a: in_ssm, a itself).
 */
export const TRACE_SITE_OF_MATRIX = { W_o: "mixer", W_a: "ssm", W_g: "gate", dense_4h_to_h: "mlp" } as const satisfies Record<string, SiteName>;

const FIELD = "layers.from_trace";
const specError = (message: string, expected: string, received?: unknown, path = FIELD) => new SpecError(`${path}: ${message}`, { path, expected, received });

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
    specError(
      `${name} traced another model (${what}); trace model ${model.id} (${model.path}) first, or edit the traced one`,
      `a trace of model ${model.id}`,
      src,
    );
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
  const allowed = (SITES_BY_MODEL_TYPE as Record<string, readonly string[]>)[modelConfig.modelType] ?? [];
  for (const [m, site] of Object.entries(layers.sites ?? {})) {
    if (!matrices.includes(m))
      throw specError(
        `"${m}" is not an edited matrix (edit.matrices: ${matrices.join(", ")}); remove it or edit it`,
        matrices.join("|"),
        m,
        `layers.sites.${m}`,
      );
    if (!allowed.includes(site))
      throw specError(
        `"${site}" is not a site of ${modelConfig.modelType} models; expected one of ${allowed.join(", ")}`,
        allowed.join("|"),
        site,
        `layers.sites.${m}`,
      );
  }
  for (const matrix of matrices) {
    const site = layers.sites?.[matrix] ?? (TRACE_SITE_OF_MATRIX as Record<string, string>)[matrix];
    if (!site)
      throw specError(
        `edit matrix ${matrix} has no traced site to choose its layer from`,
        Object.keys(TRACE_SITE_OF_MATRIX).join("|"),
        matrix,
        "edit.matrices",
      );
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
      if (!w)
        throw specError(
          `${name} traced \`${site}\` with window ${all.map((g) => g.window).join(", ")}, not ${layers.window}; set layers.window to one of them`,
          all.map((g) => g.window).join("|"),
          layers.window,
          "layers.window",
        );
      grid = w;
    } else if (all.length > 1)
      throw specError(
        `${name} traced \`${site}\` with several windows (${all.map((g) => g.window).join(", ")}); choose one with layers.window`,
        all.map((g) => g.window).join("|"),
        undefined,
        "layers.window",
      );
    if (grid.facts.length === 0)
      throw specError(
        `${name} has no result at the last subject token for \`${site}\` (window ${grid.window}); trace with tokens: all (or subject_last)`,
        "results at the last subject token",
        src,
      );
    // A fact traced more than once (the same subject and relation in several prompts): its IEs are averaged per layer.
    const sums = new Map<number, { sum: number; n: number }>();
    for (const f of grid.facts) {
      // The fact: subject and relation, else subject and text; without either (a folder archived without --spec) only the prompt itself.
      const key = f.relation ? `r\u0000${f.relation}\u0000${f.subject}` : f.text ? `t\u0000${f.text}\u0000${f.subject}` : `p\u0000${f.prompt}`;
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
  // A fact matched by its relation is found by it again: its prompt text need not be kept (the record stays small).
  const byRelation = new Set<object>();
  const keep = new Set<object>();
  for (const c of cases) {
    const f = traceFactOf(t, c);
    if (!f) continue;
    keep.add(f);
    if (f.relation !== "" && f.relation === c.relation) byRelation.add(f);
  }
  return { ...t, facts: t.facts.filter((f) => keep.has(f)).map((f) => (byRelation.has(f) ? { ...f, text: "" } : f)) };
}

/**
 * The (matrix, layer) edits of one case taken from a trace: each matrix at its fact's peak layer,
 * or every `edit_layers` layer (then a fact the trace lacks is edited all the same).
 * @throws FactsweepError (the case is skipped, with the reason) when the trace has no peak for it.
 */
export function traceEdits(
  t: TraceLayers,
  c: { subject: string; relation: string; text: string },
  matrices: readonly string[],
): { matrix: string; layer: number }[] {
  if (t.editLayers) return t.editLayers.flatMap((layer) => matrices.map((matrix) => ({ matrix, layer })));
  const fact = traceFactOf(t, c);
  if (!fact)
    throw new FactsweepError(
      `trace sweep ${t.sweepId} has no prompt of this fact (matched by subject and relation, or subject and prompt text; rows without either, as \`sweepctl archive\` writes without --spec, match a subject traced once); not edited`,
    );
  return matrices.map((matrix) => {
    const peak = fact.peaks[matrix];
    if (!peak)
      throw new FactsweepError(
        `trace sweep ${t.sweepId}: the fact's IE at the last subject token is undefined at every layer for ${matrix} (p_clean = p_corrupt); not edited`,
      );
    return { matrix, layer: peak.layer };
  });
}

/** The trace beside the edit scores (`layers: { from_trace }`): per matrix, the mean IE at the last subject token per layer. */
export interface EditTraceCurve {
  sweepId: string;
  /** Each case was edited at its own peak layer (false: at `edit_layers`, the trace drawn beside). */
  chosen: boolean;
  matrices: { matrix: string; site: string; window: number; layers: number[]; meanIE: (number | null)[]; facts: number }[];
}

/** What figure 4 reads of an edit point (kinds/edit.ts EditPoint). */
interface EditPointScores {
  matrix: string;
  layer: number;
  cases: number;
  ES: number | null;
  PS: number | null;
  NS: number | null;
}

/** The trace's mean IE for a matrix at a layer, or null. */
export function traceIEAt(s: { trace?: EditTraceCurve }, matrix: string, layer: number): number | null {
  const m = s.trace?.matrices.find((x) => x.matrix === matrix);
  return m?.meanIE[m.layers.indexOf(layer)] ?? null;
}

/**
 * Figure 4's series per matrix and layer, in %: the trace's mean IE at the last subject token, the
 * edit's ES/PS/NS, and (layers chosen per case) the share of cases whose peak was that layer.
 */
export function figure4Values(s: { trace?: EditTraceCurve; points: EditPointScores[] }): object[] {
  const t = s.trace!;
  const out: object[] = [];
  for (const m of t.matrices) {
    // One panel per matrix, titled with its traced site; the series keep one colour across panels.
    const panel = `${m.matrix} ← ${m.site} (window ${m.window})`;
    m.layers.forEach((layer, i) => {
      const v = m.meanIE[i];
      if (v !== null && v !== undefined) out.push({ matrix: panel, layer, series: "trace IE, last subject token", value: 100 * v });
    });
    const points = s.points.filter((p) => p.matrix === m.matrix);
    const cases = points.reduce((n, p) => n + p.cases, 0);
    for (const p of points) {
      for (const k of ["ES", "PS", "NS"] as const) if (p[k] !== null) out.push({ matrix: panel, layer: p.layer, series: `edit ${k}`, value: 100 * p[k]! });
      if (t.chosen && cases > 0) out.push({ matrix: panel, layer: p.layer, series: "cases edited at this layer", value: (100 * p.cases) / cases });
    }
  }
  return out;
}

/** A row's trace columns: the fact's peak layer and IE for the matrix (null without a trace or a peak). */
export function tracePeakColumns(
  t: TraceLayers | undefined,
  prompt: sweep.PromptSpec,
  matrix: string,
): { trace_layer: number | null; trace_ie: number | null } {
  const peak = t ? traceFactOf(t, prompt)?.peaks[matrix] : undefined;
  return { trace_layer: peak?.layer ?? null, trace_ie: peak?.ie ?? null };
}

/** The figure-4 panel of an edit sweep with a trace (none without): a line ChartView of kind.ts (not imported: kind.ts imports this file). */
export function figure4Chart(s: { trace?: EditTraceCurve; points: EditPointScores[] }, label: string) {
  if (!s.trace) return null;
  return {
    mark: "line" as const,
    title: `${label}: causal trace beside the edit, per layer (figure 4)`,
    values: figure4Values(s),
    x: { field: "layer", title: "layer" },
    y: { field: "value", title: "% (trace IE: mean over its facts)" },
    color: "series",
    facet: "matrix",
  };
}

/** The report's line on where an edit sweep's layers came from ("" without a trace). */
export function traceNote(s: { trace?: EditTraceCurve }): string {
  const t = s.trace;
  if (!t) return "";
  const sites = t.matrices.map((m) => `${m.matrix} ← ${m.site}, window ${m.window}`).join("; ");
  return t.chosen
    ? `layers from trace sweep ${t.sweepId}: each case edited at its fact's peak IE at the last subject token (${sites}); a layer's scores average the cases whose peak it was`
    : `trace sweep ${t.sweepId} drawn beside every case edited at every layer (${sites})`;
}

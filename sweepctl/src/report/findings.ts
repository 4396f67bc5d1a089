/**
 * The paper's headline findings checked on traced models, honestly: each check states its rule
 * and thresholds, the number of facts and layers it saw, a percentile bootstrap interval over facts
 * of every number the rule compares, and in how many bootstrap resamples the rule held. Below
 * {@link FINDINGS_RULES}' minimum sample sizes, or on a partial sweep, no verdict is given.
 */
import { seededRandom, type FactRows } from "@factsweep/planning";
import type { Finding, HeatmapData, ModelTrace, Verdict } from "./types.js";

/** The rules every check applies (shown on the report page). */
export const FINDINGS_RULES = {
  /** Fewer facts than this: "too few facts", no verdict. */
  minFacts: 20,
  /** Fewer traced layers than this: "too few layers", no verdict. */
  minLayers: 6,
  /** Bootstrap resamples of the facts (seeded: the same page every time). */
  resamples: 1000,
  seed: 1,
  /** Central interval of each statistic over the resamples. */
  interval: 0.95,
  /** "reproduced" needs the rule to hold on all facts and in at least this share of resamples; "not reproduced": at most 1 − this. */
  support: 0.95,
} as const;

/** Which row of a heatmap is the last subject token / the last token, whatever the grouping scheme calls them. */
const SUBJECT_LAST = /last subject|subject[_ ]?last/i;
const LAST_TOKEN = /^last( token)?$|^last_token$|prompt[_ ]last/i;
type Row = "subject_last" | "last";
const ROW_RE: Record<Row, RegExp> = { subject_last: SUBJECT_LAST, last: LAST_TOKEN };

interface Peak {
  layer: number;
  value: number;
}
/** A mean-IE curve over layers of one (site, row). */
type Curve = { layers: number[]; ie: (number | null)[] };
type Curves = (site: string, row: Row) => Curve | undefined;

function peakOf(c: Curve | undefined): Peak | undefined {
  let best: Peak | undefined;
  c?.ie.forEach((v, i) => {
    if (v !== null && Number.isFinite(v) && (!best || v > best.value)) best = { layer: c.layers[i] ?? i, value: v };
  });
  return best;
}

/** One check: the claim, the published numbers, the rule in words, and the rule on a set of curves. */
interface Check {
  claim: string;
  paper: string;
  rule: string;
  /** (site, row) of every peak the rule reads, named as in `stats`. */
  peaks: Record<string, [site: string, row: Row]>;
  holds(p: Record<string, Peak>): boolean;
}

const fmtPeak = (name: string, p: Peak | undefined): string => (p ? `${name} ${p.value.toFixed(2)} at layer ${p.layer}` : `${name} n/a`);

function residualCheck(paper: string): Check {
  return {
    claim: "The residual stream carries the fact at the last subject token in earlier layers and at the last token in later layers",
    paper,
    rule: "peak IE of h at the last subject token ≥ 0.2 and at the last token ≥ 0.2, the subject peak at an earlier layer",
    peaks: { "h@subject-last": ["residual", "subject_last"], "h@last": ["residual", "last"] },
    holds: (p) => p["h@subject-last"]!.layer < p["h@last"]!.layer && p["h@subject-last"]!.value >= 0.2 && p["h@last"]!.value >= 0.2,
  };
}

const MAMBA_CHECKS: Check[] = [
  residualCheck("mamba-2.8b: subject-last plateau ≈0.53–0.58 over L23–42, collapsing at L43; last token ≥0.8 from L47 (of 64)"),
  {
    claim: "An early site at the last subject token is carried by the mixer output o (W_o), not by the SSM output s",
    paper: "mamba-2.8b: o ≥0.40 over window centres L11–24; s ≤0.05 at the subject's last token everywhere",
    rule: "peak IE of o at the last subject token ≥ 0.1 and ≥ 2 × the peak of s there",
    peaks: { "o@subject-last": ["mixer", "subject_last"], "s@subject-last": ["ssm", "subject_last"] },
    holds: (p) => p["o@subject-last"]!.value >= 0.1 && p["o@subject-last"]!.value >= 2 * Math.max(p["s@subject-last"]!.value, 0),
  },
  {
    claim: "A late site at the last token is carried by the SSM path s",
    paper: "mamba-2.8b: s at the last token ≥0.5 for window centres L43–52; ≈0 before L39",
    rule: "peak IE of s at the last token ≥ 0.2, at a later layer than the peak of o at the last subject token",
    peaks: { "s@last": ["ssm", "last"], "o@subject-last": ["mixer", "subject_last"] },
    holds: (p) => p["s@last"]!.value >= 0.2 && p["s@last"]!.layer > p["o@subject-last"]!.layer,
  },
  {
    claim: "The gate g has a weaker effect at the last subject token than o",
    paper: "mamba-2.8b: g peaks at 0.17 (L23) against o's ≥0.5",
    rule: "peak IE of g at the last subject token < the peak of o there",
    peaks: { "g@subject-last": ["gate", "subject_last"], "o@subject-last": ["mixer", "subject_last"] },
    holds: (p) => p["g@subject-last"]!.value < p["o@subject-last"]!.value,
  },
];

const NEOX_CHECKS: Check[] = [
  residualCheck("pythia-2.8b: subject-last ≈0.5–0.63 over L1–15, dropping at L16; last token ≥0.8 from L22 (of 32)"),
  {
    claim: "MLPs at the last subject token mediate the fact in early layers",
    paper: "pythia-2.8b: MLP window at subject-last peaks at 0.68 (L5), >0.4 until L11",
    rule: "peak IE of the MLP at the last subject token ≥ 0.1 and above the attention's peak there",
    peaks: { "mlp@subject-last": ["mlp", "subject_last"], "attn@subject-last": ["attn", "subject_last"] },
    holds: (p) => p["mlp@subject-last"]!.value >= 0.1 && p["mlp@subject-last"]!.value > p["attn@subject-last"]!.value,
  },
  {
    claim: "Attention moves the fact to the last token in later layers",
    paper: "pythia-2.8b: attention window at the last token ≥0.8 over L17–21",
    rule: "peak IE of attention at the last token ≥ 0.2, at a later layer than the MLP's peak at the last subject token",
    peaks: { "attn@last": ["attn", "last"], "mlp@subject-last": ["mlp", "subject_last"] },
    holds: (p) => p["attn@last"]!.value >= 0.2 && p["attn@last"]!.layer > p["mlp@subject-last"]!.layer,
  },
];

/** Mean over the heatmap's cells (what the page draws): the point estimate. */
function heatmapCurves(m: ModelTrace): Curves {
  return (site, row) => {
    const h: HeatmapData | undefined = m.heatmaps.find((x) => x.site === site);
    const i = h ? h.groups.findIndex((g) => ROW_RE[row].test(g)) : -1;
    return h && i >= 0 ? { layers: h.layers, ie: h.ie[i]! } : undefined;
  };
}

/** Curves of the facts drawn (indices into each FactRows' facts): the mean per layer. */
function resampledCurves(rows: Map<string, FactRows>, draw: number[]): Curves {
  return (site, row) => {
    const r = rows.get(`${site}|${row}`);
    if (!r) return undefined;
    const ie = r.layers.map((_, li) => {
      let sum = 0;
      let n = 0;
      for (const f of draw) {
        const v = r.ie[f]?.[li];
        if (v !== null && v !== undefined) {
          sum += v;
          n++;
        }
      }
      return n ? sum / n : null;
    });
    return { layers: r.layers, ie };
  };
}

function peaksOf(check: Check, curves: Curves): Record<string, Peak> | undefined {
  const out: Record<string, Peak> = {};
  for (const [name, [site, row]] of Object.entries(check.peaks)) {
    const p = peakOf(curves(site, row));
    if (!p) return undefined;
    out[name] = p;
  }
  return out;
}

const quantile = (sorted: number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))]!;

/** Whether a view is of a sweep that has not finished with every planned fact. */
export function partialOf(m: ModelTrace): { done: number; planned: number } | undefined {
  const planned = m.plannedFacts ?? m.facts;
  return (m.state !== undefined && m.state !== "done") || m.facts < planned ? { done: m.facts, planned } : undefined;
}

function evaluate(m: ModelTrace, check: Check): Finding {
  const layers = Math.max(0, ...m.heatmaps.map((h) => h.layers.length));
  const base = { model: m.label, claim: check.claim, paper: check.paper, rule: check.rule, facts: m.facts, layers };
  const point = peaksOf(check, heatmapCurves(m));
  const measured = Object.entries(check.peaks)
    .map(([name]) => fmtPeak(name, point?.[name]))
    .join("; ");
  const verdictOnly = (verdict: Verdict, note: string): Finding => ({ ...base, measured, verdict, note });
  if (!point) return verdictOnly("not checked", "the sweep lacks a site or token row this rule reads");
  const partial = partialOf(m);
  if (partial) return verdictOnly("partial", `partial data: ${partial.done} of ${partial.planned} facts; no verdict until the sweep is done`);
  if (m.facts < FINDINGS_RULES.minFacts) return verdictOnly("too few facts", `${m.facts} facts < ${FINDINGS_RULES.minFacts}`);
  if (layers < FINDINGS_RULES.minLayers) return verdictOnly("too few layers", `${layers} layers < ${FINDINGS_RULES.minLayers}`);
  const holds = check.holds(point);
  // Bootstrap over facts: every (site, row) the rule reads must have per-fact rows over the same facts.
  const rows = new Map<string, FactRows>();
  for (const [site, row] of Object.values(check.peaks)) {
    const r = m.perFact?.find((x) => x.site === site && ROW_RE[row].test(x.group));
    if (r) rows.set(`${site}|${row}`, r);
  }
  const nFacts = new Set([...rows.values()].map((r) => r.ie.length));
  if (rows.size < new Set(Object.values(check.peaks).map(([s, r]) => `${s}|${r}`)).size || nFacts.size !== 1) {
    return { ...base, measured, verdict: holds ? "reproduced" : "not reproduced", note: "no bootstrap interval: per-fact results missing from this view" };
  }
  const n = [...nFacts][0]!;
  const rand = seededRandom(FINDINGS_RULES.seed);
  let held = 0;
  const samples: Record<string, number[]> = Object.fromEntries(Object.keys(check.peaks).map((k) => [k, []]));
  for (let b = 0; b < FINDINGS_RULES.resamples; b++) {
    const draw = Array.from({ length: n }, () => Math.floor(rand() * n));
    const p = peaksOf(check, resampledCurves(rows, draw));
    if (!p) continue;
    if (check.holds(p)) held++;
    for (const [k, v] of Object.entries(p)) samples[k]!.push(v.value);
  }
  const support = held / FINDINGS_RULES.resamples;
  const lo = (1 - FINDINGS_RULES.interval) / 2;
  const intervals = Object.fromEntries(
    Object.entries(samples).map(([k, xs]) => {
      const s = [...xs].sort((a, b) => a - b);
      return [k, [quantile(s, lo), quantile(s, 1 - lo)] as [number, number]];
    }),
  );
  const verdict: Verdict =
    holds && support >= FINDINGS_RULES.support ? "reproduced" : !holds && support <= 1 - FINDINGS_RULES.support ? "not reproduced" : "inconclusive";
  return { ...base, measured, verdict, support, intervals };
}

/**
 * The checks of each model type. A Mamba-2 gets Mamba-1's: the paper studied only Mamba-1, and
 * whether its findings carry over is the question; Mamba-2's o, s and g are the same tensors
 * (out_proj's output, the scan output before the gate, silu(z); engine/mamba2.py).
 */
const CHECKS_BY_MODEL_TYPE: Record<string, Check[]> = { mamba: MAMBA_CHECKS, mamba2: MAMBA_CHECKS, gpt_neox: NEOX_CHECKS };
/** Model types the findings table covers. */
export const CHECKED_MODEL_TYPES: readonly string[] = Object.keys(CHECKS_BY_MODEL_TYPE);

/** Checks the paper's headline findings (docs/methods.md) on each traced model whose spec did not turn them off. */
export function findings(models: ModelTrace[]): Finding[] {
  return models.filter((m) => m.findings !== false).flatMap((m) => (CHECKS_BY_MODEL_TYPE[m.modelType] ?? []).map((c) => evaluate(m, c)));
}

/** A finding in one line of text (the CLI's output). */
export function findingLine(f: Finding): string {
  const ci = f.intervals
    ? `; ${Math.round(FINDINGS_RULES.interval * 100)}% bootstrap intervals ${Object.entries(f.intervals)
        .map(([k, [a, b]]) => `${k} [${a.toFixed(2)}, ${b.toFixed(2)}]`)
        .join(", ")}; rule held in ${Math.round((f.support ?? 0) * 100)}% of ${FINDINGS_RULES.resamples} resamples`
    : "";
  return `${f.verdict === "not reproduced" ? "NOT reproduced" : f.verdict}: ${f.model}: ${f.claim} (${f.facts} facts, ${f.layers} layers; ${f.measured}${ci}${f.note ? `; ${f.note}` : ""})`;
}

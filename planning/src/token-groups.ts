/**
 * Token groups: the rows of causal-tracing heatmaps and the buckets of average effects.
 *
 * `rome` (default): ROME's six groups (`notebooks/average_causal_effects.ipynb`): first subject
 * token, middle subject tokens (each its own sample), last subject token, first subsequent token,
 * further tokens, last token. As in ROME, a token can belong to several groups (a one-token subject
 * is both first and last subject token; with one token after the subject it is both first
 * subsequent and last). Tokens before the subject, which ROME leaves out, are `prefix` here.
 *
 * `romba`: the grouping of the Mamba paper's code (`average_indirect_effects`): prefix,
 * subject[:-2], second-last subject token, last subject token, further tokens (after the subject,
 * excluding the last token), last token.
 */

/** Grouping scheme. */
export const TOKEN_GROUP_SCHEMES = ["rome", "romba"] as const;
export type TokenGroupScheme = (typeof TOKEN_GROUP_SCHEMES)[number];

/** Every group name of both schemes. */
export const TOKEN_GROUPS = [
  "prefix",
  "subject_first",
  "subject_middle",
  "subject_early",
  "subject_2nd_last",
  "subject_last",
  "first_subsequent",
  "further",
  "last",
] as const;
export type TokenGroup = (typeof TOKEN_GROUPS)[number];

/** The groups of each scheme, in heatmap row order. */
export const GROUPS_BY_SCHEME: Record<TokenGroupScheme, readonly TokenGroup[]> = {
  rome: ["prefix", "subject_first", "subject_middle", "subject_last", "first_subsequent", "further", "last"],
  romba: ["prefix", "subject_early", "subject_2nd_last", "subject_last", "further", "last"],
};

/** A `[start, end)` token span. */
export type Span = readonly [number, number];

function check(token: number, span: Span, numTokens: number): void {
  const [s, e] = span;
  if (!Number.isInteger(numTokens) || numTokens < 1) throw new RangeError(`Expected numTokens >= 1, got ${numTokens}`);
  if (!(Number.isInteger(s) && Number.isInteger(e) && 0 <= s && s < e && e <= numTokens)) {
    throw new RangeError(`Expected a subject span [start, end) with 0 <= start < end <= ${numTokens}, got [${s}, ${e})`);
  }
  if (!Number.isInteger(token) || token < 0 || token >= numTokens) {
    throw new RangeError(`Expected a token index in 0..${numTokens - 1}, got ${token}`);
  }
}

/**
 * Every group `token` belongs to under `scheme` (ROME counts a token in several groups where they
 * overlap). Never empty.
 */
export function tokenGroups(token: number, subjectSpan: Span, numTokens: number, scheme: TokenGroupScheme = "rome"): TokenGroup[] {
  check(token, subjectSpan, numTokens);
  const [s, e] = subjectSpan;
  const last = numTokens - 1;
  const out: TokenGroup[] = [];
  if (scheme === "rome") {
    if (token < s) out.push("prefix");
    if (token === s) out.push("subject_first");
    if (token > s && token < e - 1) out.push("subject_middle");
    if (token === e - 1) out.push("subject_last");
    if (token === e) out.push("first_subsequent");
    if (token > e && token < last) out.push("further");
    if (token === last && token >= e) out.push("last");
  } else {
    if (token < s) out.push("prefix");
    if (token >= s && token < e - 2) out.push("subject_early");
    if (token === e - 2 && token >= s) out.push("subject_2nd_last");
    if (token === e - 1) out.push("subject_last");
    if (token >= e && token < last) out.push("further");
    if (token === last && token >= e) out.push("last");
  }
  // A subject that ends the prompt: its last token is also the prompt's last token.
  if (token === last && token === e - 1) out.push("last");
  return out;
}

/**
 * The one group a token is reported under (a result row's `token_group`): the most specific of
 * {@link tokenGroups}, preferring the subject's last token and the prompt's last token, the two
 * sites the paper finds.
 */
export function tokenGroup(token: number, subjectSpan: Span, numTokens: number, scheme: TokenGroupScheme = "rome"): TokenGroup {
  const groups = tokenGroups(token, subjectSpan, numTokens, scheme);
  for (const preferred of ["subject_last", "last"] as const) if (groups.includes(preferred)) return preferred;
  return groups[0]!;
}

/**
 * Just enough PromQL reading for the operations tests: which metric names an expression uses,
 * the signals an alert compares against its threshold, and Grafana's variables replaced by values
 * Prometheus accepts.
 */

const KEYWORDS = new Set(["and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan", "atan2"]);
const HISTOGRAM_SUFFIXES = ["_bucket", "_sum", "_count"];

/** Metric names referenced by `expr` (function names, labels, keywords and durations excluded). */
export function metricNames(expr: string): Set<string> {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // label values
    .replace(/\{[^}]*\}/g, "") // label matchers
    .replace(/\[[^\]]*\]/g, "") // range selectors
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "") // label lists
    .replace(/\$\w+/g, ""); // Grafana variables
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, name, call] = m;
    if (!name || call || KEYWORDS.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return names;
}

/** The metric family a sample name belongs to: `x_bucket`, `x_sum`, `x_count` → `x` when `x` is known. */
export function familyOf(name: string, known: ReadonlySet<string>): string {
  if (known.has(name)) return name;
  for (const suffix of HISTOGRAM_SUFFIXES) {
    if (name.endsWith(suffix) && known.has(name.slice(0, -suffix.length))) return name.slice(0, -suffix.length);
  }
  return name;
}

/** Splits `expr` at top level (outside (), {}, [] and strings) on the given operator words/symbols. */
function splitTopLevel(expr: string, operators: RegExp): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quote = false;
  let start = 0;
  for (let i = 0; i < expr.length; i++) {
    const c = expr[i]!;
    if (quote) {
      if (c === "\\") i++;
      else if (c === '"') quote = false;
      continue;
    }
    if (c === '"') quote = true;
    else if ("({[".includes(c)) depth++;
    else if (")}]".includes(c)) depth--;
    else if (depth === 0) {
      const m = operators.exec(expr.slice(i));
      if (m && m.index === 0 && (i === 0 || /[\s)\]}]/.test(expr[i - 1]!) || !/\w/.test(m[0][0]!))) {
        parts.push(expr.slice(start, i));
        i += m[0].length - 1;
        start = i + 1;
      }
    }
  }
  parts.push(expr.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p.length > 0);
}

/**
 * The signals of an alert expression: for `A > 0.5 and on (x) B > 0`, the operands `A` and `B`
 * (what the alert measures, which must have data on a live cluster even when it does not fire).
 */
export function alertSignals(expr: string): string[] {
  const conditions = splitTopLevel(expr, /^(?:and|unless|or)\b(?:\s+(?:on|ignoring)\s*\([^)]*\))?/);
  return conditions.map((c) => primarySignal(splitTopLevel(c, /^(?:==|!=|>=|<=|>|<)(?:\s*bool\b)?/)[0]!));
}

/** `(X or vector(0))` → `X`: the fallback only stands in for a series that does not exist yet. */
export function primarySignal(expr: string): string {
  let e = expr.trim();
  while (e.startsWith("(") && e.endsWith(")") && balanced(e.slice(1, -1))) e = e.slice(1, -1).trim();
  return splitTopLevel(e, /^or\b/)[0]!;
}

/** True when every bracket opened in `s` closes in order (outside strings). */
function balanced(s: string): boolean {
  let depth = 0;
  let quote = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (quote) {
      if (c === "\\") i++;
      else if (c === '"') quote = false;
    } else if (c === '"') quote = true;
    else if ("({[".includes(c)) depth++;
    else if (")}]".includes(c) && --depth < 0) return false;
  }
  return depth === 0;
}

/** Values used for Grafana's variables when an expression is sent to Prometheus directly. */
export interface VariableValues {
  /** `$__rate_interval`, e.g. "30s". */
  rateInterval: string;
  /** Every other variable (`$sweep`, `$instance`), as a regex; ".*" selects all. */
  other?: string;
}

/** `expr` with Grafana's `$__rate_interval`, `$__interval`, `$__range` and `$var` replaced. */
export function substituteVariables(expr: string, values: VariableValues): string {
  return expr
    .replace(/\$__rate_interval|\$\{__rate_interval\}/g, values.rateInterval)
    .replace(/\$__interval|\$\{__interval\}/g, values.rateInterval)
    .replace(/\$__range|\$\{__range\}/g, "1h")
    .replace(/\$\{?(\w+)\}?/g, values.other ?? ".*");
}

/** The metric selector inside a Grafana `label_values(selector, label)` variable query. */
export function labelValuesSelector(query: string): string | undefined {
  const m = /^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$/.exec(query);
  return m?.[1];
}

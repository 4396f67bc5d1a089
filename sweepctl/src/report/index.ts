/** Tracing report: heatmaps, line plots and the paper's findings checked, as self-contained HTML + CSV. */
export { renderReport, renderSvg, reportCsv, partialText } from "./render.js";
export { findings, findingLine, partialOf, FINDINGS_RULES } from "./findings.js";
export { heatmapSpec, lineSpec } from "./charts.js";
export type { Finding, HeatmapData, ModelTrace, TraceReport, Verdict } from "./types.js";
export { modelTrace, GROUP_LABELS, type TraceMeta } from "@factsweep/planning";
export { readTraces, writeReport, TRACE_FILE } from "./write.js";

import { mkdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { findings } from "./findings.js";
import { renderReport, reportCsv } from "./render.js";
import type { Finding, ModelTrace } from "./types.js";

/** File a finished sweep's report view is saved to (by `sweepctl local`), read by `report --from`. */
export const TRACE_FILE = "trace.json";

/** Reads the saved report views of finished sweeps from their output folders. */
export function readTraces(dirs: string[]): ModelTrace[] {
  return dirs.map((d) => {
    const f = join(d, TRACE_FILE);
    if (!existsSync(f)) throw new Error(`${f} not found: expected the output folder of a finished \`sweepctl local\` run`);
    const trace = JSON.parse(readFileSync(f, "utf8")) as ModelTrace;
    // Views saved before the state was recorded: the run's sweep.json says how it ended.
    const info = join(d, "sweep.json");
    if (trace.state === undefined && existsSync(info)) {
      const state = (JSON.parse(readFileSync(info, "utf8")) as { state?: unknown }).state;
      if (typeof state === "string") trace.state = state;
    }
    return trace;
  });
}

/** Writes report.html and report.csv to `out`; returns their paths and the findings checked. */
export async function writeReport(
  traces: ModelTrace[],
  out: string,
  title: string,
  extraSections: string[] = [],
): Promise<{ html: string; csv: string; findings: Finding[] }> {
  mkdirSync(out, { recursive: true });
  const report = { title, created: new Date().toISOString(), models: traces };
  const html = join(out, "report.html");
  const csv = join(out, "report.csv");
  writeFileSync(html, await renderReport(report, extraSections));
  writeFileSync(csv, reportCsv(report));
  return { html, csv, findings: findings(traces) };
}

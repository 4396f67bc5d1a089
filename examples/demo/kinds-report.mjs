// Draws the experiment-kind figures (sweepctl/src/report/kinds.ts) from `sweepctl local` output
// folders: one kinds.html (SVG inline) plus each chart as an .svg.
// Usage: node examples/demo/kinds-report.mjs <out-dir> <local-out-dir>...
import { mkdirSync, writeFileSync } from "node:fs";
import { kindSections, readKindAggregates, writeKindReport } from "../../sweepctl/dist/report/kinds.js";

const [out, ...dirs] = process.argv.slice(2);
if (!out || dirs.length === 0) throw new Error("usage: node examples/demo/kinds-report.mjs <out-dir> <sweepctl local out dir>...");
mkdirSync(out, { recursive: true });
const aggs = readKindAggregates(dirs);
const names = ["knockout", "sever", "lre", "edit"].filter((k) => aggs.some((a) => a.kind === k));
(await kindSections(aggs)).forEach((html, i) =>
  [...html.matchAll(/<svg[\s\S]*?<\/svg>/g)].forEach((m, j) => writeFileSync(`${out}/${names[i]}-${j}.svg`, m[0])),
);
console.log(await writeKindReport(aggs, out, "Experiment kinds on the shipped tiny models (Mamba vs GPT-NeoX)"));

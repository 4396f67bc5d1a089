#!/usr/bin/env node
// Summarises a V8 .cpuprofile (node --cpu-prof): self time by function and inclusive time of the
// functions named on the command line's --inclusive list, as percentages of the sampled time.
//
//   node bench/coordinator-load/profile-top.mjs <file.cpuprofile> [--top 30] [--inclusive counts,saveSweep]
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : dflt;
};
const top = Number(flag("--top", "30"));
const inclusive = flag("--inclusive", "").split(",").filter(Boolean);
const prof = JSON.parse(readFileSync(args[0], "utf8"));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const self = new Map();
const counts = new Map();
for (const id of prof.samples) counts.set(id, (counts.get(id) ?? 0) + 1);
const total = prof.samples.length;
const label = (n) => {
  const f = n.callFrame;
  const file = f.url ? f.url.replace(/^.*\/(node_modules\/[^/]+(\/[^/]+)?|[^/]+\/dist)\//, "$1/") : "";
  return `${f.functionName || "(anonymous)"} ${file}${f.url ? `:${f.lineNumber + 1}` : ""}`;
};
for (const [id, c] of counts) {
  const k = label(byId.get(id));
  self.set(k, (self.get(k) ?? 0) + c);
}
const seconds = (prof.endTime - prof.startTime) / 1e6;
console.log(`${args[0]}: ${total} samples over ${seconds.toFixed(1)} s`);
console.log("self time:");
for (const [k, c] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${((100 * c) / total).toFixed(1).padStart(5)}%  ${k}`);
if (inclusive.length > 0) {
  console.log("inclusive time (a sample counts once per name on its stack):");
  const inc = new Map(inclusive.map((n) => [n, 0]));
  for (const [id, c] of counts) {
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const name = byId.get(cur).callFrame.functionName;
      if (inc.has(name) && !seen.has(name)) {
        seen.add(name);
        inc.set(name, inc.get(name) + c);
      }
    }
  }
  for (const [k, c] of inc) console.log(`  ${((100 * c) / total).toFixed(1).padStart(5)}%  ${k}`);
}

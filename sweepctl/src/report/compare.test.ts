import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { FactRows, HeatmapData, ModelTrace } from "@factsweep/planning";
import { compareTraces, writeComparison } from "./compare.js";

const GROUPS = ["last subject token", "last token"];
/** A trace whose every fact has IE `v(f)` at every layer of both rows, on `facts` facts. */
function trace(label: string, facts: number, v: (f: number) => number): ModelTrace {
  const layers = [0, 1, 2, 3];
  const rows = GROUPS.map((g): FactRows => ({
    site: "residual",
    window: 1,
    group: g,
    layers,
    ie: Array.from({ length: facts }, (_, f) => layers.map(() => v(f))),
  }));
  const m = rows[0]!.ie.reduce((s, r) => s + r[0]!, 0) / facts;
  const h: HeatmapData = {
    site: "residual",
    window: 1,
    groups: GROUPS,
    layers,
    ie: GROUPS.map(() => layers.map(() => m)),
    aie: GROUPS.map(() => layers.map(() => m)),
    count: GROUPS.map(() => layers.map(() => facts)),
  };
  return {
    label,
    modelType: "mamba",
    sweepId: label,
    corruption: "swap",
    facts,
    plannedFacts: facts,
    state: "done",
    skipped: [],
    heatmaps: [h],
    perFact: rows,
  };
}

test("compare: difference heatmaps a − b and per-row means whose bootstrap interval holds the true difference (and 0 only when there is none)", async () => {
  // a: facts alternate 0.6 / 0.4 (mean 0.5); b: 0.3 / 0.1 (mean 0.2); same: b's values.
  const a = trace("a", 40, (f) => (f % 2 ? 0.6 : 0.4));
  const b = trace("b", 30, (f) => (f % 2 ? 0.3 : 0.1));
  const c = compareTraces(a, b);
  assert.equal(c.heatmaps.length, 1);
  for (const row of c.heatmaps[0]!.diff) for (const d of row) assert.ok(Math.abs(d! - 0.3) < 1e-9);
  assert.equal(c.rows.length, 2);
  for (const r of c.rows) {
    assert.ok(Math.abs(r.diff.mean - 0.3) < 1e-9);
    assert.ok(r.diff.ci[0] <= 0.3 && 0.3 <= r.diff.ci[1] && r.diff.ci[0] > 0, JSON.stringify(r.diff));
    assert.deepEqual([r.a.facts, r.b.facts], [40, 30]);
  }
  const same = compareTraces(
    b,
    trace("b2", 30, (f) => (f % 2 ? 0.3 : 0.1)),
  );
  for (const r of same.rows) assert.ok(r.diff.ci[0] <= 0 && 0 <= r.diff.ci[1], JSON.stringify(r.diff));
  const file = await writeComparison(c, mkdtempSync(join(tmpdir(), "cmp-")));
  const html = readFileSync(file, "utf8");
  assert.match(html, /<figure class="diff" data-site="residual" data-window="1">/);
  assert.match(html, /<td>0\.300 \[0\.2\d\d, 0\.3\d\d\]<\/td>/);
  assert.match(html, /<title>last token, layer 2: ΔIE 0\.300<\/title>/);
});

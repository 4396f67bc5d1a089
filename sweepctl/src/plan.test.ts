import assert from "node:assert/strict";
import { test } from "node:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { goldenSpec } from "@factsweep/testing";
import { rateOfRun } from "./plan.js";

test("a local run's rate counts every engine worker it had: agents × workers per agent", () => {
  const dir = mkdtempSync(join(tmpdir(), "plan-rate-"));
  writeFileSync(join(dir, "run.json"), JSON.stringify({ spec: goldenSpec({ prompts: 2 }), agents: 2, workers: 3 }));
  writeFileSync(join(dir, "sweep.json"), JSON.stringify({ state: "done", createdMs: "1000", finishedMs: "11000", counts: { doneCells: 500 } }));
  const r = rateOfRun(dir);
  assert.equal(r.workers, 6);
  assert.equal(r.agents, 2);
  assert.equal(r.workPerSecond, (500 * 2) / 10, "the golden spec is noise with 2 samples: 2 forwards a cell");
  writeFileSync(join(dir, "sweep.json"), JSON.stringify({ state: "cancelled", createdMs: "1000", finishedMs: "11000", counts: { doneCells: 5 } }));
  assert.throws(() => rateOfRun(dir), /ended cancelled, not done; its rate would mislead/);
});

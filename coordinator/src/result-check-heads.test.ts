// The result check with per-head cells (Mamba-2 ssm, engine.Cell.head): a head's cell is another
// cell than its whole site and than every other head, on the wire too (head 0 is present, not the
// default). A few fixed cases, no generator: it runs in milliseconds.
import { test } from "node:test";
import assert from "node:assert/strict";
import { engine, sweep } from "@factsweep/proto";
import { checkResultContent, cellKey } from "./result-check.js";

const SSM = engine.Site.SITE_SSM;
const cell = (head?: number): engine.Cell => ({ site: SSM, layer: 3, token: 4, window: 2, ...(head === undefined ? {} : { head }) });
/** A planned shard of the whole ssm site and its heads 0 and 1 at one (layer, token, window). */
const planned = sweep.Shard.fromPartial({
  sweepId: "sw",
  shardId: "sw.0.0",
  kind: "trace",
  prompt: { index: 0, promptKey: "sw/0" },
  cells: [cell(), cell(0), cell(1)],
});
/** A result that answers `cells`, sent over the wire and decoded as the results consumer does. */
const result = (cells: engine.Cell[]): sweep.ShardResult =>
  sweep.ShardResult.decode(
    sweep.ShardResult.encode(
      sweep.ShardResult.fromPartial({
        sweepId: "sw",
        shardId: "sw.0.0",
        promptIndex: 0,
        pClean: 0.9,
        pCorrupt: 0.1,
        cells: cells.map((c, i) => ({ cell: c, p: 0.2 + 0.1 * i, logit: 1 })),
      }),
    ).finish(),
  );

test("head 0, head 1 and the whole site are three cells, and head 0 survives the wire", () => {
  assert.equal(new Set(planned.cells.map(cellKey)).size, 3);
  const r = result([cell(1), cell(), cell(0)]);
  assert.deepEqual(
    r.cells.map((c) => c.cell!.head),
    [1, undefined, 0],
  );
  assert.equal(checkResultContent(planned, r), undefined);
});

test("a result that answers a head with the whole site, another head, or a head twice is refused as cells_mismatch", () => {
  const cases: [string, engine.Cell[], RegExp][] = [
    ["the whole site twice instead of head 0", [cell(), cell(), cell(1)], new RegExp(`cell ${SSM}/3/4/2 given twice`)],
    ["head 0 twice instead of the whole site", [cell(0), cell(0), cell(1)], new RegExp(`cell ${SSM}/3/4/2/h0 given twice`)],
    ["an unplanned head 2 instead of head 1", [cell(), cell(0), cell(2)], new RegExp(`cell ${SSM}/3/4/2/h2 .* was not planned`)],
    ["heads only, the whole site missing", [cell(0), cell(1)], /2 cells, planned 3/],
  ];
  for (const [what, cells, detail] of cases) {
    const rej = checkResultContent(planned, result(cells));
    assert.equal(rej?.reason, "cells_mismatch", what);
    assert.match(rej.detail, detail, what);
  }
  // Planned without the whole site: its cell is not one of the heads'.
  const headsOnly = sweep.Shard.fromPartial({ ...planned, cells: [cell(0), cell(1)] });
  assert.match(checkResultContent(headsOnly, result([cell(), cell(1)]))?.detail ?? "", new RegExp(`cell ${SSM}/3/4/2 .* was not planned`));
});

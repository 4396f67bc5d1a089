import { test } from "node:test";
import assert from "node:assert/strict";
import { engine, sweep } from "@factsweep/proto";
import { ResultAggregator } from "./aggregator.js";

const prompts = [{ index: 0, numTokens: 3, subjectStart: 0, subjectEnd: 1, subject: "s" }];
const cell = (token: number, head?: number): engine.Cell => ({
  site: engine.Site.SITE_SSM,
  layer: 1,
  token,
  window: 1,
  ...(head === undefined ? {} : { head }),
});

test("per-head cells are aggregated as site ssm.h<k> beside the whole site, their rows carry head, and a saved state keeps them", () => {
  const agg = new ResultAggregator({ sweepId: "sw", prompts, model: "m2" });
  const cells = [cell(0), cell(0, 3), cell(2), cell(2, 3), cell(2, 0)].map((c, i) => ({ cell: c, p: 0.1 * (i + 1), logit: 0 }));
  assert.ok(agg.add(sweep.ShardResult.fromPartial({ sweepId: "sw", shardId: "sw.0.0", promptIndex: 0, pClean: 0.9, pCorrupt: 0.1, cells })));
  assert.deepEqual(
    agg
      .grids()
      .map((g) => g.site)
      .sort(),
    ["ssm", "ssm.h0", "ssm.h3"],
  );
  assert.equal(
    agg
      .heatmap("ssm.h3", 1)
      .counts.flat()
      .reduce((a, b) => a + b, 0) > 0,
    true,
  );
  const check = (a: ResultAggregator) => {
    const rows = [...a.rows()];
    assert.deepEqual(
      rows.map((r) => [r.site, r.head, r.token, r.p]),
      [
        ["ssm", undefined, 0, 0.1],
        ["ssm", 3, 0, 0.2],
        ["ssm", undefined, 2, 0.30000000000000004],
        ["ssm", 3, 2, 0.4],
        ["ssm", 0, 2, 0.5],
      ],
    );
  };
  check(agg);
  check(ResultAggregator.fromJSON(JSON.stringify(agg.toJSON())));
});

import assert from "node:assert/strict";
import { test } from "node:test";
import type { control } from "@factsweep/proto";
import { describeSweep, rateText, STALL_SECONDS } from "./cli-output.js";

const info = (over: Partial<control.SweepCounts>, rate = 466, eta = 15): control.SweepInfo => ({
  sweepId: "s",
  state: "running",
  name: "n",
  kind: "trace",
  counts: { plannedCells: 1000, doneCells: 500, shardsTotal: 10, shardsDone: 5, shardsLeased: 2, shardsPending: 3, shardsFailed: 0, retries: 0, ...over },
  cellsPerSecond: rate,
  priority: 0,
  weight: 1,
  leaseShare: 0,
  etaSeconds: eta,
  createdMs: 0,
  finishedMs: 0,
  promptErrors: [],
  failedShards: [],
});

test("status says 'waiting for agents' with no rate or ETA while no shard is leased, and stalled when no result comes", () => {
  assert.deepEqual(rateText(info({})), { rate: "466.0", eta: "15s" });
  // The only agent left: its leases were revoked, the shards wait; the last rate is not shown.
  assert.deepEqual(rateText(info({ shardsLeased: 0 })), { rate: "0.0", eta: "waiting for agents" });
  assert.match(describeSweep(info({ shardsLeased: 0 })), /cells\s+500\/1000\s+0\.0 cells\/s\s+ETA waiting for agents/);
  assert.deepEqual(rateText(info({}), STALL_SECONDS + 1), { rate: "0.0", eta: "stalled (no result for 31s)" });
  // Before the first result (engines loading) it is not called stalled.
  assert.deepEqual(rateText(info({ doneCells: 0 }, 0, 0), STALL_SECONDS + 5), { rate: "0.0", eta: "- (no result yet: workers loading the model)" });
  // No ETA until the coordinator has one (too few results yet).
  assert.equal(rateText(info({}, 12, 0)).eta, "-");
});

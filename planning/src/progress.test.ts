import assert from "node:assert/strict";
import { test } from "node:test";
import { ProgressRate } from "./progress.js";

test("the rate falls to 0 once results stop arriving (the only agent left), and the ETA with it", () => {
  const r = new ProgressRate({ windowMs: 30_000 });
  r.start(0, 0);
  for (let t = 1_000; t <= 20_000; t += 1_000) r.sample(t, (t / 1_000) * 100); // 100 cells/s from t = 1 s
  const live = r.at(20_000, 2_000, 10_000);
  assert.ok(Math.abs(live.rate - 100) < 6, `rate ${live.rate}`);
  assert.ok(Math.abs(live.eta - 80) < 5, `eta ${live.eta}`);
  // No result for 31 s: nothing arrived within the window.
  assert.deepEqual(r.at(51_000, 2_000, 10_000), { rate: 0, eta: 0 });
  // Half the window without results: half the rate.
  assert.ok(Math.abs(r.at(35_000, 2_000, 10_000).rate - 1_500 / 30) < 1);
});

test("the wait for the first result (model load) is not part of the rate, and no ETA comes before minEtaMs of results", () => {
  const r = new ProgressRate({ minEtaMs: 5_000 });
  r.start(0, 0);
  r.sample(20_000, 0); // a lease granted, nothing done yet
  assert.deepEqual(r.at(20_000, 0, 1_000), { rate: 0, eta: 0 });
  r.sample(30_000, 100); // first result after a 30 s warm-up
  r.sample(32_000, 300);
  const early = r.at(32_000, 300, 1_000);
  assert.equal(early.eta, 0, "no ETA 2 s after the first result");
  assert.equal(early.rate, 100, "200 cells in the 2 s since the first result, not 300 in 32 s since launch");
  r.sample(36_000, 700);
  const later = r.at(36_000, 700, 1_000);
  assert.equal(later.rate, 100);
  assert.ok(later.eta > 0 && later.eta < 5, `eta ${later.eta}`);
});

test("time while cancelled is not counted after a resume", () => {
  const r = new ProgressRate({ windowMs: 30_000, minEtaMs: 0 });
  r.start(0, 0);
  r.sample(1_000, 100);
  r.sample(11_000, 1_100);
  r.stop(); // cancelled at 11 s
  assert.deepEqual(r.at(12_000, 1_100, 5_000), { rate: 0, eta: 0 });
  r.start(300_000, 1_100); // resumed 5 minutes later
  r.sample(301_000, 1_200);
  r.sample(311_000, 2_200);
  const after = r.at(311_000, 2_200, 5_000);
  assert.equal(after.rate, 100, "the paused minutes do not dilute the rate");
});

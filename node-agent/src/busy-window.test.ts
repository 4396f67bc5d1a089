import { test } from "node:test";
import assert from "node:assert/strict";
import { BusyWindow } from "./busy-window.js";

test("the busy ratio is the share of the window with a request in flight, overlapping requests counted once", () => {
  const w = new BusyWindow(10_000, 0);
  assert.equal(w.ratio(0), 0);
  w.update(1, 1_000); // sent
  w.update(2, 1_500); // a second request queued behind it
  w.update(1, 2_000);
  w.update(0, 3_000); // both answered: busy 1..3 s
  assert.equal(w.ratio(4_000), 0.5, "2 s busy of the 4 s since the window began");
  w.update(1, 8_000); // busy again from 8 s, still running
  assert.equal(w.ratio(10_000), 0.4, "(2 + 2) s of 10 s");
  assert.equal(w.ratio(15_000), 0.7, "the window slides: 5..15 s holds 8..15 s busy");
  w.update(0, 15_000);
  assert.equal(w.ratio(30_000), 0, "nothing busy in the last 10 s");
});

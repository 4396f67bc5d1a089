import { test } from "node:test";
import assert from "node:assert/strict";
import { alertSignals, metricNames, substituteVariables, labelValuesSelector } from "./promql.js";

test("metric names are read from expressions without functions, labels, keywords or durations", () => {
  const e =
    'histogram_quantile(0.99, sum by (le, instance) (rate(factsweep_engine_batch_seconds_bucket{job="factsweep-agent", instance=~"$instance"}[$__rate_interval]))) / on (instance) group_left up';
  assert.deepEqual([...metricNames(e)].sort(), ["factsweep_engine_batch_seconds_bucket", "up"]);
});

test("an alert's signals are the operands it compares, without the or-vector(0) fallback", () => {
  assert.deepEqual(alertSignals('up{job="a"} == 0'), ['up{job="a"}']);
  assert.deepEqual(alertSignals("(sum(rate(x[10m])) or vector(0)) == 0\nand on() sum(q) > 0"), ["sum(rate(x[10m]))", "sum(q)"]);
  assert.deepEqual(alertSignals("sum by (i) (a) / (sum by (i) (b)) > 0.5 and on (i) sum by (i) (resets(c[10m])) > 0"), [
    "sum by (i) (a) / (sum by (i) (b))",
    "sum by (i) (resets(c[10m]))",
  ]);
});

test("Grafana variables become values Prometheus accepts", () => {
  assert.equal(substituteVariables('rate(x{s=~"$sweep"}[$__rate_interval])', { rateInterval: "20s" }), 'rate(x{s=~".*"}[20s])');
  assert.equal(labelValuesSelector("label_values(factsweep_sweep_progress_ratio, sweep)"), "factsweep_sweep_progress_ratio");
});

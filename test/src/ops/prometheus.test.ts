import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse, stringify } from "yaml";
import { loadRules } from "./expressions.js";
import { prometheusDir } from "./paths.js";
import { missing, run } from "./tools.js";

const promtool = missing("promtool");

test("promtool accepts the compose/bare-metal scrape config and the rule files it loads", { skip: promtool }, async () => {
  const r = await run("promtool", ["check", "config", join(prometheusDir, "prometheus.yml")]);
  assert.equal(r.exitCode, 0, r.output);
  assert.match(r.output, /SUCCESS: 1 rule files found/);
});

test("promtool accepts the Kubernetes scrape config with its pod discovery swapped for a static target", { skip: promtool }, async () => {
  // Debian's Prometheus is built without Kubernetes discovery, so promtool cannot parse
  // kubernetes_sd_configs; everything else (relabelling, rule files) is checked for real.
  const config = parse(readFileSync(join(prometheusDir, "prometheus-kubernetes.yml"), "utf8")) as { scrape_configs: Array<Record<string, unknown>> };
  const job = config.scrape_configs[0]!;
  assert.deepEqual(job.kubernetes_sd_configs, [{ role: "pod" }]);
  const relabel = job.relabel_configs as Array<{ source_labels?: string[]; action?: string; regex?: string }>;
  assert.ok(
    relabel.some((r) => r.source_labels?.[0] === "__meta_kubernetes_pod_annotation_prometheus_io_scrape" && r.action === "keep" && r.regex === "true"),
    "keeps pods annotated prometheus.io/scrape=true",
  );
  delete job.kubernetes_sd_configs;
  job.static_configs = [{ targets: ["pod:9464"] }];
  const dir = mkdtempSync(join(tmpdir(), "factsweep-promk8s-"));
  try {
    cpSync(join(prometheusDir, "rules"), join(dir, "rules"), { recursive: true });
    writeFileSync(join(dir, "prometheus.yml"), stringify(config));
    const r = await run("promtool", ["check", "config", join(dir, "prometheus.yml")]);
    assert.equal(r.exitCode, 0, r.output);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("promtool check rules accepts every rule file", { skip: promtool }, async () => {
  const dir = join(prometheusDir, "rules");
  const files = readdirSync(dir).map((f) => join(dir, f));
  const r = await run("promtool", ["check", "rules", ...files]);
  assert.equal(r.exitCode, 0, r.output);
});

test("each alert fires on the situation it names and stays quiet on a healthy cluster (promtool rule unit tests)", { skip: promtool }, async () => {
  const r = await run("promtool", ["test", "rules", "tests/alerts.test.yml"], prometheusDir);
  assert.equal(r.exitCode, 0, r.output);
  // Every alert of the rule files has at least one unit test.
  const tested = readFileSync(join(prometheusDir, "tests/alerts.test.yml"), "utf8");
  const untested = [...loadRules().values()]
    .flat()
    .filter((x) => x.alert && !tested.includes(`alertname: ${x.alert}`))
    .map((x) => x.alert);
  assert.deepEqual(untested, []);
});

test("the alerts the brief asks for exist: agent down, throughput stalled, failed shards rising, cache thrashing", () => {
  const alerts = new Set([...loadRules().values()].flat().map((r) => r.alert));
  for (const a of ["FactsweepAgentDown", "FactsweepThroughputStalled", "FactsweepFailedShardsRising", "FactsweepCacheThrashing"]) assert.ok(alerts.has(a), a);
  for (const r of [...loadRules().values()].flat()) {
    assert.ok(r.labels?.severity, `${r.alert}: severity label`);
    assert.ok(r.annotations?.summary && r.annotations.description, `${r.alert}: summary and description`);
  }
});

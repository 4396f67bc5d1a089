import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import { DEFAULT_METRICS, PROJECT_METRICS, loadDashboards, shippedExpressions } from "./expressions.js";
import { familyOf, metricNames } from "./promql.js";
import { dashboardsDir, deployDir } from "./paths.js";
import { run } from "./tools.js";

const provisionedUid = (): string => {
  const doc = parse(readFileSync(join(dashboardsDir, "grafana/provisioning/datasources/prometheus.yaml"), "utf8")) as {
    datasources: Array<{ uid: string; type: string }>;
  };
  assert.equal(doc.datasources.length, 1, "one provisioned datasource");
  assert.equal(doc.datasources[0]!.type, "prometheus");
  return doc.datasources[0]!.uid;
};

test("the committed dashboards are what dashboards/generate.mjs produces", async () => {
  const r = await run(process.execPath, [join(dashboardsDir, "generate.mjs"), "--check"]);
  assert.equal(r.exitCode, 0, r.output);
});

test("the three dashboards exist with unique uids and the factsweep tag", () => {
  const ds = loadDashboards();
  assert.deepEqual([...ds.keys()], ["agents-gpus.json", "coordinator.json", "sweep-overview.json"]);
  const uids = [...ds.values()].map((d) => d.uid);
  assert.equal(new Set(uids).size, uids.length);
});

test("every panel and target queries the provisioned Prometheus through the DS_PROMETHEUS variable", () => {
  const uid = provisionedUid();
  for (const [file, d] of loadDashboards()) {
    const v = d.templating.list.find((x) => x.name === "DS_PROMETHEUS");
    assert.ok(v, `${file}: no DS_PROMETHEUS variable`);
    assert.equal(v.type, "datasource", `${file}: DS_PROMETHEUS must be a datasource variable`);
    assert.equal(v.current?.value, uid, `${file}: DS_PROMETHEUS defaults to ${String(v.current?.value)}, the provisioned uid is ${uid}`);
    for (const p of d.panels) {
      assert.deepEqual(p.datasource, { type: "prometheus", uid: "${DS_PROMETHEUS}" }, `${file} › ${p.title}: datasource`);
      for (const t of p.targets ?? []) assert.deepEqual(t.datasource, p.datasource, `${file} › ${p.title} › ${t.refId}: target datasource`);
    }
    for (const q of d.templating.list.filter((x) => x.type === "query")) assert.equal(q.datasource?.uid, "${DS_PROMETHEUS}", `${file}: variable ${q.name}`);
  }
});

test("every panel has at least one target with a PromQL expression, unique ids and a place on the 24-column grid", () => {
  for (const [file, d] of loadDashboards()) {
    const ids = d.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, `${file}: duplicate panel ids`);
    for (const p of d.panels) {
      assert.ok((p.targets ?? []).length > 0, `${file} › ${p.title}: no target`);
      const refIds = p.targets!.map((t) => t.refId);
      assert.equal(new Set(refIds).size, refIds.length, `${file} › ${p.title}: duplicate refIds`);
      for (const t of p.targets!) assert.ok(t.expr && t.expr.trim().length > 0, `${file} › ${p.title} › ${t.refId}: empty expr`);
      assert.ok(p.gridPos.x >= 0 && p.gridPos.x + p.gridPos.w <= 24 && p.gridPos.h > 0, `${file} › ${p.title}: gridPos ${JSON.stringify(p.gridPos)}`);
    }
  }
});

test("every metric an expression uses is one the system exports (shared METRICS or a default metric)", () => {
  const known = new Set([...PROJECT_METRICS, ...DEFAULT_METRICS]);
  const unknown: string[] = [];
  for (const e of shippedExpressions()) {
    for (const name of metricNames(e.expr)) if (!known.has(familyOf(name, known))) unknown.push(`${e.origin}: ${name}`);
  }
  assert.deepEqual(unknown, []);
});

test("every metric of shared METRICS is shown on a dashboard", () => {
  const used = new Set<string>();
  for (const e of shippedExpressions().filter((x) => x.kind === "panel")) for (const n of metricNames(e.expr)) used.add(familyOf(n, PROJECT_METRICS));
  assert.deepEqual(
    [...PROJECT_METRICS].filter((m) => !used.has(m)),
    [],
  );
});

test("Grafana's provisioning points at the folder docker compose mounts the dashboards into", () => {
  const provider = parse(readFileSync(join(dashboardsDir, "grafana/provisioning/dashboards/factsweep.yaml"), "utf8")) as {
    providers: Array<{ options: { path: string } }>;
  };
  const compose = parse(readFileSync(join(deployDir, "docker-compose.yml"), "utf8")) as {
    services: Record<string, { volumes?: string[]; environment?: Record<string, string> }>;
  };
  const grafana = compose.services.grafana!;
  const mount = (grafana.volumes ?? []).find((v) => v.startsWith("../dashboards/grafana/dashboards:"));
  assert.ok(mount, "compose mounts dashboards/grafana/dashboards into grafana");
  assert.equal(mount.split(":")[1], provider.providers[0]!.options.path);
  assert.ok(grafana.environment?.PROMETHEUS_URL, "compose sets PROMETHEUS_URL, read by the datasource provisioning");
});

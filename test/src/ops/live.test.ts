import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { METRICS } from "@factsweep/shared";
import { join } from "node:path";
import { shippedExpressions, PROJECT_METRICS, DEFAULT_METRICS, SYNTHETIC_METRICS } from "./expressions.js";
import { alertSignals, familyOf, metricNames, substituteVariables } from "./promql.js";
import { GOLDEN_DIR, familiesOf, query, startLiveCluster, type LiveCluster } from "./live-cluster.js";
import { missing } from "./tools.js";

const skip =
  missing("prometheus") ||
  missing("nats-server") ||
  (GOLDEN_DIR ? false : "the golden models (shared/golden) are not on this machine; set FACTSWEEP_SHARED_DIR");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A trace over the golden tiny Mamba long enough to be scraped while it runs (~1,400 cells). */
function spec(goldenDir: string): string {
  const prompts = Array.from({ length: 20 }, (_, i) => `    - { input_ids: [${11 + i}, 25, 37, ${40 + i}, 52, 61], subject: [1, 3] }`);
  return [
    "name: ops live",
    "kind: trace",
    "model: { id: mamba-tiny, path: " + join(goldenDir, "mamba-tiny") + " }",
    "dataset:",
    "  prompts:",
    ...prompts,
    "corruption: { kind: noise, samples: 2, seed: 3 }",
    "grid:",
    "  - { site: residual, window: 1 }",
    "  - { site: mixer, window: 1 }",
    "  - { site: ssm, window: 3 }",
    "layers: all",
    "tokens: all",
    "shard_cells: 12",
    "max_attempts: 3",
  ].join("\n");
}

/** Polls `expr` until `ok` holds for its result or `ms` pass; returns the last result. */
async function until(prom: string, expr: string, ok: (r: Awaited<ReturnType<typeof query>>) => boolean, ms: number) {
  const end = Date.now() + ms;
  let r = await query(prom, expr);
  while (!ok(r) && Date.now() < end) {
    await sleep(500);
    r = await query(prom, expr);
  }
  return r;
}

test(
  "every dashboard and alert expression returns data from Prometheus scraping a live sweep; a killed agent raises FactsweepAgentDown",
  { skip, timeout: 240_000 },
  async (t) => {
    const cluster: LiveCluster = await startLiveCluster({ agents: 2, goldenDir: GOLDEN_DIR! });
    const logs = () => [cluster.coordinator, ...cluster.agents, cluster.prometheus].map((p) => `--- ${p.name}\n${p.log().slice(-2000)}`).join("\n");
    try {
      const prom = cluster.prometheus.url;
      // Every target is scraped before the sweep starts, so counters are seen from their start.
      const up = await until(prom, "sum(up)", (r) => r.data?.result[0]?.value[1] === "4", 30_000);
      assert.equal(up.data?.result[0]?.value[1], "4", `all 4 targets up (coordinator, 2 agents, prometheus)\n${logs()}`);

      writeFileSync(join(cluster.dir, "spec.yaml"), spec(GOLDEN_DIR!));
      const launched = await cluster.sweepctl(["launch", "spec.yaml", "--quiet"]);
      assert.equal(launched.exitCode, 0, `sweepctl launch: ${launched.output}\n${logs()}`);
      const sweepId = launched.output.trim().split("\n")[0]!;
      // The sweep is done; a few more scrapes so every counter has samples on both sides of its rise.
      const done = await until(prom, `factsweep_sweep_progress_ratio{sweep="${sweepId}"} == 1`, (r) => (r.data?.result.length ?? 0) > 0, 30_000);
      assert.equal(done.data?.result.length, 1, `Prometheus saw sweep ${sweepId} complete\n${launched.output}`);
      await sleep(3000);

      // The live /metrics declare every metric the expressions use.
      const pages = await Promise.all(
        [cluster.coordinator.metrics, ...cluster.agents.map((a) => a.metrics)].map(async (u) => familiesOf(await (await fetch(u)).text())),
      );
      const declared = new Set(pages.flatMap((p) => [...p.declared]));
      const observed = new Set(pages.flatMap((p) => [...p.observed]));
      const known = new Set([...PROJECT_METRICS, ...DEFAULT_METRICS]);
      const expressions = shippedExpressions();
      const undeclared = new Set<string>();
      for (const e of expressions)
        for (const n of metricNames(e.expr)) if (!SYNTHETIC_METRICS.has(n) && !declared.has(familyOf(n, known))) undeclared.add(`${e.origin}: ${n}`);
      assert.deepEqual([...undeclared], [], "metrics used by dashboards or alerts but absent from the live /metrics");

      // Evaluate everything: panels and variables must return series; alerts must be well-formed
      // and each signal they compare must return series (they need not fire on a healthy cluster).
      const failures: string[] = [];
      const unobservedOnly: string[] = [];
      let evaluated = 0;
      for (const e of expressions) {
        const exprs = e.kind === "alert" ? [e.expr, ...alertSignals(e.expr)] : [e.expr];
        for (const [i, raw] of exprs.entries()) {
          const expr = substituteVariables(raw, { rateInterval: "1m" });
          const r = await query(prom, expr);
          evaluated++;
          if (r.status !== "success" || !r.data || !Array.isArray(r.data.result)) {
            failures.push(`${e.origin}: ${r.error ?? r.status} for ${expr}`);
            continue;
          }
          const needsData = !(e.kind === "alert" && i === 0);
          if (!needsData || r.data.result.length > 0) continue;
          // Only the GPU memory gauge, declared but never set by CPU workers, may leave a series missing.
          const unset = [...metricNames(expr)].map((n) => familyOf(n, known)).filter((n) => declared.has(n) && !observed.has(n));
          if (unset.length > 0 && unset.every((n) => n === METRICS.gpuMemoryBytes)) unobservedOnly.push(`${e.origin}`);
          else failures.push(`${e.origin}: no data for ${expr}${unset.length ? ` (never set in this run: ${unset.join(", ")})` : ""}`);
        }
      }
      for (const u of unobservedOnly) t.diagnostic(`no data on CPU agents (no GPU memory to report): ${u}`);
      t.diagnostic(`${evaluated} expressions evaluated over ${expressions.length} shipped ones`);
      assert.deepEqual(failures, [], `expressions without data\n${logs()}`);

      // Prometheus loaded every alert rule of the project and evaluates each without error.
      const rules = (await (await fetch(`${prom}/api/v1/rules`)).json()) as {
        data: { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> };
      };
      const loaded = rules.data.groups.flatMap((g) => g.rules);
      const shippedAlerts = expressions.filter((e) => e.kind === "alert").map((e) => e.origin.split(" › ")[1]);
      assert.deepEqual(loaded.map((r) => r.name).sort(), [...shippedAlerts].sort());
      assert.deepEqual(
        loaded.filter((r) => r.health !== "ok").map((r) => `${r.name}: ${r.health} ${r.lastError ?? ""}`),
        [],
      );

      // An agent that dies is reported by the FactsweepAgentDown expression, for that agent only.
      const victim = cluster.agents[1]!;
      victim.child.kill("SIGKILL");
      const downExpr = expressions.find((e) => e.origin.endsWith("FactsweepAgentDown"))!.expr;
      const down = await until(prom, downExpr, (r) => (r.data?.result.length ?? 0) > 0, 20_000);
      assert.deepEqual(
        down.data?.result.map((s) => s.metric.instance),
        [victim.instance],
        `FactsweepAgentDown for the killed agent\n${logs()}`,
      );
    } finally {
      await cluster.stop();
    }
  },
);

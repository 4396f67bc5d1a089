import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { parse, stringify } from "yaml";
import { freePort } from "@factsweep/testing";
import { waitHttp } from "./live-cluster.js";
import { prometheusDir } from "./paths.js";
import { missing } from "./tools.js";

/** A pod as Kubernetes discovery describes it: the __meta_kubernetes_* labels the relabelling reads. */
function pod(name: string, ip: string, opts: { scrape?: string; port?: string; component?: string; partOf?: string; phase?: string }) {
  const labels: Record<string, string> = {
    __meta_kubernetes_namespace: "factsweep",
    __meta_kubernetes_pod_name: name,
    __meta_kubernetes_pod_node_name: "gpu-node-1",
    __meta_kubernetes_pod_phase: opts.phase ?? "Running",
    __meta_kubernetes_pod_annotation_prometheus_io_path: "/metrics",
  };
  if (opts.scrape) labels.__meta_kubernetes_pod_annotation_prometheus_io_scrape = opts.scrape;
  if (opts.port) labels.__meta_kubernetes_pod_annotation_prometheus_io_port = opts.port;
  if (opts.component) labels.__meta_kubernetes_pod_label_app_kubernetes_io_component = opts.component;
  if (opts.partOf) labels.__meta_kubernetes_pod_label_app_kubernetes_io_part_of = opts.partOf;
  // Pod discovery gives one target per container port; the annotation picks the metrics port.
  // Loopback addresses: the scrapes this test causes go nowhere but this machine.
  return { targets: [`${ip}:7070`], labels };
}

test(
  "the Kubernetes scrape config keeps running annotated factsweep pods, scrapes the annotated port and names the job after the component",
  { skip: missing("prometheus") },
  async () => {
    // Debian's Prometheus has no Kubernetes discovery: the same __meta_kubernetes_* labels come
    // from a file instead, so the relabelling runs for real in Prometheus.
    const dir = mkdtempSync(join(tmpdir(), "factsweep-k8s-sd-"));
    const config = parse(readFileSync(join(prometheusDir, "prometheus-kubernetes.yml"), "utf8")) as { scrape_configs: Array<Record<string, unknown>> };
    delete config.scrape_configs[0]!.kubernetes_sd_configs;
    config.scrape_configs[0]!.file_sd_configs = [{ files: [join(dir, "pods.json")] }];
    writeFileSync(join(dir, "prometheus.yml"), stringify(config));
    cpSync(join(prometheusDir, "rules"), join(dir, "rules"), { recursive: true });
    writeFileSync(
      join(dir, "pods.json"),
      JSON.stringify([
        pod("factsweep-coordinator-7d9f", "127.0.10.10", { scrape: "true", port: "9464", component: "coordinator", partOf: "factsweep" }),
        pod("factsweep-agent-x2k4", "127.0.10.11", { scrape: "true", port: "9470", component: "agent", partOf: "factsweep" }),
        pod("factsweep-agent-pending", "127.0.10.12", { scrape: "true", port: "9470", component: "agent", partOf: "factsweep", phase: "Pending" }),
        pod("unannotated", "127.0.10.13", { component: "agent", partOf: "factsweep" }),
        pod("someone-else", "127.0.10.14", { scrape: "true", port: "8080", component: "web", partOf: "shop" }),
      ]),
    );
    const port = await freePort();
    const prom = execa(
      "prometheus",
      [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "tsdb")}`, `--web.listen-address=127.0.0.1:${port}`],
      {
        reject: false,
        all: true,
        stdin: "ignore",
      },
    );
    try {
      await waitHttp(`http://127.0.0.1:${port}/-/ready`, 30_000, "prometheus");
      type Targets = { data: { activeTargets: Array<{ labels: Record<string, string>; scrapeUrl: string }>; droppedTargets: unknown[] } };
      let t: Targets | undefined;
      for (let i = 0; i < 60; i++) {
        t = (await (await fetch(`http://127.0.0.1:${port}/api/v1/targets`)).json()) as Targets;
        if (t.data.activeTargets.length + t.data.droppedTargets.length >= 5) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      const active = t!.data.activeTargets.map((x) => ({
        job: x.labels.job,
        pod: x.labels.pod,
        namespace: x.labels.namespace,
        node: x.labels.node,
        url: x.scrapeUrl,
      }));
      active.sort((a, b) => a.pod!.localeCompare(b.pod!));
      assert.deepEqual(active, [
        { job: "factsweep-agent", pod: "factsweep-agent-x2k4", namespace: "factsweep", node: "gpu-node-1", url: "http://127.0.10.11:9470/metrics" },
        { job: "factsweep-coordinator", pod: "factsweep-coordinator-7d9f", namespace: "factsweep", node: "gpu-node-1", url: "http://127.0.10.10:9464/metrics" },
      ]);
      assert.equal(t!.data.droppedTargets.length, 3, "pending, unannotated and foreign pods are dropped");
    } finally {
      prom.kill("SIGTERM");
      await prom;
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

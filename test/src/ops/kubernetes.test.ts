import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { parse } from "yaml";
import { parseSweepSpec } from "@factsweep/planning";
import { kustomizations, objectKey, parseRendered, renderKustomization, validateObjects, type K8sObject } from "./kustomize.js";
import { kubernetesDir } from "./paths.js";
import { run, which } from "./tools.js";

const overlays = kustomizations(kubernetesDir).filter((d) => !d.endsWith("base"));
const podSpecOf = (o: K8sObject) => (o as any).spec.template.spec;
const find = (objs: K8sObject[], kind: string, name: string) => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  assert.ok(o, `${kind}/${name} is rendered`);
  return o;
};

test("the base and every overlay render and each object matches its Kubernetes schema", async () => {
  assert.deepEqual(
    overlays.map((d) => basename(d)),
    ["dev", "production"],
  );
  for (const dir of kustomizations(kubernetesDir)) {
    const objects = renderKustomization(dir);
    assert.ok(objects.length >= 6, `${dir}: ${objects.length} objects`);
    assert.deepEqual(await validateObjects(objects), [], dir);
  }
});

test("the schema check reports a wrong type with the field's path", async () => {
  const ds = structuredClone(find(renderKustomization(join(kubernetesDir, "base")), "DaemonSet", "factsweep-agent"));
  podSpecOf(ds).containers[0].ports[0].containerPort = "http";
  const problems = await validateObjects([ds]);
  assert.equal(problems.length, 1);
  assert.match(problems[0]!.message, /containers\/0\/ports\/0\/containerPort must be integer/);
});

test(
  "the test renderer agrees with kubectl kustomize",
  { skip: which("kubectl") ? false : "kubectl is not installed (not in Debian's set CI installs); the renderer alone is used" },
  async () => {
    for (const dir of kustomizations(kubernetesDir)) {
      const r = await run("kubectl", ["kustomize", dir]);
      assert.equal(r.exitCode, 0, r.output);
      // kustomize wraps long base64 Secret values; the decoded bytes are what count.
      const unwrap = (o: K8sObject) =>
        o.kind === "Secret"
          ? { ...o, data: Object.fromEntries(Object.entries((o.data ?? {}) as Record<string, string>).map(([k, v]) => [k, v.replace(/\s/g, "")])) }
          : o;
      const byKey = (objs: K8sObject[]) => Object.fromEntries(objs.map((o) => [objectKey(o), unwrap(o)]));
      assert.deepEqual(byKey(renderKustomization(dir)), byKey(parseRendered(r.output)), dir);
    }
  },
);

test("production agents take a whole GPU node of the GPU pool: nvidia.com/gpu requested, node selector and toleration", () => {
  const objs = renderKustomization(join(kubernetesDir, "overlays", "production"));
  const spec = podSpecOf(find(objs, "DaemonSet", "factsweep-agent"));
  const res = spec.containers[0].resources;
  assert.equal(res.limits["nvidia.com/gpu"], "8");
  assert.equal(res.requests["nvidia.com/gpu"], "8");
  assert.deepEqual(spec.nodeSelector, { "factsweep.io/gpu-pool": "true" });
  assert.ok(spec.tolerations.some((t: any) => t.key === "nvidia.com/gpu" && t.effect === "NoSchedule"));
  for (const c of [...spec.containers, ...podSpecOf(find(objs, "Deployment", "factsweep-coordinator")).containers]) {
    assert.match(c.image, /^registry\.example\.com\/factsweep\/(agent|coordinator):0\.1\.0$/);
  }
});

test("pods carry the scrape annotations and labels Prometheus' pod discovery keeps, on a port the container serves", () => {
  for (const dir of kustomizations(kubernetesDir)) {
    for (const o of renderKustomization(dir).filter((x) => x.kind === "Deployment" || x.kind === "DaemonSet")) {
      const tpl = (o as any).spec.template;
      const ann = tpl.metadata.annotations;
      assert.equal(ann["prometheus.io/scrape"], "true", `${objectKey(o)}`);
      assert.equal(ann["prometheus.io/path"], "/metrics");
      const ports = tpl.spec.containers[0].ports.map((p: any) => String(p.containerPort));
      assert.ok(ports.includes(ann["prometheus.io/port"]), `${objectKey(o)}: port ${ann["prometheus.io/port"]} not in ${ports}`);
      assert.equal(tpl.metadata.labels["app.kubernetes.io/part-of"], "factsweep");
      assert.match(tpl.metadata.labels["app.kubernetes.io/component"], /^(coordinator|agent)$/, "job becomes factsweep-<component>");
      const http = tpl.spec.containers[0].args.find((a: string) => a.startsWith("--http-port="));
      assert.equal(http, `--http-port=${ann["prometheus.io/port"]}`, `${objectKey(o)}: /metrics is served on the annotated port`);
    }
  }
});

test("every ConfigMap, Secret and volume claim a pod uses is in each overlay's rendering", () => {
  for (const dir of overlays) {
    const objs = renderKustomization(dir);
    const have = new Set(objs.map((o) => `${o.kind}/${o.metadata.name}`));
    for (const o of objs.filter((x) => x.kind === "Deployment" || x.kind === "DaemonSet")) {
      const spec = podSpecOf(o);
      const needs: string[] = [];
      for (const v of spec.volumes ?? []) {
        if (v.secret) needs.push(`Secret/${v.secret.secretName}`);
        if (v.persistentVolumeClaim) needs.push(`PersistentVolumeClaim/${v.persistentVolumeClaim.claimName}`);
        if (v.configMap) needs.push(`ConfigMap/${v.configMap.name}`);
      }
      for (const c of spec.containers) {
        for (const e of c.envFrom ?? []) if (e.configMapRef) needs.push(`ConfigMap/${e.configMapRef.name}`);
        for (const e of c.env ?? []) if (e.valueFrom?.secretKeyRef) needs.push(`Secret/${e.valueFrom.secretKeyRef.name}`);
      }
      assert.deepEqual(
        needs.filter((n) => !have.has(n)),
        [],
        `${dir}: ${objectKey(o)}`,
      );
    }
    // The coordinator Service selects the coordinator pods.
    const svc = find(objs, "Service", "factsweep-coordinator") as any;
    const labels = (find(objs, "Deployment", "factsweep-coordinator") as any).spec.template.metadata.labels;
    for (const [k, v] of Object.entries(svc.spec.selector)) assert.equal(labels[k], v);
  }
});

test("the NATS Helm values run 3 JetStream servers on persistent volumes, and the production overlay holds the credentials file clients use", () => {
  const values = parse(readFileSync(join(kubernetesDir, "nats", "values.yaml"), "utf8")) as any;
  assert.equal(values.config.cluster.enabled, true);
  assert.equal(values.config.cluster.replicas, 3);
  assert.equal(values.config.jetstream.enabled, true);
  assert.equal(values.config.jetstream.fileStore.enabled, true);
  assert.equal(values.config.jetstream.fileStore.pvc.enabled, true);
  // The included resolver config is mounted where the include points (relative to /etc/nats-config).
  const mount = values.container.patch[0].value.mountPath as string;
  assert.equal(join("/etc/nats-config", values.config.merge.$include), join(mount, "resolver.conf"));
  const objs = renderKustomization(join(kubernetesDir, "overlays", "production"));
  // One NATS user per role: the coordinator's credentials and the agents' (publish results only).
  for (const [kind, secret] of [
    ["Deployment", "factsweep-nats-credentials"],
    ["DaemonSet", "factsweep-nats-agent-credentials"],
  ] as const) {
    assert.deepEqual(Object.keys((find(objs, "Secret", secret) as any).data), ["nats.creds"]);
    const o = objs.find((x) => x.kind === kind)!;
    const pod = podSpecOf(o);
    const c = pod.containers[0];
    const mountPath = c.volumeMounts.find((m: any) => m.name === "nats-credentials").mountPath;
    assert.equal(pod.volumes.find((v: any) => v.name === "nats-credentials").secret.secretName, secret, `${objectKey(o)} mounts its own role's credentials`);
    assert.ok(c.args.includes(`--nats-creds=${mountPath}/nats.creds`), `${objectKey(o)} passes the mounted credentials file`);
    assert.ok(c.args.includes("--nats-url=tls://$(NATS_HOST)"), `${objectKey(o)} reaches NATS over TLS`);
  }
  assert.equal(values.config.nats.tls.enabled, true);
  assert.equal(find(objs, "Secret", values.config.nats.tls.secretName).type, "kubernetes.io/tls");
  assert.ok(podSpecOf(find(objs, "Deployment", "factsweep-coordinator")).containers[0].args.includes("--nats-replicas=3"), "3 replicas on the 3 NATS nodes");
});

test("the sweep specs shipped in the factsweep-sweeps ConfigMap are valid and read checkpoints from the model root", () => {
  const objs = renderKustomization(join(kubernetesDir, "base"));
  const config = (find(objs, "ConfigMap", "factsweep-config") as any).data;
  const sweeps = (find(objs, "ConfigMap", "factsweep-sweeps") as any).data as Record<string, string>;
  const coord = podSpecOf(find(objs, "Deployment", "factsweep-coordinator"));
  const sweepsVolume = coord.volumes.find((v: any) => v.configMap?.name === "factsweep-sweeps").name;
  assert.equal(coord.containers[0].volumeMounts.find((m: any) => m.name === sweepsVolume).mountPath, config.SWEEP_ROOT);
  assert.ok(Object.keys(sweeps).length > 0);
  for (const [file, text] of Object.entries(sweeps)) {
    const spec = parseSweepSpec(text, { baseDir: config.SWEEP_ROOT });
    assert.ok(spec.model.path.startsWith(`${config.MODEL_ROOT}/`), `${file}: model.path ${spec.model.path} is under ${config.MODEL_ROOT}`);
  }
});

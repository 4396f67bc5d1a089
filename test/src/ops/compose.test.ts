import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parse } from "yaml";
import { deployDir, prometheusDir } from "./paths.js";
import { missing, run } from "./tools.js";

const composeFile = join(deployDir, "docker-compose.yml");
type Service = {
  command?: string[];
  volumes?: Array<string | { source: string }>;
  deploy?: any;
  environment?: Record<string, string>;
  build?: { dockerfile: string };
};
const compose = () => parse(readFileSync(composeFile, "utf8")) as { services: Record<string, Service>; volumes: Record<string, unknown> };

test("docker-compose validates deploy/docker-compose.yml against the compose schema", { skip: missing("docker-compose") }, async () => {
  const r = await run("docker-compose", ["-f", composeFile, "config", "-q"]);
  assert.equal(r.exitCode, 0, r.output);
});

test("compose runs NATS with JetStream on a named volume, the coordinator, GPU agents, Prometheus and Grafana", () => {
  const { services, volumes } = compose();
  assert.deepEqual(Object.keys(services).sort(), ["agent", "coordinator", "grafana", "nats", "prometheus"]);
  const nats = services.nats!.command!.join(" ");
  assert.match(nats, /exec nats-server --config \/etc\/factsweep\/nats\/compose\.conf --jetstream /);
  const store = /--store_dir (\S+)/.exec(nats)?.[1];
  assert.ok(services.nats!.volumes!.includes(`nats-data:${store}`), "JetStream's store_dir is on the nats-data volume");
  assert.ok(services.nats!.volumes!.includes("./nats:/etc/factsweep/nats:ro"), "the users-per-role config is mounted");
  // Each client as its own NATS user, its password a compose secret.
  assert.ok(services.coordinator!.command!.includes("--nats-user=coordinator"));
  assert.ok(services.coordinator!.command!.includes("--nats-pass-file=/run/secrets/factsweep_nats_coordinator_pass"));
  const agent = services.agent!.command!;
  assert.equal(agent[agent.indexOf("--nats-user") + 1], "agent");
  assert.equal(agent[agent.indexOf("--nats-pass-file") + 1], "/run/secrets/factsweep_nats_agent_pass");
  assert.ok("nats-data" in volumes);
  const devices = services.agent!.deploy.resources.reservations.devices;
  assert.deepEqual(devices, [{ driver: "nvidia", count: "all", capabilities: ["gpu"] }]);
});

test("every file compose builds from or mounts exists in the repository", () => {
  for (const [name, s] of Object.entries(compose().services)) {
    if (s.build) assert.ok(existsSync(resolve(deployDir, "..", s.build.dockerfile)), `${name}: ${s.build.dockerfile}`);
    for (const v of s.volumes ?? []) {
      if (typeof v !== "string" || !(v.startsWith("../") || v.startsWith("./"))) continue;
      const src = v.split(":")[0]!;
      assert.ok(existsSync(resolve(deployDir, src)), `${name}: mount source ${src}`);
    }
  }
});

test("Prometheus scrapes the ports the coordinator and agents serve /metrics on", () => {
  const { services } = compose();
  const flag = (cmd: string[] | undefined, f: string) => cmd?.[cmd.indexOf(f) + 1];
  const scrape = parse(readFileSync(join(prometheusDir, "prometheus.yml"), "utf8")) as { scrape_configs: any[] };
  const coordJob = scrape.scrape_configs.find((j) => j.job_name === "factsweep-coordinator");
  const agentJob = scrape.scrape_configs.find((j) => j.job_name === "factsweep-agent");
  assert.deepEqual(coordJob.static_configs[0].targets, [`coordinator:${flag(services.coordinator!.command, "--http-port")}`]);
  assert.equal(String(agentJob.dns_sd_configs[0].port), flag(services.agent!.command, "--http-port"));
  assert.deepEqual(agentJob.dns_sd_configs[0].names, ["agent"], "finds every replica of the agent service");
});

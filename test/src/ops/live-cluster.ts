/**
 * A live factsweep on this machine for the operations tests: a real nats-server, the coordinator
 * and CPU node agents as separate processes (their compiled entry points, as deployed), and
 * Debian's Prometheus scraping them with the project's scrape config and alert rules.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa, type ResultPromise } from "execa";
import { parse, stringify } from "yaml";
import { freePort, startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { prometheusDir, repoRoot } from "./paths.js";

/** The shared data folder holding golden/ (DESIGN.md: ../shared beside the repository). */
export const GOLDEN_DIR: string | undefined = [process.env.FACTSWEEP_SHARED_DIR, join(repoRoot, "../shared"), join(repoRoot, "../../shared"), "/work/shared"]
  .filter((p): p is string => !!p)
  .map((p) => join(p, "golden"))
  .find((p) => existsSync(join(p, "mamba-tiny", "config.json")));

type Child = ResultPromise<{ reject: false; all: true; stdin: "ignore" }>;

/** One started process with its log kept for failure messages. */
export interface Proc {
  name: string;
  child: Child;
  /** Everything it printed so far. */
  log(): string;
}

function start(name: string, file: string, args: string[]): Proc {
  const child = execa(file, args, { reject: false, all: true, stdin: "ignore", cwd: repoRoot, forceKillAfterDelay: 5000 }) as Child;
  let out = "";
  child.all?.on("data", (d: Buffer) => {
    out += d.toString();
    if (out.length > 200_000) out = out.slice(-100_000);
  });
  return { name, child, log: () => out };
}

/** GET `url` until it answers 2xx or `ms` pass; the error names what never came up. */
export async function waitHttp(url: string, ms: number, what: string, log?: () => string): Promise<void> {
  const until = Date.now() + ms;
  let last = "";
  while (Date.now() < until) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (r.ok) return;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what} did not answer ${url} within ${ms} ms (last: ${last})${log ? `\n--- log ---\n${log().slice(-3000)}` : ""}`);
}

/** A running cluster; `stop()` ends every process it started. */
export interface LiveCluster {
  nats: NatsServerHandle;
  coordinator: Proc & { grpc: string; metrics: string };
  agents: Array<Proc & { metrics: string; instance: string }>;
  prometheus: Proc & { url: string };
  dir: string;
  /** Runs sweepctl against the coordinator. */
  sweepctl(args: string[]): Promise<{ exitCode: number; output: string }>;
  stop(): Promise<void>;
}

/**
 * The project's compose/bare-metal scrape config with the live targets in place of the Docker
 * names, a 1 s scrape and evaluation interval, and the rule files beside it.
 */
export function renderScrapeConfig(coordinatorTarget: string, agentTargets: string[], prometheusTarget: string): string {
  const config = parse(readFileSync(join(prometheusDir, "prometheus.yml"), "utf8")) as {
    global: Record<string, unknown>;
    scrape_configs: Array<Record<string, unknown> & { job_name: string }>;
  };
  config.global.scrape_interval = "1s";
  config.global.evaluation_interval = "1s";
  for (const job of config.scrape_configs) {
    const labels = (job.static_configs as Array<{ labels?: unknown }> | undefined)?.[0]?.labels;
    delete job.dns_sd_configs;
    const targets = job.job_name === "factsweep-coordinator" ? [coordinatorTarget] : job.job_name === "factsweep-agent" ? agentTargets : [prometheusTarget];
    job.static_configs = [{ targets, ...(labels ? { labels } : {}) }];
  }
  return stringify(config);
}

/** Starts nats-server, the coordinator, `agents` CPU agents and Prometheus. */
export async function startLiveCluster(opts: { agents: number; goldenDir: string }): Promise<LiveCluster> {
  const dir = mkdtempSync(join(tmpdir(), "factsweep-ops-live-"));
  const procs: Proc[] = [];
  let nats: NatsServerHandle | undefined;
  const stop = async () => {
    for (const p of procs.reverse()) {
      p.child.kill("SIGTERM");
      await p.child;
    }
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    nats = await startNatsServer();
    const [grpcPort, httpPort, promPort] = [await freePort(), await freePort(), await freePort()];
    const coordinator = Object.assign(
      start("coordinator", process.execPath, [
        join(repoRoot, "coordinator/dist/main.js"),
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        String(grpcPort),
        "--http-host",
        "127.0.0.1",
        "--http-port",
        String(httpPort),
        "--nats-url",
        nats.url,
        "--model-root",
        opts.goldenDir,
      ]),
      { grpc: `127.0.0.1:${grpcPort}`, metrics: `http://127.0.0.1:${httpPort}/metrics` },
    );
    procs.push(coordinator);
    await waitHttp(`http://127.0.0.1:${httpPort}/readyz`, 30_000, "the coordinator", coordinator.log);
    const agents: LiveCluster["agents"] = [];
    for (let i = 1; i <= opts.agents; i++) {
      const port = await freePort();
      const a = Object.assign(
        start(`agent-${i}`, process.execPath, [
          join(repoRoot, "node-agent/dist/main.js"),
          "--coordinator",
          coordinator.grpc,
          "--nats-url",
          nats.url,
          "--cpu",
          "--workers",
          "1",
          "--agent-id",
          `ops-live-${i}`,
          "--http-host",
          "127.0.0.1",
          "--http-port",
          String(port),
        ]),
        { metrics: `http://127.0.0.1:${port}/metrics`, instance: `127.0.0.1:${port}` },
      );
      procs.push(a);
      agents.push(a);
    }
    for (const a of agents) await waitHttp(a.metrics.replace("/metrics", "/readyz"), 60_000, a.name, a.log);
    cpSync(join(prometheusDir, "rules"), join(dir, "rules"), { recursive: true });
    writeFileSync(
      join(dir, "prometheus.yml"),
      renderScrapeConfig(
        `127.0.0.1:${httpPort}`,
        agents.map((a) => a.instance),
        `127.0.0.1:${promPort}`,
      ),
    );
    const prometheus = Object.assign(
      start("prometheus", "prometheus", [
        `--config.file=${join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(dir, "tsdb")}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
        "--storage.tsdb.retention.time=1h",
      ]),
      { url: `http://127.0.0.1:${promPort}` },
    );
    procs.push(prometheus);
    await waitHttp(`${prometheus.url}/-/ready`, 30_000, "prometheus", prometheus.log);
    return {
      nats,
      coordinator,
      agents,
      prometheus,
      dir,
      sweepctl: async (args) => {
        const r = await execa(process.execPath, [join(repoRoot, "sweepctl/dist/cli.js"), "--coordinator", coordinator.grpc, ...args], {
          reject: false,
          all: true,
          stdin: "ignore",
          cwd: dir,
        });
        return { exitCode: r.exitCode ?? -1, output: r.all ?? "" };
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Prometheus' answer to an instant query. */
export interface QueryResult {
  status: string;
  error?: string;
  data?: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> };
}

/** Evaluates `expr` now through /api/v1/query. */
export async function query(prometheusUrl: string, expr: string): Promise<QueryResult> {
  const r = await fetch(`${prometheusUrl}/api/v1/query`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ query: expr }),
  });
  return (await r.json()) as QueryResult;
}

/** Metric families a /metrics page declares (`# TYPE`) and those with at least one sample. */
export function familiesOf(text: string): { declared: Set<string>; observed: Set<string> } {
  const declared = new Set<string>();
  const observed = new Set<string>();
  for (const line of text.split("\n")) {
    const t = /^# TYPE (\S+) /.exec(line);
    if (t) declared.add(t[1]!);
    else if (line && !line.startsWith("#")) {
      const name = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line)?.[1];
      if (name) observed.add(name.replace(/_(bucket|sum|count)$/, (m) => (declared.has(name.slice(0, -m.length)) ? "" : m)));
    }
  }
  return { declared, observed };
}

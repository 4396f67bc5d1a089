#!/usr/bin/env node
/**
 * `factsweep-agent`: the node agent process. Run as `node node-agent/dist/main.js --coordinator
 * host:port --nats-url nats://host:4222 [--cpu --workers 2]`. Prints one line on stdout when ready:
 * `factsweep-agent ready agent_id=<id> http_port=<port> workers=<n> mode=<gpu|cpu>`.
 * Exit codes: 0 after a drain (SIGTERM, or the coordinator's Drain), 1 fatal error, 2 bad flags.
 */
import { readFileSync, existsSync } from "node:fs";
import { homedir, hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, InvalidArgumentError } from "commander";
import { execa } from "execa";
import { isLoopbackHost } from "@factsweep/shared";
import { Agent } from "./agent.js";
import { ConfigError } from "./errors.js";
import { discoverSlots } from "./gpu-discovery.js";
import { createLogger, type LogLevel } from "./log.js";

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

const int = (flag: string, min: number) => (value: string) => {
  if (!/^\d+$/.test(value.trim()) || Number(value) < min) {
    throw new InvalidArgumentError(`expected \`${flag}\` to be an integer >= ${min}, got \`${value}\``);
  }
  return Number(value);
};

const readFlagFile = (flag: string, path: string): Buffer => {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(flag, `cannot read ${flag} ${path}: ${(err as Error).message}; give the path of a readable file`, { cause: err });
  }
};

interface Flags {
  coordinator: string;
  natsUrl: string;
  workers: number;
  cpu?: boolean;
  agentId: string;
  httpPort: number;
  httpHost: string;
  token?: string;
  agentToken?: string;
  agentTokenFile?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecure?: boolean;
  natsCreds?: string;
  natsUser?: string;
  natsPassFile?: string;
  maxSlots?: number;
  batchSize?: number;
  kernelCache?: string;
  covDir?: string;
  prefetch: number;
  cacheBudgetBytes?: number;
  drainTimeout: number;
  enginePython?: string;
  engineRoot: string;
  logLevel: LogLevel;
}

/** Builds the commander program (exported for `--help` tests). */
export function program(): Command {
  return new Command("factsweep-agent")
    .description("factsweep node agent: runs engine workers on this host's GPUs (or CPUs) for a coordinator")
    .requiredOption("--coordinator <host:port>", "coordinator AgentService address")
    .option("--nats-url <url>", "NATS server(s) for results, comma separated", "nats://127.0.0.1:4222")
    .option("--cpu", "CPU mode: --workers CPU engine workers, ignore GPUs")
    .option("--workers <n>", "CPU workers (CPU mode, or when no GPU is visible)", int("--workers", 1), 1)
    .option("--max-slots <n>", "use at most this many workers (GPUs beyond it stay idle)", int("--max-slots", 1))
    .option("--agent-id <id>", "unique agent id", `${hostname()}-${process.pid}`)
    .option("--http-port <port>", "port of /metrics, /healthz, /readyz (0: a free port, printed in the ready line)", int("--http-port", 0), 9470)
    .option("--http-host <host>", "address the HTTP server binds (unauthenticated, read-only; 0.0.0.0 to let Prometheus and probes in)", "127.0.0.1")
    .option("--agent-token <token>", "the coordinator's agent token (--agent-token there; default: env FACTSWEEP_AGENT_TOKEN)")
    .option("--agent-token-file <file>", "read --agent-token from this file (a mounted secret; one trailing newline dropped)")
    .option("--token <token>", "same as --agent-token (compatibility; default: env FACTSWEEP_TOKEN)")
    .option("--tls-ca <file>", "PEM CA that signed the coordinator's certificate (enables TLS)")
    .option("--tls-cert <file>", "PEM client certificate of this agent (mTLS; needs --tls-key)")
    .option("--tls-key <file>", "PEM private key of --tls-cert")
    .option(
      "--insecure",
      "connect to a coordinator on another host without TLS (a closed network only: the agent token crosses it in plaintext; the coordinator's --insecure-listen)",
    )
    .option("--nats-creds <file>", "NATS credentials file (.creds)")
    .option("--nats-user <user>", "NATS user (a server config with a user per role: the agent user may only publish results)")
    .option("--nats-pass-file <file>", "read the NATS password of --nats-user from this file (default: env FACTSWEEP_NATS_PASS)")
    .option(
      "--batch-size <n>",
      "cells per engine RunCells request on every worker (0: the whole shard; default: the whole shard on a GPU, where the engine sizes its batches itself, 512 cells on the CPU)",
      int("--batch-size", 0),
    )
    .option("--prefetch <n>", "leases queued per worker beyond the one running, so a worker never waits for the next grant", int("--prefetch", 0), 1)
    .option("--cache-budget-bytes <n>", "engine prompt-cache budget per worker (default: the engine's)", int("--cache-budget-bytes", 0))
    .option("--drain-timeout <seconds>", "on drain, how long running shards may finish before they are handed back", int("--drain-timeout", 0), 600)
    .option("--engine-python <path>", "Python with torch for the engine workers (default: env FACTSWEEP_PYTHON or scripts/find-python.sh)")
    .option(
      "--kernel-cache <dir>",
      "folder of the GPU workers' compiled Triton kernels, kept across restarts (FACTSWEEP_KERNEL_CACHE; default: env FACTSWEEP_KERNEL_CACHE, else ~/.cache/factsweep/kernels)",
    )
    .option("--cov-dir <dir>", "folder of the ROME covariances fetched from the object store (default: a fresh one under the OS temp folder, removed at exit)")
    .option("--engine-root <dir>", "folder holding the engine/ package (PYTHONPATH of the workers)", REPO_ROOT)
    .option("--log-level <level>", "debug | info | warn | error", "info")
    .exitOverride();
}

/**
 * The agent token: --agent-token-file, --agent-token, --token, env FACTSWEEP_AGENT_TOKEN, env FACTSWEEP_TOKEN, in that
 * order. An empty one is an error (it would silently send no token), never "no token".
 */
function agentToken(flags: Flags): string | undefined {
  if (flags.agentTokenFile !== undefined) {
    const t = readFlagFile("--agent-token-file", flags.agentTokenFile)
      .toString("utf8")
      .replace(/\r?\n$/, "");
    if (t === "")
      throw new ConfigError("--agent-token-file", `--agent-token-file ${flags.agentTokenFile} is empty: write the coordinator's agent token into it`);
    return t;
  }
  const sources: Array<[string, string | undefined]> = [
    ["--agent-token", flags.agentToken],
    ["--token", flags.token],
    ["FACTSWEEP_AGENT_TOKEN", process.env.FACTSWEEP_AGENT_TOKEN],
    ["FACTSWEEP_TOKEN", process.env.FACTSWEEP_TOKEN],
  ];
  for (const [name, value] of sources) {
    if (value === undefined) continue;
    if (value === "") {
      const what = name.startsWith("--") ? `${name} is empty` : `${name} is set but empty`;
      throw new ConfigError(
        name.startsWith("--") ? name : "--agent-token",
        `${what}: an empty token does not turn authentication off; give the coordinator's agent token, or unset ${name.startsWith("--") ? "it" : name}`,
      );
    }
    return value;
  }
  return undefined;
}

async function enginePython(flags: Flags): Promise<string> {
  if (flags.enginePython) return flags.enginePython;
  if (process.env.FACTSWEEP_PYTHON) return process.env.FACTSWEEP_PYTHON;
  const script = join(flags.engineRoot, "scripts", "find-python.sh");
  const r = await execa("bash", [script], { reject: false });
  if (r.exitCode !== 0 || !r.stdout.trim()) {
    throw new ConfigError("--engine-python", `no Python with torch found (${r.stderr.trim() || `${script} failed`}); pass --engine-python <path>`);
  }
  return r.stdout.trim();
}

/** Where GPU workers keep compiled Triton kernels, so a restarted worker does not compile them again. */
function kernelCache(flags: Flags): string {
  return flags.kernelCache || process.env.FACTSWEEP_KERNEL_CACHE || join(homedir(), ".cache", "factsweep", "kernels");
}

async function main(argv: string[]): Promise<number> {
  const flags = program().parse(argv).opts<Flags>();
  if (!["debug", "info", "warn", "error"].includes(flags.logLevel)) {
    throw new ConfigError("--log-level", `expected \`--log-level\` to be one of debug, info, warn, error, got \`${flags.logLevel}\``);
  }
  const token = agentToken(flags);
  const log = createLogger(`agent[${flags.agentId}]`, { level: flags.logLevel });
  if (!/^[^:\s]+:\d+$/.test(flags.coordinator) && !/^\[[^\]]+\]:\d+$/.test(flags.coordinator)) {
    throw new ConfigError("--coordinator", `expected \`--coordinator\` as host:port, got \`${flags.coordinator}\`; e.g. --coordinator 10.0.0.5:7070`);
  }
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) {
    throw new ConfigError(
      "--tls-cert",
      `--tls-cert and --tls-key go together (mTLS client certificate and its key); got only ${flags.tlsCert ? "--tls-cert" : "--tls-key"}`,
    );
  }
  const coordinatorHost = flags.coordinator.replace(/:\d+$/, "");
  if (!flags.tlsCa && !flags.tlsCert && !flags.insecure && !isLoopbackHost(coordinatorHost)) {
    throw new ConfigError(
      "--insecure",
      `refusing a plaintext connection to ${flags.coordinator}, another host: the agent token and every lease would cross the network unencrypted. ` +
        `Give --tls-ca (the CA of the coordinator's certificate; --tls-cert/--tls-key for mTLS), or --insecure on a closed network ` +
        `(the coordinator's --insecure-listen); a coordinator on this host (127.0.0.1) needs neither`,
    );
  }
  if (!existsSync(join(flags.engineRoot, "engine", "__init__.py"))) {
    throw new ConfigError(
      "--engine-root",
      `--engine-root ${flags.engineRoot} holds no engine/ package (engine/__init__.py); point it at the factsweep checkout`,
    );
  }
  const tls =
    flags.tlsCa || flags.tlsCert
      ? {
          ca: flags.tlsCa ? readFlagFile("--tls-ca", flags.tlsCa) : undefined,
          cert: flags.tlsCert ? readFlagFile("--tls-cert", flags.tlsCert) : undefined,
          key: flags.tlsKey ? readFlagFile("--tls-key", flags.tlsKey) : undefined,
        }
      : undefined;
  const natsCreds = flags.natsCreds ? readFlagFile("--nats-creds", flags.natsCreds).toString("utf8") : undefined;
  const natsPass = flags.natsPassFile
    ? readFlagFile("--nats-pass-file", flags.natsPassFile)
        .toString("utf8")
        .replace(/\r?\n$/, "")
    : process.env.FACTSWEEP_NATS_PASS;
  const python = await enginePython(flags);
  const discovery = await discoverSlots({ cpu: flags.cpu, workers: flags.workers, maxSlots: flags.maxSlots, log: (l) => log.warn(l) });
  log.info(`${discovery.mode} mode: ${discovery.slots.length} worker(s): ${discovery.slots.map((s) => s.name).join(", ")}`);

  const agent = new Agent({
    agentId: flags.agentId,
    coordinator: flags.coordinator,
    natsUrl: flags.natsUrl,
    natsCreds,
    natsUser: flags.natsUser,
    natsPass,
    token,
    tls,
    slots: discovery.slots,
    engineCommand: { file: python, args: ["-m", "engine"], env: { PYTHONPATH: flags.engineRoot, FACTSWEEP_KERNEL_CACHE: kernelCache(flags) } },
    httpPort: flags.httpPort,
    httpHost: flags.httpHost,
    batchSize: flags.batchSize,
    prefetch: flags.prefetch,
    cacheBudgetBytes: flags.cacheBudgetBytes,
    drainTimeoutMs: flags.drainTimeout * 1000,
    covarianceDir: flags.covDir,
    log,
  });
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    log.info(`${sig} received${signals > 1 ? ": handing running shards back now" : ": draining (send again to hand running shards back)"}`);
    void agent.drain(sig, signals > 1);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  const { httpPort } = await agent.start();
  process.stdout.write(`factsweep-agent ready agent_id=${flags.agentId} http_port=${httpPort} workers=${discovery.slots.length} mode=${discovery.mode}\n`);
  return await agent.finished;
}

main(process.argv).then(
  (code) => process.exit(code),
  (err: Error) => {
    // commander already printed its message (bad flag, --help): exit 0 for help, 2 for usage errors.
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
    process.stderr.write(`factsweep-agent: ${err.name}: ${err.message}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  },
);

#!/usr/bin/env node
/**
 * `factsweep-coordinator`: the coordinator process. SIGTERM/SIGINT stop it gracefully (results
 * and state flushed; agents keep their leases for the next coordinator to pick up).
 */
import { readFileSync } from "node:fs";
import { Command, InvalidArgumentError, Option } from "commander";
import { DEFAULT_PLAN_LIMITS } from "@factsweep/planning";
import { listenRefusal, weakTokenRefusal } from "./auth.js";
import { Coordinator, DEFAULT_MAX_LEASE_MS } from "./coordinator.js";
import { DEFAULT_NATS_LIMITS, natsLimits } from "./nats-limits.js";

const int =
  (name: string, min: number, max = Number.MAX_SAFE_INTEGER, why = "") =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(`expected ${name} to be an integer >= ${min}${max < Number.MAX_SAFE_INTEGER ? ` and <= ${max}${why}` : ""}, got "${v}"`);
    return n;
  };
const collect = (v: string, prev: string[]): string[] => [...prev, v];

const program = new Command("factsweep-coordinator")
  .description("factsweep coordinator: plans sweeps, leases shards to node agents, aggregates results from NATS JetStream")
  .option(
    "--grpc-host <host>",
    "gRPC listen address (other than loopback: needs --tls-cert/--tls-key and both tokens, or --insecure-listen and both tokens)",
    "127.0.0.1",
  )
  .option("--grpc-port <port>", "gRPC port (SweepService for sweepctl, AgentService for agents, grpc.health.v1)", int("--grpc-port", 0), 7070)
  .option(
    "--http-host <host>",
    "HTTP listen address of /metrics, /healthz, /readyz (unauthenticated, read-only; 0.0.0.0 to let Prometheus and probes in)",
    "127.0.0.1",
  )
  .option("--http-port <port>", "HTTP port for /metrics, /healthz, /readyz (-1: none)", int("--http-port", -1), 9464)
  .addOption(new Option("--nats-url <url>", "NATS server with JetStream").default("nats://127.0.0.1:4222").env("FACTSWEEP_NATS_URL"))
  .option("--nats-creds <file>", "NATS credentials file (.creds)")
  .option("--nats-user <user>", "NATS user (deploy/nats/accounts.conf: coordinator)")
  .option("--nats-tls-ca <file>", "CA (PEM) of the NATS server's certificate: TLS to NATS (deploy/nats/factsweep.conf requires it)")
  .addOption(new Option("--nats-pass <pass>", "NATS password").env("FACTSWEEP_NATS_PASS"))
  .option("--nats-pass-file <file>", "read --nats-pass from this file (a mounted secret; one trailing newline dropped)")
  .option("--model-root <dir>", "folder model checkpoints must lie in (repeatable)", collect, [] as string[])
  .option("--data-root <dir>", "folder dataset files, relation folders and corpora must lie in (repeatable; default: the model roots)", collect, [] as string[])
  .option(
    "--max-spec-bytes <n>",
    `largest sweep spec (default ${DEFAULT_PLAN_LIMITS.maxSpecBytes})`,
    int("--max-spec-bytes", 1, 512 * 1024, " (the spec text is kept in its sweep record, one KV value under NATS' 1 MiB max_payload)"),
  )
  .option("--max-file-bytes <n>", `largest dataset, corpus or tokenizer file (default ${DEFAULT_PLAN_LIMITS.maxFileBytes})`, int("--max-file-bytes", 1))
  .option("--max-prompt-tokens <n>", `most tokens of one prompt (default ${DEFAULT_PLAN_LIMITS.maxPromptTokens})`, int("--max-prompt-tokens", 1))
  .option("--max-cells <n>", `most planned cells of one sweep (default ${DEFAULT_PLAN_LIMITS.maxCells})`, int("--max-cells", 1))
  .option("--max-shards <n>", `most shards of one sweep (default ${DEFAULT_PLAN_LIMITS.maxShards})`, int("--max-shards", 1))
  .option("--max-layers <n>", `most layers a model's config.json may claim (default ${DEFAULT_PLAN_LIMITS.maxLayers})`, int("--max-layers", 1))
  .option("--max-hidden-size <n>", `largest hidden size a config.json may claim (default ${DEFAULT_PLAN_LIMITS.maxHiddenSize})`, int("--max-hidden-size", 1))
  .option("--lease-ttl-ms <ms>", "lease TTL; a lease not renewed by a heartbeat within it is re-leased", int("--lease-ttl-ms", 100), 15_000)
  .option("--heartbeat-ms <ms>", "heartbeat interval told to agents (default TTL/3)", int("--heartbeat-ms", 50))
  .option("--retry-backoff-ms <ms>", "first retry backoff (doubles per attempt)", int("--retry-backoff-ms", 0), 1000)
  .option(
    "--uncounted-timeout-ms <ms>",
    "a shard reported done whose result is not counted within it is leased again (default 3 lease TTLs)",
    int("--uncounted-timeout-ms", 100),
  )
  .option(
    "--nats-replicas <n>",
    `replicas of the results streams and KV buckets: 1 on one nats-server, 3 on a 3-node cluster (default ${DEFAULT_NATS_LIMITS.replicas})`,
    int("--nats-replicas", 1),
  )
  .option(
    "--results-max-bytes <n>",
    `largest results stream; when full, agents' results are refused and retried (default ${DEFAULT_NATS_LIMITS.resultsMaxBytes})`,
    int("--results-max-bytes", 1),
  )
  .option(
    "--results-max-age-ms <ms>",
    `results older than this leave the stream (counted ones live on in KV; default ${DEFAULT_NATS_LIMITS.resultsMaxAgeMs}, 30 days)`,
    int("--results-max-age-ms", 1),
  )
  .option(
    "--kv-max-bytes <n>",
    `largest size of each KV bucket (sweeps, shards, aggregates; default ${DEFAULT_NATS_LIMITS.kvMaxBytes})`,
    int("--kv-max-bytes", 1),
  )
  .option(
    "--cov-max-bytes <n>",
    `largest size of the ROME covariance object store factsweep-cov (edit sweeps' C and their parts; default ${DEFAULT_NATS_LIMITS.covMaxBytes})`,
    int("--cov-max-bytes", 1),
  )
  .option(
    "--keep-finished <n>",
    "finished sweeps kept in memory (most recently used); older ones are loaded from NATS KV when asked for",
    int("--keep-finished", 0),
    8,
  )
  .option(
    "--snapshot-ms <ms>",
    "how often a running sweep's newly counted results are appended to its aggregate snapshot (factsweep-snapshots; also at every 512 KiB of results and at its end): a restart reads the snapshot and only the results stored after it",
    int("--snapshot-ms", 1),
    5000,
  )
  .option(
    "--max-lease-ms <ms>",
    "longest one lease may be held however often heartbeats renew it; then it is revoked (CancelLease) and re-queued as a retry (0: no limit)",
    int("--max-lease-ms", 0),
    DEFAULT_MAX_LEASE_MS,
  )
  .option(
    "--priority-aging-ms <ms>",
    "a running sweep left waiting for a grant gains one priority level per this many ms, so no sweep starves behind higher-priority ones (0: never)",
    int("--priority-aging-ms", 0),
    300_000,
  )
  .addOption(new Option("--user-token <token>", "token sweepctl must present (SweepService)").env("FACTSWEEP_USER_TOKEN"))
  .addOption(new Option("--agent-token <token>", "token node agents must present (AgentService)").env("FACTSWEEP_AGENT_TOKEN"))
  .option("--user-token-file <file>", "read --user-token from this file (a mounted secret; one trailing newline dropped)")
  .option("--agent-token-file <file>", "read --agent-token from this file")
  .addOption(new Option("--token <token>", "sets both --user-token and --agent-token where those are not given (compatibility)").env("FACTSWEEP_TOKEN"))
  .option("--insecure-listen", "allow plaintext gRPC on a non-loopback --grpc-host (a closed network only; tokens are still required)")
  .option("--tls-cert <file>", "server certificate (PEM) for gRPC TLS")
  .option("--tls-key <file>", "server private key (PEM)")
  .option("--tls-ca <file>", "CA (PEM) that signs client certificates: enables mTLS (clients must present one)")
  .option(
    "--agent-id-from-cert",
    "mTLS: an agent's --agent-id must be its client certificate's CN or a DNS name of its subjectAltName (one certificate per agent; no client can take another's id)",
  )
  .action(async (o) => {
    if ((o.tlsCert && !o.tlsKey) || (!o.tlsCert && o.tlsKey)) program.error("--tls-cert and --tls-key go together; give both or neither", { exitCode: 2 });
    if (o.tlsCa && !o.tlsCert) program.error("--tls-ca (mTLS) needs --tls-cert and --tls-key", { exitCode: 2 });
    if (o.agentIdFromCert && !o.tlsCa) program.error("--agent-id-from-cert needs mTLS: give --tls-ca (and --tls-cert, --tls-key)", { exitCode: 2 });
    for (const [key, flag] of [
      ["userToken", "--user-token-file"],
      ["agentToken", "--agent-token-file"],
    ] as const) {
      const file: string | undefined = key === "userToken" ? o.userTokenFile : o.agentTokenFile;
      if (file === undefined) continue;
      try {
        o[key] = readFileSync(file, "utf8").replace(/\r?\n$/, "");
      } catch (err) {
        program.error(`cannot read ${flag} ${file}: ${(err as Error).message}`, { exitCode: 2 });
      }
      if (o[key] === "") program.error(`${flag} ${file} is empty: an empty token does not turn authentication off; write the token into it`, { exitCode: 2 });
    }
    for (const [key, flag, env] of [
      ["token", "--token", "FACTSWEEP_TOKEN"],
      ["userToken", "--user-token", "FACTSWEEP_USER_TOKEN"],
      ["agentToken", "--agent-token", "FACTSWEEP_AGENT_TOKEN"],
    ] as const) {
      if (o[key] !== "") continue;
      const from = program.getOptionValueSource(key) === "env" ? `${env} is set but empty` : `${flag} is empty`;
      program.error(`${from}: an empty token does not turn authentication off; give a token, or unset ${env} and leave ${flag} out`, { exitCode: 2 });
    }
    if (o.natsPassFile !== undefined) {
      try {
        o.natsPass = readFileSync(o.natsPassFile, "utf8").replace(/\r?\n$/, "");
      } catch (err) {
        program.error(`cannot read --nats-pass-file ${o.natsPassFile}: ${(err as Error).message}`, { exitCode: 2 });
      }
    }
    const userToken: string | undefined = o.userToken ?? o.token;
    const agentToken: string | undefined = o.agentToken ?? o.token;
    const refusal = listenRefusal({ grpcHost: o.grpcHost, tls: Boolean(o.tlsCert), userToken, agentToken, insecureListen: o.insecureListen });
    if (refusal) program.error(refusal, { exitCode: 2 });
    try {
      natsLimits({
        replicas: o.natsReplicas,
        resultsMaxBytes: o.resultsMaxBytes,
        resultsMaxAgeMs: o.resultsMaxAgeMs,
        kvMaxBytes: o.kvMaxBytes,
        covMaxBytes: o.covMaxBytes,
      });
    } catch (err) {
      program.error((err as Error).message, { exitCode: 2 });
    }
    // Closed by default: a token left at the deployment files' placeholder, or too short, is no secret.
    const named = (key: "userToken" | "agentToken", flag: string, env: string, file?: string): string =>
      file !== undefined
        ? `${flag}-file ${file}`
        : o[key] !== undefined
          ? program.getOptionValueSource(key) === "env"
            ? env
            : flag
          : "--token / FACTSWEEP_TOKEN";
    for (const weak of [
      weakTokenRefusal(named("userToken", "--user-token", "FACTSWEEP_USER_TOKEN", o.userTokenFile), userToken),
      weakTokenRefusal(named("agentToken", "--agent-token", "FACTSWEEP_AGENT_TOKEN", o.agentTokenFile), agentToken),
    ]) {
      if (weak) program.error(`refusing to start: ${weak}`, { exitCode: 2 });
    }
    if (o.insecureListen && !o.tlsCert) console.error(`[coordinator] warning: --insecure-listen: plaintext gRPC on ${o.grpcHost}; tokens travel unencrypted`);
    if (o.modelRoot.length === 0) console.error("[coordinator] warning: no --model-root given: every launch will be refused until one is configured");
    const coord = await Coordinator.start({
      natsUrl: o.natsUrl,
      natsCreds: o.natsCreds,
      natsUser: o.natsUser,
      natsPass: o.natsPass,
      natsTlsCa: o.natsTlsCa,
      grpcHost: o.grpcHost,
      grpcPort: o.grpcPort,
      httpHost: o.httpHost,
      httpPort: o.httpPort,
      modelRoots: o.modelRoot,
      dataRoots: o.dataRoot,
      limits: {
        maxSpecBytes: o.maxSpecBytes,
        maxFileBytes: o.maxFileBytes,
        maxPromptTokens: o.maxPromptTokens,
        maxCells: o.maxCells,
        maxShards: o.maxShards,
        maxLayers: o.maxLayers,
        maxHiddenSize: o.maxHiddenSize,
      },
      leaseTtlMs: o.leaseTtlMs,
      heartbeatMs: o.heartbeatMs,
      retryBackoffMs: o.retryBackoffMs,
      uncountedTimeoutMs: o.uncountedTimeoutMs,
      maxLeaseMs: o.maxLeaseMs,
      priorityAgingMs: o.priorityAgingMs,
      keepFinished: o.keepFinished,
      snapshotMs: o.snapshotMs,
      natsLimits: {
        replicas: o.natsReplicas,
        resultsMaxBytes: o.resultsMaxBytes,
        resultsMaxAgeMs: o.resultsMaxAgeMs,
        kvMaxBytes: o.kvMaxBytes,
        covMaxBytes: o.covMaxBytes,
      },
      userToken,
      agentToken,
      tls: o.tlsCert ? { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa } : undefined,
      agentIdFromCertificate: Boolean(o.agentIdFromCert),
    });
    let stopping = false;
    const stop = (sig: string) => {
      if (stopping) return;
      stopping = true;
      console.error(`[coordinator] ${sig}: stopping (flushing results and state)`);
      coord.stop().then(
        () => {
          console.error("[coordinator] stopped");
          process.exit(0);
        },
        (err) => {
          console.error(`[coordinator] stop failed: ${(err as Error).message}`);
          process.exit(1);
        },
      );
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
  });

program.parseAsync().catch((err: Error) => {
  console.error(`factsweep-coordinator: ${err.message}`);
  process.exit(4);
});

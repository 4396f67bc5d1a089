#!/usr/bin/env node
// long-file: every command's options, help text and wiring is one commander program; the commands' work is in local.ts, plan.ts, serve.ts, report/ and cli-output.ts.
/**
 * `sweepctl`: the command line of factsweep. Talks to a coordinator's SweepService over gRPC, or
 * (`sweepctl local`) runs a whole system on this machine: a nats-server, a coordinator in-process
 * and N node agents as child processes. Exit codes: see EXIT in cli-output.ts and the README.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import * as grpc from "@grpc/grpc-js";
import { control } from "@factsweep/proto";
import { KIND_AGGREGATE_FILE } from "@factsweep/planning";
import { Provenance } from "./provenance.js";
import { CliExit, EXIT, ProgressView, agentTable, describeSweep, exitCodeOf, exitCodeOfState, isTerminal, sweepTable, writeResults } from "./cli-output.js";
import { readSpec, runLocal, type LocalOpts } from "./local.js";

interface GlobalOpts {
  coordinator: string;
  token?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  timeoutMs: number;
}

// ---- gRPC client ---------------------------------------------------------------------------

function client(o: GlobalOpts): { c: control.SweepServiceClient; md: () => grpc.Metadata } {
  const creds =
    o.tlsCa || o.tlsCert
      ? grpc.credentials.createSsl(o.tlsCa ? readFileSync(o.tlsCa) : null, o.tlsKey ? readFileSync(o.tlsKey) : null, o.tlsCert ? readFileSync(o.tlsCert) : null)
      : grpc.credentials.createInsecure();
  const c = new control.SweepServiceClient(o.coordinator, creds);
  const md = () => {
    const m = new grpc.Metadata();
    if (o.token) m.set("authorization", `Bearer ${o.token}`);
    return m;
  };
  return { c, md };
}

/** Turns a gRPC error into a CliExit with the coordinator's message and the matching exit code. */
function fromGrpc(err: grpc.ServiceError, o: GlobalOpts): CliExit {
  if (err.code === grpc.status.UNAVAILABLE) {
    return new CliExit(
      EXIT.unavailable,
      `coordinator at ${o.coordinator} is unavailable: ${err.details || err.message} (start it, or pass --coordinator host:port)`,
    );
  }
  return new CliExit(exitCodeOf(err.code), err.details || err.message);
}

function unary<Req, Res>(
  o: GlobalOpts,
  method: (
    c: control.SweepServiceClient,
  ) => (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown,
  req: Req,
): Promise<Res> {
  const { c, md } = client(o);
  return new Promise<Res>((res, rej) => {
    method(c).call(c, req, md(), { deadline: Date.now() + o.timeoutMs }, (e, r) => {
      c.close();
      if (e) rej(fromGrpc(e, o));
      else res(r);
    });
  });
}

/**
 * Follows Watch until the sweep ends, with a progress bar; resolves with the last SweepInfo. A
 * coordinator that restarts meanwhile (stream broken, or ended before the sweep did) is watched
 * again once it is back, for up to `--timeout-ms` of unavailability.
 */
async function watchRemote(o: GlobalOpts, sweepId: string, quiet: boolean, initial?: control.SweepInfo): Promise<control.SweepInfo> {
  const view = quiet ? undefined : new ProgressView();
  let last: control.SweepInfo | undefined = initial;
  let downSince: number | undefined;
  try {
    for (;;) {
      const outcome = await new Promise<{ err?: grpc.ServiceError }>((res) => {
        const { c, md } = client(o);
        const stream = c.watch({ sweepId }, md());
        stream.on("data", (info: control.SweepInfo) => {
          last = info;
          downSince = undefined;
          view?.update(info);
        });
        stream.on("error", (e: grpc.ServiceError) => {
          c.close();
          res({ err: e });
        });
        stream.on("end", () => {
          c.close();
          res({});
        });
      });
      if (last && isTerminal(last.state)) return last;
      // Only a coordinator that answered before is waited for; one never reached fails fast (exit 4).
      const transient = last !== undefined && (!outcome.err || outcome.err.code === grpc.status.UNAVAILABLE || outcome.err.code === grpc.status.CANCELLED);
      if (!transient) throw outcome.err ? fromGrpc(outcome.err, o) : new CliExit(EXIT.unavailable, `watch of ${sweepId} ended without any update`);
      downSince ??= Date.now();
      if (Date.now() - downSince > o.timeoutMs) {
        throw outcome.err ? fromGrpc(outcome.err, o) : new CliExit(EXIT.unavailable, `watch of ${sweepId} ended before the sweep did`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    view?.stop();
  }
}

async function* resultsRemote(o: GlobalOpts, sweepId: string): AsyncIterable<control.ResultRow> {
  const { c, md } = client(o);
  const stream = c.results({ sweepId }, md());
  try {
    for await (const r of stream) yield r as control.ResultRow;
  } catch (e) {
    throw fromGrpc(e as grpc.ServiceError, o);
  } finally {
    c.close();
  }
}

// ---- commands ------------------------------------------------------------------------------

const program = new Command("sweepctl")
  .description("Launch and follow factsweep sweeps (causal tracing over prompts × sites × layers × tokens)")
  .addOption(new Option("--coordinator <host:port>", "coordinator gRPC address").default("127.0.0.1:7070").env("FACTSWEEP_COORDINATOR"))
  .addOption(new Option("--token <token>", "API token of the coordinator").env("FACTSWEEP_TOKEN"))
  .option("--tls-ca <file>", "CA (PEM) to verify the coordinator (enables TLS)")
  .option("--tls-cert <file>", "client certificate (PEM) for mTLS")
  .option("--tls-key <file>", "client key (PEM) for mTLS")
  .option("--timeout-ms <ms>", "deadline of each call", (v) => positive(v, "--timeout-ms"), 60_000)
  .showHelpAfterError()
  .exitOverride();

function positive(v: string, name: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`expected ${name} to be a positive integer, got "${v}"`);
  return n;
}
function positiveNumber(v: string, name: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`expected ${name} to be a positive number, got "${v}"`);
  return n;
}
const g = (): GlobalOpts => program.opts<GlobalOpts>();
let exitCode: number = EXIT.ok;

program
  .command("launch")
  .description("launch a sweep from a YAML/JSON spec and follow it with a progress bar (cells/s, ETA)")
  .argument("<spec>", "sweep spec file (.yaml, .yml or .json)")
  .option("--id <sweep-id>", "sweep id (default: from the spec's name plus a random suffix)")
  .option("--detach", "print the sweep id and return without following it")
  .option("--quiet", "no progress bar")
  .option("--dry-run", "print the plan (as `sweepctl plan`) and launch nothing")
  .option("--rate <forwards/s>", "with --dry-run: as `plan --rate`", (v) => positiveNumber(v, "--rate"))
  .option("--rate-from <dirs...>", "with --dry-run: as `plan --rate-from`")
  .option("--agents", "with --dry-run: as `plan --agents`")
  .action(
    async (file: string, opts: { id?: string; detach?: boolean; quiet?: boolean; dryRun?: boolean; rate?: number; rateFrom?: string[]; agents?: boolean }) => {
      if (opts.dryRun)
        return (await import("./plan.js")).printPlan(file, opts, opts.agents ? async () => (await unary(g(), (c) => c.agents, {})).agents : undefined);
      const { text, dir } = readSpec(file);
      const info = await unary(g(), (c) => c.launch, { spec: text, sweepId: opts.id ?? "", specDir: dir });
      console.log(info.sweepId);
      if (info.promptErrors.length > 0) {
        console.error(`${info.promptErrors.length} prompt(s) skipped:`);
        for (const e of info.promptErrors.slice(0, 20)) console.error(`  prompt ${e.promptIndex}: ${e.message}`);
      }
      if (isTerminal(info.state)) console.error(describeSweep(info));
      if (opts.detach || isTerminal(info.state)) {
        exitCode = exitCodeOfState(info.state);
        return;
      }
      const last = await watchRemote(g(), info.sweepId, opts.quiet === true, info);
      console.error(describeSweep(last));
      exitCode = exitCodeOfState(last.state);
    },
  );

const planOptions = (c: Command): Command =>
  c
    .option("--rate <forwards/s>", "measured corrupted forwards per second of this model (a swap cell is one, a noise cell `samples`)", (v) =>
      positiveNumber(v, "--rate"),
    )
    .option("--rate-from <dirs...>", "finished `sweepctl local` run folders: the rate of the one with this model")
    .option("--agents", "estimate from the coordinator's connected agents: what their counted results of this model took (--coordinator)");

planOptions(
  program
    .command("plan")
    .description(
      "plan a spec on this machine as the coordinator would: prompts kept and skipped (with reasons), cells, shards, a time estimate, memory per worker",
    )
    .argument("<spec>", "sweep spec file (.yaml, .yml or .json)")
    .option("--json", "print as JSON"),
).action(async (file: string, opts: { rate?: number; rateFrom?: string[]; json?: boolean; agents?: boolean }) =>
  (await import("./plan.js")).printPlan(file, opts, opts.agents ? async () => (await unary(g(), (c) => c.agents, {})).agents : undefined),
);

program
  .command("status")
  .description("show a sweep's state, counts, skipped prompts and failed shards (exit 1 if it failed or was cancelled)")
  .argument("<sweep-id>")
  .option("--json", "print SweepInfo as JSON")
  .action(async (id: string, opts: { json?: boolean }) => {
    const info = await unary(g(), (c) => c.get, { sweepId: id });
    console.log(opts.json ? JSON.stringify(control.SweepInfo.toJSON(info), null, 2) : describeSweep(info));
    exitCode = exitCodeOfState(info.state);
  });

program
  .command("list")
  .description("list sweeps")
  .option("--json", "print as JSON")
  .action(async (opts: { json?: boolean }) => {
    const r = await unary(g(), (c) => c.list, {});
    console.log(opts.json ? JSON.stringify(control.ListReply.toJSON(r), null, 2) : sweepTable(r.sweeps));
  });

program
  .command("watch")
  .description("follow a sweep until it ends (exit 0 done, 1 failed or cancelled)")
  .argument("<sweep-id>")
  .option("--quiet", "no progress bar")
  .action(async (id: string, opts: { quiet?: boolean }) => {
    const last = await watchRemote(g(), id, opts.quiet === true);
    console.error(describeSweep(last));
    exitCode = exitCodeOfState(last.state);
  });

program
  .command("resume")
  .description("resume a cancelled or failed sweep: failed shards are re-queued")
  .argument("<sweep-id>")
  .option("--watch", "follow it afterwards")
  .action(async (id: string, opts: { watch?: boolean }) => {
    const info = await unary(g(), (c) => c.resume, { sweepId: id });
    if (!opts.watch) {
      console.log(describeSweep(info));
      return;
    }
    const last = await watchRemote(g(), id, false);
    console.error(describeSweep(last));
    exitCode = exitCodeOfState(last.state);
  });

program
  .command("cancel")
  .description("cancel a running sweep (its results so far are kept; resume continues it)")
  .argument("<sweep-id>")
  .action(async (id: string) => {
    const info = await unary(g(), (c) => c.cancel, { sweepId: id });
    console.log(describeSweep(info));
  });

program
  .command("delete")
  .description("delete a finished, failed or cancelled sweep: its state and aggregated results leave NATS (cancel a running one first)")
  .argument("<sweep-id>")
  .action(async (id: string) => {
    const r = await unary(g(), (c) => c.delete, { sweepId: id });
    console.log(`sweep ${r.sweepId} deleted: ${r.shardsRemoved} shard record(s), ${r.resultsRemoved} stored result(s)`);
  });

program
  .command("archive")
  .description(
    "write a finished sweep to a run folder (results csv/jsonl/parquet, trace.json or kind.json, sweep.json), check every row is there, then delete it from the coordinator",
  )
  .argument("<sweep-id>")
  .requiredOption("--out <dir>", "the run folder (refused if it holds another run, unless --overwrite)")
  .option("--spec <file>", "the sweep's spec: kept in the folder, and each trace row gains its prompt's text, tokens and swap partner (as `results --spec`)")
  .option("--overwrite", "replace a run already in --out")
  .option("--keep", "write and check the folder, but leave the sweep on the coordinator")
  .action(async (id: string, opts: { out: string; spec?: string; overwrite?: boolean; keep?: boolean }) => {
    const { archiveSweep } = await import("./archive.js");
    const r = await archiveSweep(id, opts, {
      get: (sweepId) => unary(g(), (c) => c.get, { sweepId }),
      report: (sweepId) => unary(g(), (c) => c.report, { sweepId }),
      results: (sweepId) => resultsRemote(g(), sweepId),
      delete: (sweepId) => unary(g(), (c) => c.delete, { sweepId }),
    });
    console.error(`${r.rows} rows written to ${r.dir} (results.csv, .jsonl, .parquet) and checked; \`sweepctl report --from ${r.dir}\` draws its report`);
    if (r.deleted)
      console.log(`sweep ${id} archived to ${r.dir} and deleted: ${r.deleted.shardsRemoved} shard record(s), ${r.deleted.resultsRemoved} stored result(s)`);
    else console.log(`sweep ${id} archived to ${r.dir}; kept on the coordinator (--keep)`);
  });

program
  .command("results")
  .description("export a sweep's aggregated cells")
  .argument("<sweep-id>")
  .addOption(new Option("--format <format>", "output format (parquet: to --out only)").choices(["csv", "jsonl", "parquet"]).default("csv"))
  .option("--out <file>", "write to a file instead of stdout")
  .option(
    "--spec <file>",
    "the sweep's spec, to add each trace row's prompt text, relation, token string, answer and swap partner (planned here again: needs the model's config.json, tokenizer and dataset at the spec's paths)",
  )
  .action(async (id: string, opts: { format: "csv" | "jsonl" | "parquet"; out?: string; spec?: string }) => {
    if (opts.spec && !existsSync(opts.spec)) throw new CliExit(EXIT.usage, `--spec ${opts.spec}: file not found`);
    const p = opts.spec ? Provenance.fromSpecFile(opts.spec, id) : undefined;
    const n = await writeResults(resultsRemote(g(), id), opts.format, opts.out, p && ((r) => p.record(r)));
    if (opts.out) console.error(`${n} rows written to ${opts.out}`);
  });

program
  .command("compare")
  .description("compare two traced sweeps: difference heatmaps (a − b) and per-row mean IE with bootstrap intervals, to compare.html")
  .argument("<a>", "a `local` run folder (holding trace.json) or a sweep id on the coordinator")
  .argument("<b>", "the same for the other sweep")
  .option("--out <dir>", "folder for compare.html", ".")
  .action(async (a: string, b: string, opts: { out: string }) => {
    const { readTraces, TRACE_FILE } = await import("./report/index.js");
    const { compareTraces, writeComparison, comparisonLines } = await import("./report/compare.js");
    const view = async (x: string) => {
      if (existsSync(join(x, TRACE_FILE))) return readTraces([resolve(x)])[0]!;
      const data = await unary(g(), (c) => c.report, { sweepId: x });
      if (!data.traceJson) throw new CliExit(EXIT.usage, `compare: sweep ${x} is kind ${data.kind}, not trace`);
      return JSON.parse(data.traceJson) as import("./report/types.js").ModelTrace;
    };
    const c = compareTraces(await view(a), await view(b));
    for (const line of comparisonLines(c)) console.error(line);
    console.log(await writeComparison(c, resolve(opts.out)));
  });

program
  .command("serve")
  .description("serve the report of sweeps on the coordinator as a live page: updated in place as results arrive, partial figures marked")
  .argument("<sweeps...>", "sweep ids on the coordinator (--coordinator)")
  .option("--host <host>", "address to listen on", "127.0.0.1")
  .option("--port <port>", "port (0: any free port)", (v) => Number(v), 8080)
  .option("--title <title>", "page title", "Causal tracing report (live)")
  .action(async (ids: string[], opts: { host: string; port: number; title: string }) => {
    const load = async (sweepId: string) => ({ info: await unary(g(), (c) => c.get, { sweepId }), data: await unary(g(), (c) => c.report, { sweepId }) });
    await (await import("./serve.js")).serveUntilSignal({ ...opts, ids, load, onError: (e) => console.error(`sweepctl serve: ${e.message}`) });
  });

program
  .command("agents")
  .description("list connected node agents")
  .option("--json", "print as JSON")
  .action(async (opts: { json?: boolean }) => {
    const r = await unary(g(), (c) => c.agents, {});
    console.log(opts.json ? JSON.stringify(control.AgentsReply.toJSON(r), null, 2) : agentTable(r.agents));
  });

program
  .command("local")
  .description("run a sweep on this machine: starts nats-server, a coordinator and N agents, writes results to --out")
  .argument("<spec>", "sweep spec file")
  .option("--agents <n>", "node agents to start", (v) => positive(v, "--agents"), 2)
  .option("--workers <n>", "engine workers per agent (CPU)", (v) => positive(v, "--workers"), 1)
  .option(
    "--out <dir>",
    "output folder (results.csv/.jsonl with each prompt's text and tokens, prompts.csv, run.json: spec, code version, seeds, model fingerprint; summary.json, sweep.json, logs)",
    "out",
  )
  .option("--id <sweep-id>", "sweep id")
  .option("--model-root <dir>", "model root (default: the folder holding the spec's model)", (v: string, p: string[]) => [...p, v], [] as string[])
  .option("--agent-bin <file>", "node agent entry (default: node-agent/dist/main.js of this checkout)")
  .option("--nats-url <url>", "use this NATS server instead of starting one")
  .option("--grpc-port <port>", "coordinator gRPC port (default: any free port)", (v) => Number(v), 0)
  .option("--http-port <port>", "coordinator HTTP port for /metrics (default: any free port)", (v) => Number(v), 0)
  .option("--lease-ttl-ms <ms>", "lease TTL", (v) => positive(v, "--lease-ttl-ms"), 10_000)
  .option("--quiet", "no progress bar")
  .option("--overwrite", "replace the run already in --out (without it, an --out holding a run is refused)")
  .action(async (file: string, opts: LocalOpts) => {
    exitCode = await runLocal(file, opts);
  });

program
  .command("report")
  .description(
    "write report.html (tracing: heatmaps of mean IE by token group × layer and the paper's findings checked; other kinds: their curves) and report.csv, for finished sweeps on the coordinator and/or `local` output folders",
  )
  .argument("[sweeps...]", "ids of finished sweeps on the coordinator (--coordinator)")
  .option("--from <dirs...>", "output folders of `sweepctl local` runs (holding trace.json or kind.json)", [] as string[])
  .option("--out <dir>", "folder for report.html and report.csv", ".")
  .option("--title <title>", 'report title (default "Causal tracing report", or "Experiment report" without a trace sweep)')
  .addOption(
    new Option("--findings <mode>", "check the paper's findings: on, off, or auto (as each spec's `findings` says; by model type when unset)")
      .choices(["auto", "on", "off"])
      .default("auto"),
  )
  .action(async (sweeps: string[], opts: { from: string[]; out: string; title?: string; findings: "auto" | "on" | "off" }) => {
    if (sweeps.length === 0 && opts.from.length === 0)
      throw new CliExit(EXIT.usage, "report: name finished sweeps (sweepctl report <id>...) or local output folders (--from <dir>...)");
    const { readTraces, writeReport, TRACE_FILE, findingLine, partialText } = await import("./report/index.js"); // vega loads only for this command
    const { readKindAggregates, kindSections } = await import("./report/kinds.js");
    const dirs = opts.from.map((d) => resolve(d));
    const missing = dirs.filter((d) => !existsSync(join(d, TRACE_FILE)) && !existsSync(join(d, KIND_AGGREGATE_FILE)));
    if (missing.length)
      throw new CliExit(
        EXIT.notFound,
        `${missing.join(", ")}: no ${TRACE_FILE} or ${KIND_AGGREGATE_FILE}; expected the output folder of a finished \`sweepctl local\` run`,
      );
    const traces = readTraces(dirs.filter((d) => existsSync(join(d, TRACE_FILE))));
    const kinds = readKindAggregates(dirs);
    for (const id of sweeps) {
      const info = await unary(g(), (c) => c.get, { sweepId: id }); // the state: a report of a running sweep is partial
      const data = await unary(g(), (c) => c.report, { sweepId: id });
      if (data.traceJson) traces.push({ ...JSON.parse(data.traceJson), state: info.state });
      else kinds.push(JSON.parse(data.aggregateJson));
    }
    if (opts.findings !== "auto") for (const t of traces) t.findings = opts.findings === "on";
    for (const t of traces) {
      const p = partialText(t);
      if (p) console.error(`${t.label}: ${p}; findings are not judged on partial data`);
    }
    const title = opts.title ?? (traces.length ? "Causal tracing report" : "Experiment report");
    const r = await writeReport(traces, resolve(opts.out), title, kinds.length ? await kindSections(kinds) : []);
    for (const f of r.findings) console.error(findingLine(f));
    console.log(r.html);
    console.error(`report written: ${r.html} and ${r.csv}`);
  });

async function main(): Promise<void> {
  try {
    await program.parseAsync();
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? 0 : EXIT.usage;
      return;
    }
    if (err instanceof CliExit) {
      console.error(`sweepctl: ${err.message}`);
      process.exitCode = err.exitCode;
      return;
    }
    const e = err as Error & { code?: unknown; name?: string };
    if (e.name === "SpecError") {
      console.error(`sweepctl: ${e.message}`);
      process.exitCode = EXIT.usage;
      return;
    }
    if (e.name === "ModelNotFoundError" || e.name === "SweepNotFoundError") {
      console.error(`sweepctl: ${e.message}`);
      process.exitCode = EXIT.notFound;
      return;
    }
    if (e.name === "ModelPathDeniedError" || e.name === "InvalidSpecError" || e.name === "SweepExistsError") {
      console.error(`sweepctl: ${e.message}`);
      process.exitCode = EXIT.usage;
      return;
    }
    if (e.name === "NatsServerError") {
      console.error(`sweepctl: ${e.message}`);
      process.exitCode = EXIT.unavailable;
      return;
    }
    console.error(`sweepctl: ${e.stack ?? e.message}`);
    process.exitCode = EXIT.internal;
    return;
  }
  process.exitCode = exitCode;
}

await main();

/**
 * `sweepctl local`: the whole system on this machine, for the demo and for laptops: an embedded
 * nats-server, a coordinator in-process and N node agents on the CPU as child processes; the
 * sweep's results, summary and report input are written to the output folder.
 */
import { createWriteStream, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { control } from "@factsweep/proto";
import { isFromTrace, isTraceFolder, KIND_AGGREGATE_FILE, parseSweepSpec } from "@factsweep/planning";
import { startNatsServer } from "@factsweep/testing";
import { CliExit, EXIT, ProgressView, csvCell, describeSweep, exitCodeOfState, isTerminal, writeResults } from "./cli-output.js";
import { Provenance, runRecord } from "./provenance.js";

/** What a run writes to its --out folder (all replaced by --overwrite, so nothing of an older run stays). */
export const RUN_FILES = [
  "run.json",
  "sweep.json",
  "results.csv",
  "results.jsonl",
  "prompts.csv",
  "summary.json",
  "trace.json",
  "kind.json",
  "coordinator.log",
];

/**
 * Refuses an --out folder holding another run unless `overwrite`; with it, removes that run's files
 * (and its `spec.*` copy and agent logs) first.
 */
export function claimOutDir(out: string, overwrite: boolean): void {
  const run = join(out, "run.json");
  const sweep = join(out, "sweep.json");
  if (!existsSync(run) && !existsSync(sweep) && !existsSync(join(out, "results.csv"))) return;
  if (!overwrite) {
    const held = [run, sweep].filter((f) => existsSync(f)).map((f) => JSON.parse(readFileSync(f, "utf8")) as { sweep_id?: string; sweepId?: string });
    const id = held.map((h) => h.sweep_id ?? h.sweepId).find(Boolean);
    throw new CliExit(
      EXIT.usage,
      `--out ${out} already holds the results of ${id ? `sweep ${id}` : "another run"}; choose another --out, or pass --overwrite to replace them`,
    );
  }
  for (const f of readdirSync(out))
    if (RUN_FILES.includes(f) || /^spec\.(ya?ml|json)$/.test(f) || /^local-\d+\.log$/.test(f)) rmSync(join(out, f), { force: true });
}

/** A spec file's text and folder. @throws CliExit when it does not exist. */
export function readSpec(file: string): { text: string; dir: string } {
  const p = resolve(file);
  if (!existsSync(p)) throw new CliExit(EXIT.usage, `spec file "${file}" not found`);
  return { text: readFileSync(p, "utf8"), dir: dirname(p) };
}

export interface LocalOpts {
  agents: number;
  workers: number;
  out: string;
  id?: string;
  modelRoot: string[];
  agentBin?: string;
  natsUrl?: string;
  grpcPort: number;
  httpPort: number;
  leaseTtlMs: number;
  quiet?: boolean;
  overwrite?: boolean;
}

/** `sweepctl local`: the whole system on this machine, for the demo and for laptops. */
export async function runLocal(file: string, o: LocalOpts): Promise<number> {
  const { text, dir } = readSpec(file);
  let stopping = false;
  let spec;
  try {
    spec = parseSweepSpec(text, { baseDir: dir, format: extname(file) === ".json" ? "json" : "yaml" });
  } catch (err) {
    throw new CliExit(EXIT.usage, (err as Error).message);
  }
  const here = dirname(fileURLToPath(import.meta.url));
  const agentBin = resolve(o.agentBin ?? join(here, "..", "..", "node-agent", "dist", "main.js"));
  if (!existsSync(agentBin)) throw new CliExit(EXIT.usage, `node agent entry "${agentBin}" not found; build it with \`npx tsc -b\` or pass --agent-bin`);
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  claimOutDir(out, o.overwrite === true);
  const started = Date.now();
  const roots = o.modelRoot.length > 0 ? o.modelRoot : [dirname(spec.model.path)];

  const { execa } = await import("execa");
  const { Coordinator } = await import("@factsweep/coordinator");
  const nats = o.natsUrl ? undefined : await startNatsServer();
  const natsUrl = o.natsUrl ?? nats!.url;
  const logFile = createWriteStream(join(out, "coordinator.log"));
  const coord = await Coordinator.start({
    natsUrl,
    grpcHost: "127.0.0.1",
    grpcPort: o.grpcPort,
    httpHost: "127.0.0.1",
    httpPort: o.httpPort,
    modelRoots: roots,
    // A trace run folder an edit's layers come from (layers.from_trace) is read by this coordinator too.
    dataRoots: isFromTrace(spec.layers) && isTraceFolder(spec.layers.from_trace) ? [...roots, spec.layers.from_trace] : roots,
    leaseTtlMs: o.leaseTtlMs,
    log: (m) => logFile.write(`${new Date().toISOString()} ${m}\n`),
  });
  console.error(`local: nats ${natsUrl}, coordinator gRPC 127.0.0.1:${coord.grpcPort}, metrics http://127.0.0.1:${coord.httpPort}/metrics, logs in ${out}`);
  const agents = Array.from({ length: o.agents }, (_, i) => {
    const id = `local-${i}`;
    const p = execa(
      process.execPath,
      [
        agentBin,
        "--coordinator",
        `127.0.0.1:${coord.grpcPort}`,
        "--nats-url",
        natsUrl,
        "--workers",
        String(o.workers),
        "--cpu",
        "--agent-id",
        id,
        "--http-port",
        "0",
      ],
      {
        stdout: { file: join(out, `${id}.log`) },
        stderr: { file: join(out, `${id}.log`) },
        reject: false,
        cleanup: true,
      },
    );
    return { id, p };
  });
  const view = o.quiet ? undefined : new ProgressView();
  let code: number = EXIT.internal;
  try {
    const info = await coord.launch({ spec: text, sweepId: o.id ?? "", specDir: dir });
    for (const e of info.promptErrors) console.error(`prompt ${e.promptIndex} skipped: ${e.message}`);
    // Provenance before anything runs: the spec as given, the code, the seeds, the model's fingerprint.
    const record = { sweepId: info.sweepId, specFile: resolve(file), specText: text, spec, startedMs: started, agents: o.agents, workers: o.workers };
    writeFileSync(join(out, `spec${extname(file) === ".json" ? ".json" : ".yaml"}`), text);
    writeFileSync(join(out, "run.json"), JSON.stringify(runRecord(record), null, 2));
    const last = await new Promise<control.SweepInfo>((res, rej) => {
      for (const a of agents) {
        void a.p.then((r) => {
          if (!stopping) rej(new CliExit(EXIT.internal, `agent ${a.id} exited (${r.exitCode ?? r.signal}); see ${join(out, `${a.id}.log`)}`));
        });
      }
      const unsub = coord.watch(info.sweepId, (i) => {
        view?.update(i);
        if (isTerminal(i.state)) {
          setImmediate(() => unsub());
          res(i);
        }
      });
    });
    view?.stop();
    // The plan again (deterministic: the same spec and id plan the same prompts) gives each row its prompt's text and tokens.
    const prov = spec.kind === "trace" ? Provenance.fromSpec(spec, last.sweepId) : undefined;
    const n = await writeResults(coord.results(last.sweepId), "csv", join(out, "results.csv"), prov && ((r) => prov.record(r)));
    await writeResults(coord.results(last.sweepId), "jsonl", join(out, "results.jsonl"), prov && ((r) => prov.record(r)));
    await writeResults(coord.results(last.sweepId), "parquet", join(out, "results.parquet"), prov && ((r) => prov.record(r)));
    if (prov) writeFileSync(join(out, "prompts.csv"), csvTable([...prov.promptRows()]));
    writeFileSync(join(out, "run.json"), JSON.stringify(runRecord({ ...record, state: last.state }), null, 2));
    writeFileSync(join(out, "summary.json"), JSON.stringify(coord.summary(last.sweepId), null, 2));
    if (spec.kind === "trace") {
      const { TRACE_FILE } = await import("./report/index.js");
      // The state (a cancelled or failed run's report is partial) and the spec's findings flag travel with the view.
      const view = { ...coord.traceView(last.sweepId), state: last.state, ...(spec.findings !== undefined ? { findings: spec.findings } : {}) };
      writeFileSync(join(out, TRACE_FILE), JSON.stringify(view));
    } else {
      writeFileSync(join(out, KIND_AGGREGATE_FILE), JSON.stringify(coord.summary(last.sweepId))); // the kind's aggregate, read by `sweepctl report`
    }
    writeFileSync(join(out, "sweep.json"), JSON.stringify(control.SweepInfo.toJSON(last), null, 2));
    console.error(describeSweep(last));
    console.error(
      `${n} rows written to ${join(out, "results.csv")}, results.jsonl and results.parquet (with each prompt's text, tokens and swap partner; prompts.csv per prompt); run.json has the spec, code version, seeds and model fingerprint; summary.json has IE/AIE by token group; \`sweepctl report --from ${out}\` draws the heatmaps`,
    );
    code = exitCodeOfState(last.state);
  } finally {
    view?.stop();
    stopping = true;
    for (const a of agents) a.p.kill("SIGTERM");
    await Promise.race([Promise.all(agents.map((a) => a.p)), new Promise((r) => setTimeout(r, 5000))]);
    for (const a of agents) a.p.kill("SIGKILL");
    await coord.stop();
    await nats?.stop();
    logFile.end();
  }
  return code;
}

/** Rows as CSV with a header from the first row's keys. */
export function csvTable(rows: Record<string, string | number>[]): string {
  const keys = Object.keys(rows[0] ?? {});
  return [keys.join(","), ...rows.map((r) => keys.map((k) => csvCell(r[k] ?? "")).join(","))].join("\n") + "\n";
}

/**
 * `sweepctl archive <id> --out <dir>`: a finished sweep written to a run folder (the layout of a
 * `sweepctl local` run, so `report --from` and `compare` read it) and checked there before it is
 * deleted from the coordinator, so NATS is freed without losing a row. Nothing is deleted unless
 * every file was written and holds every row.
 */
import { mkdirSync, readFileSync, writeFileSync, copyFileSync, existsSync } from "node:fs";
import { extname, join, resolve } from "node:path";
import { control } from "@factsweep/proto";
import { KIND_AGGREGATE_FILE } from "@factsweep/planning";
import { CliExit, EXIT, isTerminal, writeResults } from "./cli-output.js";
import { claimOutDir, csvTable } from "./local.js";
import { Provenance } from "./provenance.js";

/** What archive needs of the coordinator (the CLI passes its gRPC calls). */
export interface ArchiveApi {
  get(sweepId: string): Promise<control.SweepInfo>;
  report(sweepId: string): Promise<control.ReportData>;
  results(sweepId: string): AsyncIterable<control.ResultRow>;
  delete(sweepId: string): Promise<control.DeleteReply>;
}

export interface ArchiveOpts {
  out: string;
  /** The sweep's spec: each trace row gains its prompt's text, tokens and swap partner, and a copy is kept. */
  spec?: string;
  overwrite?: boolean;
  /** Write and check the folder but leave the sweep on the coordinator. */
  keep?: boolean;
}

/** Rows of a JSON-lines file. */
const jsonlRows = (file: string): number =>
  readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim()).length;

export async function archiveSweep(id: string, o: ArchiveOpts, api: ArchiveApi): Promise<{ dir: string; rows: number; deleted?: control.DeleteReply }> {
  if (o.spec && !existsSync(o.spec)) throw new CliExit(EXIT.usage, `--spec ${o.spec}: file not found`);
  const info = await api.get(id);
  if (!isTerminal(info.state))
    throw new CliExit(
      EXIT.usage,
      `sweep ${id} is ${info.state}; archive takes a finished, failed or cancelled sweep (wait for it, or \`sweepctl cancel ${id}\` first)`,
    );
  const dir = resolve(o.out);
  mkdirSync(dir, { recursive: true });
  claimOutDir(dir, o.overwrite === true);
  const prov = o.spec && info.kind === "trace" ? Provenance.fromSpecFile(o.spec, id) : undefined;
  const record = prov && ((r: control.ResultRow) => prov.record(r));
  const files = { csv: join(dir, "results.csv"), jsonl: join(dir, "results.jsonl"), parquet: join(dir, "results.parquet") };
  const counts = {
    csv: await writeResults(api.results(id), "csv", files.csv, record),
    jsonl: await writeResults(api.results(id), "jsonl", files.jsonl, record),
    parquet: await writeResults(api.results(id), "parquet", files.parquet, record),
  };
  if (prov) writeFileSync(join(dir, "prompts.csv"), csvTable([...prov.promptRows()]));
  if (o.spec) copyFileSync(o.spec, join(dir, `spec${extname(o.spec) === ".json" ? ".json" : ".yaml"}`));
  const data = await api.report(id);
  if (data.traceJson) writeFileSync(join(dir, "trace.json"), JSON.stringify({ ...JSON.parse(data.traceJson), state: info.state }));
  else writeFileSync(join(dir, KIND_AGGREGATE_FILE), data.aggregateJson);
  writeFileSync(join(dir, "sweep.json"), JSON.stringify(control.SweepInfo.toJSON(info), null, 2));

  // The check before anything is deleted: three formats agree, the file on disk holds them, and a
  // trace sweep has a row for every counted cell.
  const onDisk = jsonlRows(files.jsonl);
  const rows = counts.jsonl;
  const wrong: string[] = [];
  if (counts.csv !== rows || counts.parquet !== rows) wrong.push(`csv ${counts.csv}, jsonl ${rows}, parquet ${counts.parquet} rows`);
  if (onDisk !== rows) wrong.push(`${files.jsonl} holds ${onDisk} of ${rows} rows`);
  if (info.kind === "trace" && rows !== Number(info.counts?.doneCells ?? 0)) wrong.push(`${rows} rows for ${info.counts?.doneCells ?? 0} counted cells`);
  if (wrong.length) throw new CliExit(EXIT.internal, `archive of ${id} not checked (${wrong.join("; ")}); nothing deleted, the files are in ${dir}`);
  if (o.keep) return { dir, rows };
  return { dir, rows, deleted: await api.delete(id) };
}

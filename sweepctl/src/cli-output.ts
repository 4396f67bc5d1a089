/**
 * What sweepctl prints: progress bars, sweep tables, result rows as CSV or JSON lines, and the
 * exit codes scripts rely on.
 */
import { createWriteStream } from "node:fs";
import { SingleBar, Presets } from "cli-progress";
import { status } from "@grpc/grpc-js";
import type { control } from "@factsweep/proto";
import { kindCsvColumns, kindRowRecord } from "@factsweep/planning";
import { PROVENANCE_COLUMNS, answerIdOf, type ProvenanceRecord } from "./provenance.js";

/** sweepctl exit codes (documented in sweepctl/README.md). */
export const EXIT = {
  ok: 0,
  /** The sweep ended failed or cancelled (some shards failed, or it was cancelled). */
  sweepFailed: 1,
  /** Usage error, invalid spec, duplicate id, model path refused, wrong token. */
  usage: 2,
  /** Sweep (or model folder) not found. */
  notFound: 3,
  /** Coordinator unreachable or not ready. */
  unavailable: 4,
  /** Anything else (an internal error of the coordinator). */
  internal: 5,
} as const;

/** The exit code for a gRPC status code. */
export function exitCodeOf(code: status | undefined): number {
  switch (code) {
    case status.INVALID_ARGUMENT:
    case status.ALREADY_EXISTS:
    case status.PERMISSION_DENIED:
    case status.UNAUTHENTICATED:
    case status.FAILED_PRECONDITION:
    case status.OUT_OF_RANGE:
      return EXIT.usage;
    case status.NOT_FOUND:
      return EXIT.notFound;
    case status.UNAVAILABLE:
    case status.DEADLINE_EXCEEDED:
    case status.CANCELLED: // the coordinator went away mid-call
      return EXIT.unavailable;
    default:
      return EXIT.internal;
  }
}

/** Exit code of a finished sweep. */
export const exitCodeOfState = (state: string): number => (state === "done" ? EXIT.ok : state === "running" ? EXIT.ok : EXIT.sweepFailed);

const TERMINAL = new Set(["done", "failed", "cancelled"]);
export const isTerminal = (state: string): boolean => TERMINAL.has(state);

const fmtEta = (s: number): string => {
  if (!Number.isFinite(s) || s <= 0) return "-";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : m > 0 ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
};

/** Seconds without a progress update after which a running sweep's rate is shown as stalled. */
export const STALL_SECONDS = 30;

/**
 * What a running sweep's rate and ETA say: "waiting for agents" while no shard is leased (nobody
 * serves it), "stalled" when no result came for STALL_SECONDS, no ETA before the coordinator has one.
 */
export function rateText(info: control.SweepInfo, sinceUpdateS = 0): { rate: string; eta: string } {
  const c = info.counts;
  if (info.state !== "running") return { rate: "-", eta: "-" };
  if ((c?.shardsLeased ?? 0) === 0 && (c?.shardsPending ?? 0) > 0) return { rate: "0.0", eta: "waiting for agents" };
  if ((c?.doneCells ?? 0) === 0) return { rate: "0.0", eta: "- (no result yet: workers loading the model)" };
  if (sinceUpdateS >= STALL_SECONDS) return { rate: "0.0", eta: `stalled (no result for ${Math.round(sinceUpdateS)}s)` };
  return { rate: info.cellsPerSecond.toFixed(1), eta: info.etaSeconds > 0 ? fmtEta(info.etaSeconds) : "-" };
}

/** A progress bar of a sweep (cells done of planned, cells/s, ETA) on stderr. */
export class ProgressView {
  private readonly bar: SingleBar;
  private started = false;
  private last?: { info: control.SweepInfo; at: number };
  private readonly timer: NodeJS.Timeout;

  constructor() {
    this.bar = new SingleBar(
      {
        format: "{sweep} {bar} {percentage}% | {value}/{total} cells | {rate} cells/s | ETA {etaText} | shards {done}/{shards} leased {leased} failed {failed}",
        stream: process.stderr,
        hideCursor: process.stderr.isTTY === true,
        noTTYOutput: true,
        notTTYSchedule: 5000,
        etaBuffer: 1,
      },
      Presets.shades_classic,
    );
    // Watch sends nothing while no result arrives: redraw so a stalled sweep does not keep its last rate.
    this.timer = setInterval(() => this.last && this.draw(this.last.info, (Date.now() - this.last.at) / 1000), 5000);
    this.timer.unref();
  }

  update(info: control.SweepInfo): void {
    const prevDone = this.last?.info.counts?.doneCells;
    this.last = { info, at: prevDone === info.counts?.doneCells && this.last ? this.last.at : Date.now() };
    this.draw(info, (Date.now() - this.last.at) / 1000);
  }

  private draw(info: control.SweepInfo, sinceUpdateS: number): void {
    const c = info.counts;
    const { rate, eta } = rateText(info, sinceUpdateS);
    const payload = {
      sweep: info.sweepId,
      rate,
      etaText: eta,
      done: c?.shardsDone ?? 0,
      shards: c?.shardsTotal ?? 0,
      leased: c?.shardsLeased ?? 0,
      failed: c?.shardsFailed ?? 0,
    };
    const total = Math.max(1, c?.plannedCells ?? 0);
    if (!this.started) {
      this.bar.start(total, c?.doneCells ?? 0, payload);
      this.started = true;
    } else {
      this.bar.setTotal(total);
      this.bar.update(c?.doneCells ?? 0, payload);
    }
  }

  stop(): void {
    clearInterval(this.timer);
    if (this.started) this.bar.stop();
    this.started = false;
  }
}

/** A human summary of a sweep. */
export function describeSweep(info: control.SweepInfo): string {
  const c = info.counts;
  const lines = [
    `sweep      ${info.sweepId}  (${info.name}, ${info.kind})`,
    `state      ${info.state}`,
    `cells      ${c?.doneCells ?? 0}/${c?.plannedCells ?? 0}` + (info.state === "running" ? ((r) => `  ${r.rate} cells/s  ETA ${r.eta}`)(rateText(info)) : ""),
    `shards     ${c?.shardsDone ?? 0} done, ${c?.shardsLeased ?? 0} leased, ${c?.shardsPending ?? 0} pending, ${c?.shardsFailed ?? 0} failed (of ${c?.shardsTotal ?? 0}); ${c?.retries ?? 0} retries`,
    ...(info.state === "running"
      ? [`share      ${Math.round((info.leaseShare ?? 0) * 100)}% of the leases in flight (priority ${info.priority ?? 0}, weight ${info.weight || 1})`]
      : []),
    `created    ${new Date(info.createdMs).toISOString()}` + (info.finishedMs ? `  finished ${new Date(info.finishedMs).toISOString()}` : ""),
  ];
  if (info.promptErrors.length > 0) {
    lines.push(`skipped    ${info.promptErrors.length} prompt(s):`);
    for (const e of info.promptErrors.slice(0, 20)) lines.push(`  prompt ${e.promptIndex}: ${e.message}`);
    if (info.promptErrors.length > 20) lines.push(`  ... ${info.promptErrors.length - 20} more`);
  }
  if (info.failedShards.length > 0) {
    lines.push(`failed     ${info.failedShards.length} shard(s) (sweepctl resume ${info.sweepId} re-queues them):`);
    for (const f of info.failedShards.slice(0, 20)) lines.push(`  ${f}`);
  }
  return lines.join("\n");
}

/** One line per sweep. */
export function sweepTable(sweeps: control.SweepInfo[]): string {
  // SHARE: the sweep's part of the leases in flight (running sweeps share the agents by PRIO, then WEIGHT).
  const rows = [["SWEEP", "STATE", "CELLS", "SHARDS FAILED", "PRIO", "WEIGHT", "SHARE", "CREATED", "NAME"]];
  for (const s of sweeps) {
    rows.push([
      s.sweepId,
      s.state,
      `${s.counts?.doneCells ?? 0}/${s.counts?.plannedCells ?? 0}`,
      String(s.counts?.shardsFailed ?? 0),
      String(s.priority ?? 0),
      String(s.weight || 1),
      s.state === "running" ? `${Math.round((s.leaseShare ?? 0) * 100)}%` : "-",
      new Date(s.createdMs).toISOString(),
      s.name,
    ]);
  }
  return table(rows);
}

/** One line per agent. */
export function agentTable(agents: control.AgentStatus[]): string {
  const rows = [["AGENT", "HOST", "WORKERS", "LEASES", "CACHED PROMPTS", "SHARDS DONE", "LAST SEEN"]];
  for (const a of agents)
    rows.push([
      a.agentId,
      a.hostname,
      String(a.workers),
      String(a.leases),
      String(a.cachedPrompts),
      String(a.shardsDone),
      new Date(a.lastSeenMs).toISOString(),
    ]);
  return table(rows);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** Column order of the CSV export (snake_case, as in the JSONL export). */
export const RESULT_COLUMNS = [
  "sweep_id",
  "model",
  "prompt_index",
  "subject",
  "site",
  "head",
  "layer",
  "token",
  "window",
  "token_group",
  "p",
  "p_clean",
  "p_corrupt",
  "ie",
  "corruption",
] as const;

/** A result row as a snake_case record. */
export function rowRecord(r: control.ResultRow): Record<(typeof RESULT_COLUMNS)[number], string | number> {
  return {
    sweep_id: r.sweepId,
    model: r.model,
    prompt_index: r.promptIndex,
    subject: r.subject,
    site: r.site,
    head: r.head ?? "", // empty: the whole site
    layer: r.layer,
    token: r.token,
    window: r.window,
    token_group: r.tokenGroup,
    p: r.p,
    p_clean: r.pClean,
    p_corrupt: r.pCorrupt,
    ie: r.ie,
    corruption: r.corruption,
  };
}

/** One CSV field, quoted when it holds a comma, quote or line break. */
export const csvCell = (v: string | number | boolean | null): string => {
  const s = v === null ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

const isKindRow = (r: Pick<control.ResultRow, "kind">): boolean => Boolean(r.kind) && r.kind !== "trace";

/** A trace row's provenance columns: from the sweep's plan when known (`Provenance.record`), else only the answer id the row carries. */
export type ProvenanceOf = (r: control.ResultRow) => ProvenanceRecord;
const bareProvenance: ProvenanceOf = (r) => ({
  answer_id: answerIdOf(r) ?? "",
  answer: "",
  prompt: "",
  relation: "",
  object: "",
  token_str: "",
  swap_subject: "",
  corrupted_prompt: "",
});

/** CSV header line; a row of an experiment kind (knockout, sever, lre, edit) has that kind's columns. */
export const csvHeader = (first?: Pick<control.ResultRow, "kind">): string =>
  (first && isKindRow(first) ? kindCsvColumns(first.kind) : [...RESULT_COLUMNS, ...PROVENANCE_COLUMNS]).join(",");
/** One CSV line. */
export const csvLine = (r: control.ResultRow, prov: ProvenanceOf = bareProvenance): string => {
  if (isKindRow(r)) {
    const rec = kindRowRecord(r);
    return kindCsvColumns(r.kind)
      .map((k) => csvCell(rec[k] ?? ""))
      .join(",");
  }
  const rec: Record<string, string | number> = { ...rowRecord(r), ...prov(r) };
  return [...RESULT_COLUMNS, ...PROVENANCE_COLUMNS].map((k) => csvCell(rec[k] ?? "")).join(",");
};
/** A result row as the record every export writes (a kind's columns, or trace columns with provenance). */
export const resultRecord = (r: control.ResultRow, prov: ProvenanceOf = bareProvenance): Record<string, string | number | boolean | null> =>
  isKindRow(r) ? kindRowRecord(r) : { ...rowRecord(r), ...prov(r) };
/** One JSON line. */
export const jsonLine = (r: control.ResultRow, prov: ProvenanceOf = bareProvenance): string => JSON.stringify(resultRecord(r, prov));

/** An error that ends sweepctl with a given exit code and message. */
export class CliExit extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
    this.name = "CliExit";
  }
}

/** Writes result rows as CSV or JSON lines to a file or stdout, or as Parquet to a file; returns the row count. */
export async function writeResults(
  rows: AsyncIterable<control.ResultRow> | Iterable<control.ResultRow>,
  format: "csv" | "jsonl" | "parquet",
  out?: string,
  prov?: ProvenanceOf,
): Promise<number> {
  if (format === "parquet") {
    if (!out) throw new CliExit(EXIT.usage, "--format parquet writes a file: add --out <file.parquet>");
    const { writeParquet } = await import("./parquet.js");
    return writeParquet(
      (async function* () {
        for await (const r of rows) yield resultRecord(r, prov);
      })(),
      out,
    );
  }
  const sink = out ? createWriteStream(out) : process.stdout;
  const write = (s: string) => new Promise<void>((res) => (sink.write(s) ? res() : sink.once("drain", () => res())));
  let n = 0;
  for await (const r of rows) {
    if (format === "csv" && n === 0) await write(csvHeader(r) + "\n"); // the columns depend on the sweep's kind
    await write((format === "csv" ? csvLine(r, prov) : jsonLine(r, prov)) + "\n");
    n++;
  }
  if (format === "csv" && n === 0) await write(csvHeader() + "\n");
  if (out) await new Promise<void>((res) => (sink as ReturnType<typeof createWriteStream>).end(() => res()));
  return n;
}

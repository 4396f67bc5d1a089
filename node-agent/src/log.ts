/**
 * Line logger of the agent: one line per event on stderr (stdout carries only the ready line, so a
 * parent process can read it without parsing logs).
 */

/** Severity of a log line. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Writes log lines; `child` adds a prefix such as `[worker cuda:0]`. */
export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  child(prefix: string): Logger;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** A logger writing `<ISO time> <LEVEL> <prefix> <msg>` lines to `write` (default stderr). */
export function createLogger(prefix: string, opts: { level?: LogLevel; write?: (line: string) => void } = {}): Logger {
  const min = ORDER[opts.level ?? "info"];
  const write = opts.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const emit = (level: LogLevel, msg: string) => {
    if (ORDER[level] < min) return;
    write(`${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${prefix} ${msg}`);
  };
  return {
    debug: (m) => emit("debug", m),
    info: (m) => emit("info", m),
    warn: (m) => emit("warn", m),
    error: (m) => emit("error", m),
    child: (p) => createLogger(`${prefix} ${p}`, opts),
  };
}

/** A logger that keeps its lines in memory (embedding, tests), at debug level. */
export function memoryLogger(prefix = "test"): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log = createLogger(prefix, { level: "debug", write: (l) => lines.push(l) });
  return Object.assign(log, { lines });
}

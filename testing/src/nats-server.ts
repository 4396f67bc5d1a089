/**
 * Start a real `nats-server -js` child process on the loopback interface: used by tests and by the
 * CLI's embedded mode. No mock: JetStream semantics (dedup windows, KV, durable consumers) are
 * exactly those of the production server.
 */
import { mkdtemp, rm, mkdir } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa, type ResultPromise } from "execa";
import { NatsServerError } from "./errors.js";

/** Options of {@link startNatsServer}. */
export interface NatsServerOptions {
  /** Client port; default a free loopback port. */
  port?: number;
  /** JetStream file store folder; default a new temp folder (removed by `stop()`). */
  storeDir?: string;
  /** Monitoring HTTP port (`-m`); default none. */
  httpPort?: number;
  /** Extra nats-server arguments (e.g. `["--user", "u", "--pass", "p"]`). */
  args?: string[];
  /** Executable; default `nats-server` from PATH (env FACTSWEEP_NATS_SERVER overrides). */
  bin?: string;
  /** How long to wait for "Server is ready"; default 15 s. */
  readyTimeoutMs?: number;
}

/** A running nats-server child. */
export interface NatsServerHandle {
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  /** pid of the current child (changes after `restart()`). */
  readonly pid: number;
  /** SIGTERM and wait for exit; removes the store dir if this handle created it. Idempotent. */
  stop(): Promise<void>;
  /** Send a signal (default SIGKILL) without waiting: for fault tests. */
  kill(signal?: NodeJS.Signals): void;
  /** Stop (if running) and start again on the same port and store dir; data in JetStream survives. */
  restart(): Promise<void>;
}

/** Find a free TCP port on 127.0.0.1 (bind port 0, read it, close). */
export async function freePort(): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

const NOT_INSTALLED =
  "nats-server is not installed (not found on PATH). Install the Debian package: `apt-get install -y nats-server` " +
  "(or set FACTSWEEP_NATS_SERVER to the executable)";

type Child = ResultPromise<{ stdin: "ignore"; stdout: "ignore"; stderr: "pipe"; reject: false; buffer: false }>;

/**
 * Start `nats-server -js` on 127.0.0.1 and wait until it is ready for clients.
 *
 * @example
 * const nats = await startNatsServer();
 * const nc = await connect({ servers: nats.url });
 * // ...
 * await nc.close(); await nats.stop();
 */
export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServerHandle> {
  if (opts.port !== undefined && (!Number.isInteger(opts.port) || opts.port <= 0 || opts.port > 65535)) {
    throw new NatsServerError(`Expected \`port\` to be an integer in 1..65535, got ${String(opts.port)}`);
  }
  const bin = opts.bin ?? process.env.FACTSWEEP_NATS_SERVER ?? "nats-server";
  const ownStore = opts.storeDir === undefined;
  const storeDir = opts.storeDir ?? (await mkdtemp(join(tmpdir(), "factsweep-nats-")));
  await mkdir(storeDir, { recursive: true });
  const readyTimeoutMs = opts.readyTimeoutMs ?? 15_000;
  let port = opts.port ?? (await freePort());

  let child: Child | undefined;
  let exited: Promise<void> = Promise.resolve();
  let stopped = false;

  const launch = async (): Promise<void> => {
    const args = ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir];
    if (opts.httpPort !== undefined) args.push("-m", String(opts.httpPort));
    args.push(...(opts.args ?? []));
    const proc = execa(bin, args, {
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
      reject: false,
      buffer: false,
      cleanup: true,
    }) as Child;
    child = proc;
    exited = proc.then(
      () => undefined,
      () => undefined,
    );
    let log = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill("SIGKILL");
        reject(new NatsServerError(`nats-server on port ${port} not ready after ${readyTimeoutMs} ms; log:\n${log}`, port));
      }, readyTimeoutMs);
      const onData = (chunk: Buffer): void => {
        log += chunk.toString("utf8");
        if (log.length > 20_000) log = log.slice(-20_000);
        if (log.includes("Server is ready")) {
          clearTimeout(timer);
          resolve();
        }
      };
      proc.stderr?.on("data", onData);
      proc.on("error", (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(
          err.code === "ENOENT"
            ? new NatsServerError(NOT_INSTALLED, port, { cause: err })
            : new NatsServerError(`cannot start nats-server: ${err.message}`, port, { cause: err }),
        );
      });
      void proc.then((res) => {
        clearTimeout(timer);
        const enoent = (res as { code?: string }).code === "ENOENT" || /ENOENT/.test(String((res as { message?: string }).message ?? ""));
        if (enoent) reject(new NatsServerError(NOT_INSTALLED, port));
        else
          reject(
            new NatsServerError(
              `nats-server exited (code ${String(res.exitCode)}, signal ${String(res.signal)}) before it was ready on port ${port}; log:\n${log}`,
              port,
            ),
          );
      });
    });
    // Keep draining stderr so the child never blocks on a full pipe.
    proc.stderr?.resume();
  };

  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) {
      await exited;
      return;
    }
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  };

  // A port picked by freePort can be taken between the probe and the bind: retry with a new one.
  for (let attempt = 0; ; attempt++) {
    try {
      await launch();
      break;
    } catch (err) {
      const busy = err instanceof NatsServerError && /address already in use/i.test(err.message);
      if (busy && opts.port === undefined && attempt < 4) {
        port = await freePort();
        continue;
      }
      if (ownStore) await rm(storeDir, { recursive: true, force: true });
      throw err;
    }
  }

  return {
    get url() {
      return `nats://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    storeDir,
    get pid() {
      return child?.pid ?? -1;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt("SIGTERM");
      if (ownStore) await rm(storeDir, { recursive: true, force: true });
    },
    kill(signal: NodeJS.Signals = "SIGKILL") {
      child?.kill(signal);
    },
    async restart() {
      if (stopped) throw new NatsServerError("restart() after stop(): the handle is closed", port);
      await halt("SIGTERM");
      // The old listener can linger for a moment after exit; retry the bind briefly.
      for (let attempt = 0; ; attempt++) {
        try {
          await launch();
          return;
        } catch (err) {
          if (attempt < 20 && err instanceof NatsServerError && /address already in use/i.test(err.message)) {
            await new Promise((r) => setTimeout(r, 250));
            continue;
          }
          throw err;
        }
      }
    },
  };
}

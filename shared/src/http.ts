/**
 * The small HTTP server every process runs: `/metrics` (Prometheus), `/healthz` (alive),
 * `/readyz` (ready for work), plus optional extra routes (the coordinator's result reports).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Registry } from "prom-client";

/** An extra route handler; `url` is parsed against the request's Host. */
export type RouteHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

/** Options of {@link startHttpServer}. */
export interface HttpServerOptions {
  /** Port; 0 (default) picks a free one. */
  port?: number;
  /** Bind address; default 127.0.0.1 (use 0.0.0.0 in containers). */
  host?: string;
  registry: Registry;
  /** Liveness: details to report (200), or false / a throw (503, with the message). */
  health?: () => Record<string, unknown> | boolean | Promise<Record<string, unknown> | boolean>;
  /** Readiness; false makes /readyz answer 503. */
  ready?: () => boolean | Promise<boolean>;
  /** Extra routes by path ("/results") or method and path ("POST /drain"). */
  routes?: Record<string, RouteHandler>;
}

/** A running HTTP server. */
export interface HttpServerHandle {
  readonly url: string;
  readonly port: number;
  readonly server: Server;
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, body: string, type = "text/plain; charset=utf-8"): void {
  res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
  res.end(body);
}

/**
 * Serve /metrics, /healthz, /readyz and `routes`.
 *
 * @example
 * const http = await startHttpServer({ port: 9464, registry, ready: () => natsConnected });
 */
export async function startHttpServer(opts: HttpServerOptions): Promise<HttpServerHandle> {
  const host = opts.host ?? "127.0.0.1";
  const routes = opts.routes ?? {};
  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? "/", `http://${req.headers.host ?? host}`);
      const method = req.method ?? "GET";
      try {
        const route = routes[`${method} ${url.pathname}`] ?? (method === "GET" || method === "HEAD" ? routes[url.pathname] : undefined);
        if (route) return await route(req, res, url);
        if (method !== "GET" && method !== "HEAD") return send(res, 405, `method ${method} not allowed on ${url.pathname}\n`);
        switch (url.pathname) {
          case "/metrics":
            return send(res, 200, await opts.registry.metrics(), opts.registry.contentType);
          case "/healthz": {
            try {
              const details = opts.health ? await opts.health() : {};
              if (details === false) return send(res, 503, JSON.stringify({ status: "unhealthy" }), "application/json");
              return send(res, 200, JSON.stringify({ status: "ok", ...(details === true ? {} : details) }), "application/json");
            } catch (err) {
              return send(res, 503, JSON.stringify({ status: "unhealthy", error: (err as Error).message }), "application/json");
            }
          }
          case "/readyz": {
            const ok = opts.ready ? await opts.ready() : true;
            return send(res, ok ? 200 : 503, ok ? "ready\n" : "not ready\n");
          }
          default:
            return send(
              res,
              404,
              `not found: ${url.pathname} (serves /metrics, /healthz, /readyz${Object.keys(routes).length ? ", " + Object.keys(routes).join(", ") : ""})\n`,
            );
        }
      } catch (err) {
        if (!res.headersSent) send(res, 500, `internal error: ${(err as Error).message}\n`);
        else res.destroy(err as Error);
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  const shownHost = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;
  return {
    url: `http://${shownHost}:${port}`,
    port,
    server,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}

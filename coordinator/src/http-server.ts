/** The coordinator's HTTP endpoints: /metrics (Prometheus), /healthz (alive), /readyz (serving). */
import { createServer } from "node:http";
import type { Registry } from "prom-client";

/** A started HTTP server. */
export interface HttpHandle {
  port: number;
  close(): Promise<void>;
}

/** Starts the HTTP server; `health` and `ready` are read on every probe. */
export async function startHttp(opts: { host: string; port: number; registry: Registry; health: () => boolean; ready: () => boolean }): Promise<HttpHandle> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const probe = (ok: boolean, what: string) => {
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" }).end(ok ? "ok\n" : `not ${what}\n`);
    };
    if (path === "/metrics") {
      opts.registry.metrics().then(
        (body) => res.writeHead(200, { "content-type": opts.registry.contentType }).end(body),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    } else if (path === "/healthz") probe(opts.health(), "healthy");
    else if (path === "/readyz") probe(opts.ready(), "ready");
    else res.writeHead(404, { "content-type": "text/plain" }).end("not found: try /metrics, /healthz, /readyz\n");
  });
  await new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen(opts.port, opts.host, () => res());
  });
  const addr = server.address();
  return {
    port: typeof addr === "object" && addr ? addr.port : opts.port,
    close: () => new Promise<void>((res) => {
      server.closeAllConnections();
      server.close(() => res());
    }),
  };
}

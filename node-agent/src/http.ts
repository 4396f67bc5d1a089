/**
 * The agent's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (process is sound),
 * `/readyz` (a worker is ready, NATS and the coordinator are connected, not draining).
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

/** A bound HTTP server. */
export interface AgentHttp {
  port: number;
  close(): Promise<void>;
}

/** Starts the server; `port` 0 binds a free port (read it from the result). */
export async function startAgentHttp(opts: {
  port: number;
  host?: string;
  registry: Registry;
  health: () => boolean;
  ready: () => boolean;
}): Promise<AgentHttp> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const reply = (code: number, body: string, type = "text/plain; charset=utf-8") => {
      res.writeHead(code, { "content-type": type });
      res.end(body);
    };
    if (path === "/metrics") {
      opts.registry.metrics().then(
        (text) => reply(200, text, opts.registry.contentType),
        (err: Error) => reply(500, `metrics failed: ${err.message}\n`),
      );
    } else if (path === "/healthz") {
      const ok = opts.health();
      reply(ok ? 200 : 503, ok ? "ok\n" : "unhealthy\n");
    } else if (path === "/readyz") {
      const ok = opts.ready();
      reply(ok ? 200 : 503, ok ? "ready\n" : "not ready\n");
    } else {
      reply(404, "not found: try /metrics, /healthz or /readyz\n");
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host ?? "0.0.0.0", () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * `sweepctl serve <ids...>`: the report of sweeps on a coordinator as a live page. The server asks
 * the coordinator for each sweep's state every `pollMs`; when cells were added or a state changed
 * it renders the report again (the same page `report` writes; a sweep not done is marked
 * "partial: n of N facts" on the page and on every figure). The page long-polls `/wait?since=<v>`,
 * which answers as soon as a newer version exists (or after 25 s), and swaps the report in place:
 * no reload, scroll position kept.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { control } from "@factsweep/proto";
import type { KindAggregate } from "@factsweep/planning";
import type { ModelTrace } from "./report/types.js";

/** One sweep as the coordinator reports it (Get and Report). */
export interface SweepSnapshot {
  info: control.SweepInfo;
  data: control.ReportData;
}

export interface ServeOptions {
  ids: string[];
  load: (id: string) => Promise<SweepSnapshot>;
  title: string;
  host: string;
  port: number;
  pollMs?: number;
  /** Called with errors of a poll (the page keeps its last version). */
  onError?: (err: Error) => void;
}

const LONG_POLL_MS = 25_000;

/** The page: the report's style and body, plus the script that long-polls and swaps it in. */
function shell(title: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title.replace(/</g, "&lt;")}</title><style id="report-style"></style></head><body>
<div id="report">loading…</div>
<pre id="live-log" hidden></pre>
<script>
let version = -1;
const log = document.getElementById("live-log");
async function poll() {
  for (;;) {
    try {
      const r = await fetch("/wait?since=" + version, { cache: "no-store" });
      const v = await r.json();
      if (v.version !== version) {
        version = v.version;
        document.getElementById("report-style").textContent = v.style;
        document.getElementById("report").innerHTML = v.body;
        // What each in-place update showed (read by the tests): version, facts, states, whether marked partial.
        const partial = document.querySelector("#report .partial.banner")?.textContent ?? "";
        log.textContent += JSON.stringify({ version: v.version, facts: v.facts, states: v.states, partial }) + "\\n";
      }
      if (v.states.every((s) => s === "done" || s === "failed" || s === "cancelled")) return; // nothing more will change
    } catch (e) {
      await new Promise((res) => setTimeout(res, 2000));
    }
  }
}
poll();
</script></body></html>
`;
}

/** A running `serve`: its URL and how to stop it. */
export interface Served {
  url: string;
  close(): Promise<void>;
}

/** Starts the live report server. */
export async function serveReports(o: ServeOptions): Promise<Served> {
  const { renderReport } = await import("./report/render.js");
  const { kindSections } = await import("./report/kinds.js");
  let version = 0;
  let page = { style: "", body: "<p>waiting for the first report…</p>", facts: [] as number[], states: [] as string[] };
  let seen = "";
  const waiters = new Set<() => void>();

  const refresh = async (): Promise<void> => {
    const snaps = await Promise.all(o.ids.map((id) => o.load(id)));
    const key = JSON.stringify(snaps.map((s) => [s.info.state, s.info.counts?.doneCells ?? 0]));
    if (key === seen) return;
    const traces: ModelTrace[] = [];
    const kinds: KindAggregate[] = [];
    for (const s of snaps) {
      if (s.data.traceJson) traces.push({ ...(JSON.parse(s.data.traceJson) as ModelTrace), state: s.info.state });
      else kinds.push(JSON.parse(s.data.aggregateJson) as KindAggregate);
    }
    const html = await renderReport({ title: o.title, created: new Date().toISOString(), models: traces }, kinds.length ? await kindSections(kinds) : []);
    page = {
      style: /<style>([^]*?)<\/style>/.exec(html)?.[1] ?? "",
      body: /<body>([^]*)<\/body>/.exec(html)?.[1] ?? html,
      facts: traces.map((t) => t.facts),
      states: snaps.map((s) => s.info.state),
    };
    seen = key;
    version++;
    for (const w of waiters) w();
    waiters.clear();
  };

  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const loop = async (): Promise<void> => {
    try {
      await refresh();
    } catch (err) {
      o.onError?.(err as Error);
    }
    if (!stopped) timer = setTimeout(() => void loop(), o.pollMs ?? 1000);
  };
  await loop();

  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(shell(o.title));
      return;
    }
    if (url.pathname === "/wait") {
      const since = Number(url.searchParams.get("since") ?? -1);
      const answer = () => res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" }).end(JSON.stringify({ version, ...page }));
      if (version > since || page.states.every((s) => s !== "running")) return answer();
      const t = setTimeout(() => {
        waiters.delete(wake);
        answer();
      }, LONG_POLL_MS);
      const wake = () => {
        clearTimeout(t);
        answer();
      };
      waiters.add(wake);
      req.on("close", () => waiters.delete(wake));
      return;
    }
    res.writeHead(404).end("not found");
  });
  await new Promise<void>((res) => server.listen(o.port, o.host, res));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${o.host.includes(":") ? `[${o.host}]` : o.host}:${port}/`,
    close: async () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      for (const w of waiters) w();
      await new Promise<void>((res) => server.close(() => res()));
    },
  };
}

/** `sweepctl serve`: prints the URL and serves until SIGINT or SIGTERM. */
export async function serveUntilSignal(o: ServeOptions): Promise<void> {
  const s = await serveReports(o);
  console.log(s.url);
  await new Promise<void>((res) => {
    process.once("SIGINT", res);
    process.once("SIGTERM", res);
  });
  await s.close();
}

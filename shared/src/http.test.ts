import { test } from "node:test";
import assert from "node:assert/strict";
import { Counter } from "prom-client";
import { startHttpServer } from "./http.js";
import { createRegistry } from "./metrics.js";
import { METRICS } from "./metric-names.js";

test("/metrics serves the registry with the component label and default metrics; /healthz and /readyz reflect the callbacks", async () => {
  const registry = createRegistry("coordinator");
  const cells = new Counter({ name: METRICS.cellsTotal, help: "cells by status", labelNames: ["status"], registers: [registry] });
  cells.inc({ status: "done" }, 3);
  let ready = false;
  let healthy = true;
  const http = await startHttpServer({
    registry,
    ready: () => ready,
    health: () => {
      if (!healthy) throw new Error("nats disconnected");
      return { sweeps: 2 };
    },
    routes: { "/results": (_req, res, url) => void res.end(`results of ${url.searchParams.get("sweep")}`) },
  });
  try {
    const metrics = await (await fetch(`${http.url}/metrics`)).text();
    assert.match(metrics, /factsweep_cells_total\{status="done",component="coordinator"\} 3/);
    assert.match(metrics, /process_cpu_user_seconds_total/);
    assert.equal((await fetch(`${http.url}/readyz`)).status, 503);
    ready = true;
    assert.equal((await fetch(`${http.url}/readyz`)).status, 200);
    const h = await fetch(`${http.url}/healthz`);
    assert.deepEqual(await h.json(), { status: "ok", sweeps: 2 });
    healthy = false;
    const bad = await fetch(`${http.url}/healthz`);
    assert.equal(bad.status, 503);
    assert.match(await bad.text(), /nats disconnected/);
    assert.equal(await (await fetch(`${http.url}/results?sweep=s1`)).text(), "results of s1");
    assert.equal((await fetch(`${http.url}/nope`)).status, 404);
  } finally {
    await http.close();
  }
});

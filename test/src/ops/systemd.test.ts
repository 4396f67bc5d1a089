import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { deployDir } from "./paths.js";
import { missing, run } from "./tools.js";

const dir = join(deployDir, "systemd");
const units = readdirSync(dir)
  .filter((f) => f.endsWith(".service"))
  .sort();

test("systemd-analyze verify accepts the units without a warning", { skip: missing("systemd-analyze") }, async () => {
  assert.deepEqual(units, ["factsweep-agent.service", "factsweep-coordinator.service", "factsweep-nats.service"]);
  // verify exits 0 on unknown keys and unparsable values; its warnings are the failures.
  const r = await run("systemd-analyze", ["verify", ...units.map((u) => join(dir, u))]);
  assert.equal(r.exitCode, 0, r.output);
  assert.equal(r.output.trim(), "", r.output);
});

test("every unit restarts on failure and its sample environment file defines each variable ExecStart uses", () => {
  const envFor: Record<string, string> = {
    "factsweep-nats.service": "nats.env",
    "factsweep-coordinator.service": "coordinator.env",
    "factsweep-agent.service": "agent.env",
  };
  for (const u of units) {
    const text = readFileSync(join(dir, u), "utf8");
    assert.match(text, /^Restart=on-failure$/m, `${u}: Restart=on-failure`);
    const exec = /^ExecStart=(.*)$/m.exec(text)![1]!;
    const used = [...exec.matchAll(/\$\{?(\w+)\}?/g)].map((m) => m[1]!);
    const env = readFileSync(join(dir, envFor[u]!), "utf8");
    const defined = new Set([...env.matchAll(/^(\w+)=/gm)].map((m) => m[1]!));
    assert.deepEqual(
      used.filter((v) => !defined.has(v)),
      [],
      `${u}: variables missing from ${envFor[u]}`,
    );
  }
});

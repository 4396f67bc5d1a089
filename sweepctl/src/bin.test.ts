import assert from "node:assert/strict";
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { REPO_ROOT } from "@factsweep/testing";

test("`npx sweepctl` runs the built CLI from the workspace bin npm linked, offline", async () => {
  // npm links a workspace's bin at `npm ci` time, before any build: the target is the committed shim.
  assert.equal(realpathSync(join(REPO_ROOT, "node_modules", ".bin", "sweepctl")), join(REPO_ROOT, "sweepctl", "bin", "sweepctl.js"));
  const r = await execa("npx", ["--no-install", "sweepctl", "--help"], { cwd: REPO_ROOT, reject: false, env: { npm_config_offline: "true" } });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /^Usage: sweepctl /);
  assert.match(r.stdout, /report \[options\]/);
});

test("`npx factsweep-coordinator` and `npx factsweep-agent` run the built daemons from their committed bin shims, offline", async () => {
  for (const [name, dir] of [
    ["factsweep-coordinator", "coordinator"],
    ["factsweep-agent", "node-agent"],
  ] as const) {
    assert.equal(realpathSync(join(REPO_ROOT, "node_modules", ".bin", name)), join(REPO_ROOT, dir, "bin", `${name}.js`));
    const r = await execa("npx", ["--no-install", name, "--help"], { cwd: REPO_ROOT, reject: false, env: { npm_config_offline: "true" } });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^Usage: ${name} `));
  }
});

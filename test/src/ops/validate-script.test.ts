import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { deployDir } from "./paths.js";
import { missing, run } from "./tools.js";

const skip = missing("promtool") || missing("docker-compose") || missing("systemd-analyze");

test("deploy/validate.sh runs every validator and passes", { skip }, async () => {
  const r = await run("bash", [join(deployDir, "validate.sh")]);
  assert.equal(r.exitCode, 0, r.output);
  for (const check of [
    "promtool check rules",
    "promtool test rules",
    "promtool check config prometheus.yml",
    "docker-compose config",
    "Kubernetes schemas",
    "systemd-analyze verify",
  ]) {
    assert.match(r.output, new RegExp(`^ok {4}.*${check}`, "m"), `validate.sh ran: ${check}`);
  }
  assert.match(r.output, /^all checks passed$/m);
});

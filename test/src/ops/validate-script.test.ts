import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { deployDir } from "./paths.js";
import { missing, run } from "./tools.js";

const skip = missing("promtool") || missing("docker-compose") || missing("systemd-analyze");

test("deploy/validate.sh --files-only runs every validator and passes", { skip }, async () => {
  const r = await run("bash", [join(deployDir, "validate.sh"), "--files-only"]);
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
  assert.match(r.output, /^all file checks passed \(secrets not checked: --files-only\)$/m);
  assert.doesNotMatch(r.output, /^all checks passed$/m);
});

test("deploy/validate.sh does not pass while the production overlay's secrets are the shipped placeholders, and names each", async () => {
  const r = await run("bash", [join(deployDir, "validate.sh"), "--secrets-only"]);
  assert.equal(r.exitCode, 1, r.output);
  assert.match(r.output, /^FAIL {2}no placeholder secrets/m);
  for (const f of ["user-token", "agent-token", "nats.creds", "nats-agent.creds", "nats-tls.crt", "nats-tls.key", "tls.crt", "tls.key", "ca.crt"]) {
    assert.match(r.output, new RegExp(`overlays/production/secrets/${f.replace(".", "\\.")}$`, "m"), `names ${f}`);
  }
  assert.doesNotMatch(r.output, /all checks passed/);
});

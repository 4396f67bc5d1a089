/**
 * --agent-id-from-cert: under mTLS an agent's id must be named by its client certificate (subject CN
 * or a DNS name of its subjectAltName), so a client holding one agent's certificate cannot connect as
 * another agent. Real certificates made with openssl, the real coordinator, raw agent streams.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import * as grpc from "@grpc/grpc-js";
import { AGENT_PROTOCOL_VERSION, type agent } from "@factsweep/proto";
import { agentStream, startHarness, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

const dir = mkdtempSync(join(tmpdir(), "factsweep-agent-cert-"));
const f = (n: string) => join(dir, n);
const ossl = (...a: string[]) => execa("openssl", a, { cwd: dir });

/** A certificate signed by the test CA with subject CN `cn` and the given subjectAltName. */
async function issue(name: string, cn: string, san: string): Promise<void> {
  writeFileSync(f(`${name}.ext`), `subjectAltName=${san}\n`);
  await ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`);
  await ossl(
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    `${name}.pem`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  );
}

let h: Harness<Coordinator, CoordinatorOptions>;
before(async () => {
  await ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=factsweep test CA");
  await issue("server", "server", "IP:127.0.0.1,DNS:localhost");
  await issue("agent-a", "agent-a", "IP:127.0.0.1"); // named by its CN
  await issue("node-7", "gpu-host-7", "DNS:agent-b,DNS:agent-b2"); // named by DNS names
  h = await startHarness(Coordinator.start, { tls: { cert: f("server.pem"), key: f("server.key"), ca: f("ca.pem") }, agentIdFromCertificate: true });
});
after(async () => {
  await h.close();
});

const creds = (name: string) => grpc.credentials.createSsl(readFileSync(f("ca.pem")), readFileSync(f(`${name}.key`)), readFileSync(f(`${name}.pem`)));

/** Says hello as `agentId` over a connection presenting `cert`: the coordinator's first message, or the stream's error. */
function helloAs(cert: string, agentId: string): Promise<{ msg?: agent.CoordinatorMessage; err?: grpc.ServiceError }> {
  const s = agentStream(h.addr, creds(cert));
  return new Promise((res) => {
    const done = (r: { msg?: agent.CoordinatorMessage; err?: grpc.ServiceError }) => {
      s.client.close();
      res(r);
    };
    s.on("data", (m: agent.CoordinatorMessage) => done({ msg: m }));
    s.on("error", (e: grpc.ServiceError) => done({ err: e }));
    s.write({
      body: {
        $case: "hello",
        hello: {
          protocolVersion: AGENT_PROTOCOL_VERSION,
          agentId,
          hostname: "h",
          workers: [{ device: "cpu:0", memoryBytes: 0, ready: true }],
          cachedPromptKeys: [],
          token: "",
        },
      },
    });
  });
}

test("an agent whose id is its certificate's CN, or a DNS name of its subjectAltName, is welcomed", async () => {
  assert.equal((await helloAs("agent-a", "agent-a")).msg?.body?.$case, "welcome");
  assert.equal((await helloAs("node-7", "agent-b2")).msg?.body?.$case, "welcome");
});

test("a certificate cannot be used under another agent's id: PERMISSION_DENIED naming what the certificate allows", async () => {
  const { err, msg } = await helloAs("agent-a", "agent-b");
  assert.equal(msg, undefined, "no welcome");
  assert.equal(err?.code, grpc.status.PERMISSION_DENIED);
  assert.match(err!.details, /agent "agent-b" refused: its client certificate names "agent-a"/);
  assert.match(err!.details, /--agent-id agent-a/);
  // the CN of a certificate with DNS names counts too; any other id does not
  const cn = await helloAs("node-7", "gpu-host-7");
  assert.equal(cn.msg?.body?.$case, "welcome");
  const other = await helloAs("node-7", "agent-a");
  assert.equal(other.err?.code, grpc.status.PERMISSION_DENIED);
});

test("without mTLS the option is refused at start", async () => {
  await assert.rejects(
    Coordinator.start({ natsUrl: "nats://127.0.0.1:1", modelRoots: [], tls: { cert: f("server.pem"), key: f("server.key") }, agentIdFromCertificate: true }),
    /agentIdFromCertificate needs mTLS/,
  );
});

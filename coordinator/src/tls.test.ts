import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import * as grpc from "@grpc/grpc-js";
import { control } from "@factsweep/proto";
import { REPO_ROOT, startHarness, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

// Real certificates made with openssl: a CA, a server certificate for 127.0.0.1, a client certificate.
const dir = mkdtempSync(join(tmpdir(), "factsweep-tls-"));
const f = (n: string) => join(dir, n);
async function makeCerts(): Promise<void> {
  const ossl = (...a: string[]) => execa("openssl", a, { cwd: dir });
  await ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=factsweep test CA");
  writeFileSync(f("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  for (const who of ["server", "client"]) {
    await ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${who}.key`, "-out", `${who}.csr`, "-subj", `/CN=${who}`);
    await ossl(
      "x509",
      "-req",
      "-in",
      `${who}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${who}.pem`,
      "-days",
      "2",
      "-extfile",
      "san.ext",
    );
  }
}

let h: Harness<Coordinator, CoordinatorOptions>;
before(async () => {
  await makeCerts();
  h = await startHarness(Coordinator.start, { tls: { cert: f("server.pem"), key: f("server.key"), ca: f("ca.pem") } });
});
after(async () => {
  await h.close();
});

const list = (creds: grpc.ChannelCredentials) =>
  new Promise<control.ListReply>((res, rej) => {
    const c = new control.SweepServiceClient(h.addr, creds);
    c.list({}, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => {
      c.close();
      if (e) rej(e);
      else res(r);
    });
  });

test("with mTLS a client presenting a certificate of the CA is served", async () => {
  const creds = grpc.credentials.createSsl(readFileSync(f("ca.pem")), readFileSync(f("client.key")), readFileSync(f("client.pem")));
  const r = await list(creds);
  assert.deepEqual(r.sweeps, []);
  const cli = await execa(
    process.execPath,
    [
      join(REPO_ROOT, "sweepctl/dist/cli.js"),
      "--coordinator",
      h.addr,
      "--tls-ca",
      f("ca.pem"),
      "--tls-cert",
      f("client.pem"),
      "--tls-key",
      f("client.key"),
      "list",
    ],
    { reject: false },
  );
  assert.equal(cli.exitCode, 0, cli.stderr);
});

test("with mTLS a client without a certificate, or speaking plaintext, is refused", async () => {
  await assert.rejects(list(grpc.credentials.createSsl(readFileSync(f("ca.pem")))), (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE);
  await assert.rejects(list(grpc.credentials.createInsecure()), (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE);
});

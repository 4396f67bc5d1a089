// Issue 15 (NATS): the shipped server configuration (deploy/nats/factsweep.conf with accounts.conf)
// run by a real nats-server with TLS: the coordinator's user owns the streams and buckets, which it
// creates bounded, replicated as configured and without delete or purge; the agent's user can
// publish results and nothing else (no KV, no JetStream API, no other subject, no reading replies
// meant for the coordinator).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { sweep } from "@factsweep/proto";
import { COVARIANCE_BUCKET, RESULTS_STREAM, resultsSubject, SWEEPS_BUCKET } from "@factsweep/shared";
import { GOLDEN_DIR, REPO_ROOT, startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { Coordinator } from "./coordinator.js";
import { DEAD_LETTER_STREAM } from "./results-consumer.js";

const dir = mkdtempSync(join(tmpdir(), "factsweep-nats-roles-"));
const COORD_PASS = "c0ordinator-test-password-0123456789";
const AGENT_PASS = "agent-test-password-0123456789abcdef";
let nats: NatsServerHandle;
let coord: Coordinator | undefined;
const tls = () => ({ ca: readFileSync(join(dir, "ca.crt"), "utf8") });
const as = (user: string, pass: string, extra: object = {}): Promise<NatsConnection> =>
  connect({ servers: `tls://127.0.0.1:${nats.port}`, user, pass, tls: tls(), maxReconnectAttempts: 0, ...extra });

before(async () => {
  // A CA and a server certificate for 127.0.0.1, where factsweep.conf expects them.
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=factsweep-test-ca");
  ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost");
  writeFileSync(join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  ssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt", "-days", "1", "-extfile", "san.ext");
  // The shipped files, with the certificate paths pointed here (the store dir is a flag of startNatsServer).
  const conf = readFileSync(join(REPO_ROOT, "deploy/nats/factsweep.conf"), "utf8").replaceAll("/etc/factsweep/nats/tls/", `${dir}/`);
  writeFileSync(join(dir, "factsweep.conf"), conf);
  copyFileSync(join(REPO_ROOT, "deploy/nats/accounts.conf"), join(dir, "accounts.conf"));
  process.env.FACTSWEEP_NATS_COORDINATOR_PASS = COORD_PASS;
  process.env.FACTSWEEP_NATS_AGENT_PASS = AGENT_PASS;
  nats = await startNatsServer({ args: ["-c", join(dir, "factsweep.conf")] });
  // The real coordinator as its user: it creates the streams and buckets with the configured limits.
  process.env.NODE_EXTRA_CA_CERTS = join(dir, "ca.crt"); // (read at process start only; the clients below pass the CA)
  coord = await Coordinator.start({
    natsUrl: `tls://127.0.0.1:${nats.port}`,
    natsUser: "coordinator",
    natsPass: COORD_PASS,
    natsTlsCa: join(dir, "ca.crt"),
    natsLimits: { resultsMaxBytes: 64 * 1024 * 1024, resultsMaxAgeMs: 3600_000, kvMaxBytes: 16 * 1024 * 1024 },
    modelRoots: [GOLDEN_DIR],
    grpcPort: 0,
    httpPort: -1,
    log: () => undefined,
  });
});

after(async () => {
  await coord?.stop();
  await nats?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("without credentials, with a wrong password, or without TLS, no client gets in", async () => {
  await assert.rejects(as("agent", "wrong-password"), /Authorization Violation/i);
  await assert.rejects(connect({ servers: `tls://127.0.0.1:${nats.port}`, tls: tls(), maxReconnectAttempts: 0 }), /Authorization Violation/i);
  await assert.rejects(connect({ servers: `127.0.0.1:${nats.port}`, user: "agent", pass: AGENT_PASS, maxReconnectAttempts: 0, tls: null }));
});

test("a coordinator whose NATS password is wrong stops at start with an error naming the flags to check", async () => {
  const start = Coordinator.start({
    natsUrl: `tls://127.0.0.1:${nats.port}`,
    natsUser: "coordinator",
    natsPass: "not-the-coordinator-password",
    natsTlsCa: join(dir, "ca.crt"),
    modelRoots: [GOLDEN_DIR],
    grpcPort: 0,
    httpPort: -1,
    log: () => undefined,
  });
  await assert.rejects(start, /refused the coordinator's credentials \(.*Authorization Violation.*\); check --nats-user with --nats-pass/i);
});

test("the coordinator's streams and buckets are bounded as configured, and the results streams deny delete and purge", async () => {
  const nc = await as("coordinator", COORD_PASS, { inboxPrefix: "_INBOX_coordinator" });
  try {
    const jsm = await jetstreamManager(nc);
    const results = (await jsm.streams.info(RESULTS_STREAM)).config;
    assert.equal(results.max_bytes, 64 * 1024 * 1024);
    assert.equal(results.max_age, 3600_000 * 1e6);
    assert.equal(results.num_replicas, 1);
    assert.equal(results.deny_delete, true);
    assert.equal(results.deny_purge, true);
    assert.equal((await jsm.streams.info(DEAD_LETTER_STREAM)).config.deny_purge, true);
    assert.equal((await jsm.streams.info(`KV_${SWEEPS_BUCKET}`)).config.max_bytes, 16 * 1024 * 1024);
    // Not even the coordinator's user can erase results.
    const js = jetstream(nc);
    const ack = await js.publish(resultsSubject("roles"), new Uint8Array([1]), { msgID: "roles-purge-probe" });
    await assert.rejects(jsm.streams.purge(RESULTS_STREAM), /purge/i);
    await assert.rejects(jsm.streams.deleteMessage(RESULTS_STREAM, ack.seq), /delete/i);
  } finally {
    await nc.close();
  }
});

test("the agent's user publishes results, and can do nothing else", async () => {
  const nc = await as("agent", AGENT_PASS);
  const errors: string[] = [];
  void (async () => {
    for await (const s of nc.status()) if (s.type === "error") errors.push(String((s as { error?: Error }).error?.message ?? ""));
  })();
  try {
    // What the node agent does: a JetStream publish with a message id, acked on its inbox.
    const js = jetstream(nc, { timeout: 2_000 });
    const r = sweep.ShardResult.fromPartial({ sweepId: "roles", shardId: "roles.0.0", agentId: "a", leaseId: "L1" });
    const ack = await js.publish(resultsSubject("roles"), sweep.ShardResult.encode(r).finish(), { msgID: "roles.0.0/1" });
    assert.equal(ack.stream, RESULTS_STREAM);

    // No KV: neither reading nor writing a bucket, nor the JetStream API at all.
    const kv = await new Kvm(js).open(SWEEPS_BUCKET, { bindOnly: true } as never).catch((e: Error) => e);
    if (!(kv instanceof Error)) await assert.rejects(kv.get("_coordinator_epoch"), /permission|timeout/i, "KV get refused");
    await assert.rejects(nc.request("$JS.API.STREAM.NAMES", undefined, { timeout: 1_000 }), /permission|timeout/i, "JetStream API refused");
    await assert.rejects(
      js.publish(`$KV.${SWEEPS_BUCKET}.forged`, new Uint8Array([1]), { timeout: 1_000 }),
      /permission|timeout/i,
      "KV write by publish refused",
    );
    const jsm = await jetstreamManager(nc, { timeout: 1_000, checkAPI: false });
    await assert.rejects(jsm.streams.purge(RESULTS_STREAM), /permission|timeout/i, "stream purge refused");

    // No other subject: a forged progress event, reading other results, the coordinator's replies.
    nc.publish("factsweep.events.roles", "{}");
    const reads = ["factsweep.results.>", "_INBOX_coordinator.>", "$KV.>"].map((subject) => nc.subscribe(subject));
    await nc.flush();
    await new Promise((res) => setTimeout(res, 300));
    const joined = () => errors.join("\n");
    assert.match(joined(), /Permissions Violation for Publish to "factsweep\.events\.roles"/);
    for (const s of ["factsweep.results.>", "_INBOX_coordinator.>", "$KV.>"])
      assert.ok(joined().includes(`Permissions Violation for Subscription to "${s}"`), `${s}: ${joined()}`);
    for (const s of reads) s.unsubscribe();
  } finally {
    await nc.close();
  }
});

test("the agent's user reads a ROME covariance from the object store and uploads a part, and reaches no other stream's API", async () => {
  const coordNc = await as("coordinator", COORD_PASS, { inboxPrefix: "_INBOX_coordinator" });
  const nc = await as("agent", AGENT_PASS);
  try {
    // The coordinator's merged C (the bucket was created by Coordinator.start).
    const C = new Uint8Array(4 * 4 * 4).map((_, i) => i);
    await (await new Objm(coordNc).open(COVARIANCE_BUCKET)).putBlob({ name: "cov.roles", metadata: { dim: "4", tokens: "3" } }, C);
    // What the agent does (covariance-files.ts): open, info, getBlob (an ordered consumer), putBlob.
    const os = await new Objm(nc).open(COVARIANCE_BUCKET);
    assert.equal((await os.info("cov.roles"))?.metadata?.dim, "4");
    assert.ok(Buffer.from(C).equals(Buffer.from((await os.getBlob("cov.roles"))!)));
    await os.putBlob({ name: "cov.roles.part0of1", metadata: { dim: "4", tokens: "3" } }, C);
    await os.putBlob({ name: "cov.roles.part0of1", metadata: { dim: "4", tokens: "3" } }, C); // a retried upload replaces it
    assert.equal((await os.info("cov.roles.part0of1"))?.size, C.length);
    // Still no other stream: not the results stream's info, nor a consumer on it.
    await assert.rejects(nc.request(`$JS.API.STREAM.INFO.${RESULTS_STREAM}`, undefined, { timeout: 1_000 }), /permission|timeout/i);
    await assert.rejects(nc.request(`$JS.API.CONSUMER.CREATE.${RESULTS_STREAM}`, "{}", { timeout: 1_000 }), /permission|timeout/i);
  } finally {
    await nc.close();
    await coordNc.close();
  }
});

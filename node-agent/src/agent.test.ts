/**
 * The agent process (node dist/main.js) against a real nats-server, real engine workers and the
 * "scripted-coordinator" test double on the gRPC side.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { status } from "@grpc/grpc-js";
import { execa, type ResultPromise } from "execa";
import { AGENT_PROTOCOL_VERSION } from "@factsweep/proto";
import { ScriptedCoordinator } from "@factsweep/testing";
import { startNatsServer } from "@factsweep/testing";
import { resultsNatsForFile } from "./test-support.js";
import { goldenSwapShard, REPO_ROOT, skipWithoutGolden, storedResults } from "@factsweep/testing";

const skip = skipWithoutGolden();
const env = resultsNatsForFile(skip);

type AgentProc = ResultPromise<{ stdout: "pipe"; stderr: "pipe"; reject: false; buffer: false }>;

/** Starts `factsweep-agent` and waits for its ready line. */
async function startAgent(coordinatorPort: number, extra: string[] = []): Promise<{ proc: AgentProc; httpPort: number; agentId: string; logs: string[] }> {
  const proc = execa(
    process.execPath,
    [
      join(REPO_ROOT, "node-agent", "dist", "main.js"),
      "--coordinator",
      `127.0.0.1:${coordinatorPort}`,
      "--nats-url",
      env.nats.server.url,
      "--cpu",
      "--workers",
      "1",
      "--http-port",
      "0",
      "--http-host",
      "127.0.0.1",
      ...extra,
    ],
    { stdout: "pipe", stderr: "pipe", reject: false, buffer: false, env: { FACTSWEEP_TOKEN: undefined, FACTSWEEP_AGENT_TOKEN: undefined } },
  ) as AgentProc;
  const logs: string[] = [];
  createInterface({ input: proc.stderr }).on("line", (l) => logs.push(l));
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout });
    rl.on("line", (l) => l.startsWith("factsweep-agent ready") && resolve(l));
    void proc.then((r) => reject(new Error(`agent exited (${r.exitCode}) before ready:\n${logs.join("\n")}`)));
  });
  const m = /agent_id=(\S+) http_port=(\d+) workers=1 mode=cpu/.exec(line);
  assert.ok(m, `ready line: ${line}`);
  return { proc, agentId: m[1]!, httpPort: Number(m[2]), logs };
}

type Stream = Awaited<ReturnType<ScriptedCoordinator["nextStream"]>>;
type Agent = Awaited<ReturnType<typeof startAgent>>;

/**
 * A scripted coordinator and an agent (`--agent-id agentId`, plus `extra`) connected to it: hello
 * answered with a Welcome (heartbeat 50 ms), first credit received; both killed after `body`.
 */
async function withWelcomedAgent(
  agentId: string,
  extra: string[],
  body: (ctx: { coord: ScriptedCoordinator; port: number; a: Agent; s: Stream }) => Promise<void>,
): Promise<void> {
  const coord = new ScriptedCoordinator();
  const port = await coord.start();
  const a = await startAgent(port, ["--agent-id", agentId, ...extra]);
  try {
    const s = await coord.nextStream(0);
    await s.next("hello");
    s.send({ $case: "welcome", welcome: { sessionId: "s1", leaseTtlMs: 30_000, heartbeatIntervalMs: 50, natsResultsSubjectPrefix: "" } });
    await s.next("credit");
    await body({ coord, port, a, s });
  } finally {
    a.proc.kill("SIGKILL");
    coord.kill();
  }
}

/** The golden swap shard with its 28 cells repeated for each window in `windows`: long enough to be caught mid-run. */
function longShard(sweepId: string, windows: number[], shardId?: string): ReturnType<typeof goldenSwapShard>["shard"] {
  const { shard } = goldenSwapShard(sweepId, shardId);
  shard.cells = windows.flatMap((w) => shard.cells.map((c) => ({ ...c, window: w })));
  return shard;
}

/** Leases `shard` as L1 and waits until a heartbeat shows it part done. */
async function leaseUntilMidRun(s: Stream, shard: ReturnType<typeof longShard>): Promise<void> {
  s.send({ $case: "lease", lease: { leaseId: "L1", shard, ttlMs: 30_000 } });
  await s.next("heartbeat", (b) => b.heartbeat.leases.some((l) => l.leaseId === "L1" && l.cellsDone > 0 && l.cellsDone < shard.cells.length));
}

/** Sends the agent SIGTERM and waits until it logs that it drains. */
async function sigterm(a: Agent): Promise<void> {
  a.proc.kill("SIGTERM");
  await waitFor(async () => (a.logs.some((l) => /draining \(SIGTERM\)/.test(l)) ? true : undefined));
}

test(
  "the agent says hello, grants credit, runs a leased shard, reports it done with the JetStream sequence, abandons a cancelled lease, and serves metrics",
  { skip },
  async () => {
    const coord = new ScriptedCoordinator();
    const port = await coord.start();
    const a = await startAgent(port, ["--agent-id", "agent-hello", "--token", "s3cret", "--batch-size", "4"]);
    try {
      const s = await coord.nextStream(0);
      const hello = (await s.next("hello")).hello;
      assert.equal(hello.protocolVersion, AGENT_PROTOCOL_VERSION);
      assert.equal(hello.agentId, "agent-hello");
      assert.equal(hello.token, "s3cret");
      assert.equal(s.call.metadata.get("authorization")[0], "Bearer s3cret");
      assert.deepEqual(
        hello.workers.map((w) => [w.device, w.ready]),
        [["cpu:0", true]],
      );
      s.send({ $case: "welcome", welcome: { sessionId: "s1", leaseTtlMs: 30_000, heartbeatIntervalMs: 100, natsResultsSubjectPrefix: "factsweep.results" } });
      assert.equal((await s.next("credit")).credit.slots, 2, "credit is one running and one prefetched lease per free worker (--prefetch 1)");

      const { shard } = goldenSwapShard("sw-agent");
      s.send({ $case: "lease", lease: { leaseId: "L1", shard, ttlMs: 30_000 } });
      const done = (await s.next("done")).done;
      assert.equal(done.leaseId, "L1");
      assert.equal(done.shardId, shard.shardId);
      const stored = await storedResults(env.nats.jsm, "sw-agent");
      assert.equal(stored.length, 1);
      assert.equal(done.publishedSeq, stored[0]!.seq);
      assert.equal(stored[0]!.result.agentId, "agent-hello");

      // Credit comes back when the slot frees, and heartbeats now list the cached prompt.
      const doneAt = s.received.findIndex((m) => m.body?.$case === "done");
      await s.next("credit", () => true, { fromIndex: doneAt });
      const hb = (await s.next("heartbeat", (b) => b.heartbeat.cachedPromptKeys.includes(shard.prompt!.promptKey), { fromIndex: doneAt })).heartbeat;
      assert.equal(hb.leases.length, 0);

      const metrics = await (await fetch(`http://127.0.0.1:${a.httpPort}/metrics`)).text();
      const sample = (name: string, labels = "") => new RegExp(`^${name}\\{[^}]*${labels}[^}]*\\} (\\S+)$`, "m").exec(metrics)?.[1];
      assert.equal(sample("factsweep_agent_cells_total"), "28");
      assert.equal(sample("factsweep_workers_ready"), "1");
      assert.equal(sample("factsweep_cache_misses_total"), "1");
      assert.equal(sample("factsweep_publish_seconds_count"), "1");
      assert.equal(sample("factsweep_shard_duration_seconds_count", 'outcome="done"'), "1");
      assert.equal(sample("factsweep_worker_restarts_total"), undefined, "no restart happened (counter has no sample yet)");
      assert.ok(Number(sample("factsweep_engine_batch_seconds_count")) >= 1);
      assert.equal((await fetch(`http://127.0.0.1:${a.httpPort}/readyz`)).status, 200);
      const health = (await (await fetch(`http://127.0.0.1:${a.httpPort}/healthz`)).json()) as {
        status: string;
        workersReady: number;
        coordinatorConnected: boolean;
      };
      assert.deepEqual([health.status, health.workersReady, health.coordinatorConnected], ["ok", 1, true]);

      // A lease the coordinator cancels is abandoned: no done, no failed, nothing published, the slot comes back.
      const long = longShard("sw-agent", [1, 3, 5], "sw-agent.1.0");
      const before = s.received.length;
      s.send({ $case: "lease", lease: { leaseId: "L2", shard: long, ttlMs: 30_000 } });
      s.send({ $case: "cancel", cancel: { leaseId: "L2", reason: "sweep cancelled" } });
      await s.next("credit", () => true, { fromIndex: before });
      await s.next("heartbeat", (b) => b.heartbeat.leases.length === 0, { fromIndex: s.received.length });
      assert.ok(!s.received.slice(before).some((m) => m.body?.$case === "done" || m.body?.$case === "failed"), "nothing reported for a cancelled lease");
      assert.deepEqual(
        (await storedResults(env.nats.jsm, "sw-agent")).map((x) => x.result.shardId),
        [shard.shardId],
      );

      // The coordinator asks it to drain: it leaves cleanly with exit code 0.
      s.send({ $case: "drain", drain: { reason: "test over" } });
      const r = await a.proc;
      assert.equal(r.exitCode, 0, a.logs.join("\n"));
    } finally {
      a.proc.kill("SIGKILL");
      coord.kill();
    }
  },
);

test(
  "when the coordinator dies mid-shard the agent finishes the shard, publishes it, reconnects with backoff and reports it done on the new stream",
  { skip },
  async () => {
    await withWelcomedAgent("agent-reconnect", ["--batch-size", "1"], async ({ coord, port, a, s }) => {
      const shard = longShard("sw-reconnect", [1, 3, 5]);
      s.send({ $case: "lease", lease: { leaseId: "L1", shard, ttlMs: 30_000 } });
      const hb = await s.next("heartbeat", (b) => b.heartbeat.leases.some((l) => l.leaseId === "L1" && l.cellsDone > 0));
      coord.kill(); // the coordinator vanishes while the shard runs
      assert.ok(hb.heartbeat.leases[0]!.cellsDone < shard.cells.length, "killed mid-shard");

      const stored = await waitFor(async () => {
        const st = await storedResults(env.nats.jsm, "sw-reconnect");
        return st.length > 0 ? st : undefined;
      });
      assert.equal(stored.length, 1, "the result reached JetStream without the coordinator");

      const coord2 = new ScriptedCoordinator();
      await coord2.start(port); // the coordinator comes back on the same address
      try {
        const s2 = await coord2.nextStream(0);
        assert.equal((await s2.next("hello")).hello.agentId, "agent-reconnect");
        s2.send({ $case: "welcome", welcome: { sessionId: "s2", leaseTtlMs: 30_000, heartbeatIntervalMs: 50, natsResultsSubjectPrefix: "" } });
        const done = (await s2.next("done")).done;
        assert.deepEqual([done.leaseId, done.shardId, done.publishedSeq], ["L1", shard.shardId, stored[0]!.seq]);
        assert.equal((await s2.next("credit")).credit.slots, 2, "after the shard ended, one running and one prefetched lease again");
        assert.ok(
          a.logs.some((l) => /reconnecting to coordinator/.test(l)),
          "the reconnect is logged",
        );
      } finally {
        a.proc.kill("SIGTERM");
        await a.proc;
        coord2.kill();
      }
    });
  },
);

test(
  "SIGTERM drains: the running shard finishes and is reported done, a lease granted after it is handed back, workers shut down, exit 0",
  { skip },
  async () => {
    await withWelcomedAgent("agent-term", ["--batch-size", "1"], async ({ a, s }) => {
      // Three windows make the shard long enough (84 single-cell batches) to be mid-run at SIGTERM.
      const shard = longShard("sw-term", [1, 3, 5]);
      await leaseUntilMidRun(s, shard);
      await sigterm(a);
      const { shard: other } = goldenSwapShard("sw-term", "sw-term.1.0");
      s.send({ $case: "lease", lease: { leaseId: "L2", shard: other, ttlMs: 30_000 } });

      const failed = (await s.next("failed")).failed;
      assert.deepEqual([failed.leaseId, failed.retryable, failed.handedBack], ["L2", true, true], "handed back: no attempt spent");
      assert.match(failed.error, /draining/);
      const done = (await s.next("done")).done;
      assert.equal(done.leaseId, "L1");
      const r = await a.proc;
      assert.equal(r.exitCode, 0, a.logs.join("\n"));
      const stored = await storedResults(env.nats.jsm, "sw-term");
      assert.deepEqual(
        stored.map((x) => x.result.shardId),
        [shard.shardId],
      );
      assert.equal(stored[0]!.result.cells.length, 84);
      assert.ok(
        a.logs.some((l) => /\[worker cpu:0\].*exit 0/.test(l)),
        "the worker exited after Shutdown",
      );
    });
  },
);

test("a second SIGTERM hands the running shard back as retryable without publishing it, and the agent exits 0", { skip }, async () => {
  await withWelcomedAgent("agent-term2", ["--batch-size", "1"], async ({ a, s }) => {
    const shard = longShard("sw-term2", [1, 3, 5, 7, 9]);
    await leaseUntilMidRun(s, shard);
    await sigterm(a);
    a.proc.kill("SIGTERM");
    const failed = (await s.next("failed")).failed;
    assert.deepEqual([failed.leaseId, failed.shardId, failed.retryable, failed.handedBack], ["L1", shard.shardId, true, true]);
    assert.match(failed.error, /handed back by agent agent-term2/);
    const r = await a.proc;
    assert.equal(r.exitCode, 0, a.logs.join("\n"));
    assert.ok(!s.received.some((m) => m.body?.$case === "done"));
    assert.equal((await storedResults(env.nats.jsm, "sw-term2")).length, 0);
  });
});

test("an agent refused for its protocol version stops with a clear error instead of reconnecting", { skip }, async () => {
  const coord = new ScriptedCoordinator();
  const port = await coord.start();
  const a = await startAgent(port, ["--agent-id", "agent-old"]);
  try {
    const s = await coord.nextStream(0);
    await s.next("hello");
    s.refuse(status.FAILED_PRECONDITION, `agent "agent-old" speaks agent protocol version ${AGENT_PROTOCOL_VERSION}, this coordinator speaks version 99`);
    const r = await a.proc;
    assert.equal(r.exitCode, 1);
    assert.ok(
      a.logs.some((l) => /fatal: coordinator .* refused agent agent-old: .*version 99/.test(l)),
      a.logs.join("\n"),
    );
    assert.equal(coord.streams.length, 1, "no reconnect attempt");
  } finally {
    a.proc.kill("SIGKILL");
    coord.kill();
  }
});

test("an agent whose NATS connection is refused (bad credentials) exits 1 naming the flags to check", { skip }, async () => {
  const guarded = await startNatsServer({ args: ["--user", "u", "--pass", "p"] });
  const coord = new ScriptedCoordinator();
  const port = await coord.start();
  try {
    const proc = execa(
      process.execPath,
      [
        join(REPO_ROOT, "node-agent", "dist", "main.js"),
        "--coordinator",
        `127.0.0.1:${port}`,
        "--nats-url",
        guarded.url,
        "--cpu",
        "--http-port",
        "0",
        "--http-host",
        "127.0.0.1",
      ],
      { reject: false, env: { FACTSWEEP_TOKEN: undefined, FACTSWEEP_AGENT_TOKEN: undefined } },
    );
    const r = await proc;
    assert.equal(r.exitCode, 1);
    assert.match(String(r.stderr), /fatal: cannot connect to NATS nats:\/\/127\.0\.0\.1:\d+: Authorization Violation; check --nats-url and --nats-creds/);
  } finally {
    coord.kill();
    await guarded.stop();
  }
});

test("with --tls-ca/--tls-cert/--tls-key the agent reaches an mTLS coordinator and presents its client certificate", { skip }, async () => {
  const dir = await mkdtemp(join(tmpdir(), "factsweep-tls-"));
  const coord = new ScriptedCoordinator();
  let a: Awaited<ReturnType<typeof startAgent>> | undefined;
  try {
    const ossl = (...args: string[]) => execa("openssl", args, { cwd: dir });
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    await ossl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=factsweep test CA");
    await writeFile(join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
    for (const [name, cn, ext] of [
      ["server", "localhost", ["-extfile", "san.ext"]],
      ["client", "agent-tls", []],
    ] as const) {
      await ossl("req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`);
      await ossl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${name}.pem`, "-days", "1", ...ext);
    }
    const file = (f: string) => readFile(join(dir, f));
    const port = await coord.start(0, { ca: await file("ca.pem"), cert: await file("server.pem"), key: await file("server.key") });
    a = await startAgent(port, [
      "--agent-id",
      "agent-tls",
      "--tls-ca",
      join(dir, "ca.pem"),
      "--tls-cert",
      join(dir, "client.pem"),
      "--tls-key",
      join(dir, "client.key"),
    ]);
    const s = await coord.nextStream(0);
    assert.equal((await s.next("hello")).hello.agentId, "agent-tls");
    const auth = s.call.getAuthContext();
    assert.equal(auth?.transportSecurityType, "ssl");
    assert.equal(auth?.sslPeerCertificate?.subject.CN, "agent-tls", "the agent presented its client certificate");
  } finally {
    a?.proc.kill("SIGKILL");
    coord.kill();
    await rm(dir, { recursive: true, force: true });
  }
});

async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}

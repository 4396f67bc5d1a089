/**
 * Closed by default (issue 15): loopback binds unless told otherwise, no non-loopback gRPC without
 * TLS and tokens, no empty, placeholder or short tokens, separate user (SweepService) and agent (AgentService) tokens.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { execa } from "execa";
import { AGENT_PROTOCOL_VERSION, control, type agent } from "@factsweep/proto";
import { agentStream, call, outsideAddress, reachable, startHarness } from "@factsweep/testing";
import { isLoopbackHost, listenRefusal, weakTokenRefusal } from "./auth.js";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

const MAIN = join(dirname(fileURLToPath(import.meta.url)), "main.js");
const noTokenEnv = { FACTSWEEP_TOKEN: undefined, FACTSWEEP_USER_TOKEN: undefined, FACTSWEEP_AGENT_TOKEN: undefined };
/** The coordinator binary against a NATS URL nothing listens on: every case here must stop before NATS. */
const coordinator = (args: string[], env: Record<string, string | undefined> = {}) =>
  execa(process.execPath, [MAIN, "--nats-url", "nats://127.0.0.1:1", "--http-port", "-1", "--grpc-port", "0", ...args], {
    reject: false,
    timeout: 20_000,
    env: { ...noTokenEnv, ...env },
  });

test("loopback addresses are told apart from the others", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"]) assert.ok(isLoopbackHost(h), h);
  for (const h of ["0.0.0.0", "::", "10.0.0.5", "coordinator", "[::]"]) assert.ok(!isLoopbackHost(h), h);
  assert.equal(listenRefusal({ grpcHost: "127.0.0.1", tls: false }), undefined);
  assert.equal(listenRefusal({ grpcHost: "0.0.0.0", tls: true, userToken: "u", agentToken: "a" }), undefined);
  assert.equal(listenRefusal({ grpcHost: "0.0.0.0", tls: false, userToken: "u", agentToken: "a", insecureListen: true }), undefined);
  assert.match(listenRefusal({ grpcHost: "0.0.0.0", tls: true, userToken: "u" }) ?? "", /--agent-token or FACTSWEEP_AGENT_TOKEN/);
  assert.match(listenRefusal({ grpcHost: "0.0.0.0", tls: false, insecureListen: true, userToken: "u", agentToken: "" }) ?? "", /agent token/);
});

test("a non-loopback gRPC bind without TLS and tokens is refused at start-up with exit code 2, saying how to enable them", async () => {
  const r = await coordinator(["--grpc-host", "0.0.0.0"]);
  assert.equal(r.exitCode, 2, r.stderr);
  for (const s of [
    "--tls-cert",
    "--tls-key",
    "--user-token",
    "FACTSWEEP_USER_TOKEN",
    "--agent-token",
    "FACTSWEEP_AGENT_TOKEN",
    "--insecure-listen",
    "--grpc-host 127.0.0.1",
  ]) {
    assert.ok(r.stderr.includes(s), `names ${s}: ${r.stderr}`);
  }
  // Tokens alone are not enough without TLS, TLS alone not without tokens.
  const tokensOnly = await coordinator(["--grpc-host", "0.0.0.0", "--token", "t"]);
  assert.equal(tokensOnly.exitCode, 2, tokensOnly.stderr);
  assert.match(tokensOnly.stderr, /without TLS \(--tls-cert and --tls-key/);
  const userOnly = await coordinator(["--grpc-host", "0.0.0.0", "--insecure-listen"], { FACTSWEEP_USER_TOKEN: "u" });
  assert.equal(userOnly.exitCode, 2, userOnly.stderr);
  assert.match(userOnly.stderr, /agent token/);
  assert.doesNotMatch(userOnly.stderr, /user token/);
});

test("an empty token is an error naming the flag or variable, not 'auth off'", async () => {
  for (const [args, env, name] of [
    [["--token", ""], {}, "--token is empty"],
    [["--user-token", ""], {}, "--user-token is empty"],
    [["--agent-token", ""], {}, "--agent-token is empty"],
    [[], { FACTSWEEP_TOKEN: "" }, "FACTSWEEP_TOKEN is set but empty"],
    [[], { FACTSWEEP_AGENT_TOKEN: "" }, "FACTSWEEP_AGENT_TOKEN is set but empty"],
  ] as const) {
    const r = await coordinator([...args], env);
    assert.equal(r.exitCode, 2, `${name}: ${r.stderr}`);
    assert.ok(r.stderr.includes(name), `${name}: ${r.stderr}`);
  }
  await assert.rejects(Coordinator.start({ natsUrl: "nats://127.0.0.1:1", modelRoots: [], token: "" }), /token is empty/);
});

const SECRETS = join(dirname(fileURLToPath(import.meta.url)), "../../deploy/kubernetes/overlays/production/secrets");

test("placeholder and too-short tokens are refused at start-up with exit code 2, naming where they came from", async () => {
  const strong = "3f9c2a7be41d08c5a96e7d21f0b4c8e2";
  for (const [args, env, want] of [
    [["--token", "t0ken"], {}, /--token \/ FACTSWEEP_TOKEN is 5 character\(s\) long.*at least 16/],
    [["--user-token", strong, "--agent-token", "changeme-changeme-changeme"], {}, /--agent-token is a placeholder/],
    [
      ["--agent-token", strong],
      { FACTSWEEP_USER_TOKEN: "aaaaaaaaaaaaaaaaaaaa" },
      /FACTSWEEP_USER_TOKEN is 20 character\(s\) long \(or one character repeated\)/,
    ],
    // The files the production overlay ships, mounted as they are.
    [
      ["--user-token-file", join(SECRETS, "user-token"), "--agent-token-file", join(SECRETS, "agent-token")],
      {},
      /--user-token-file .*user-token is a placeholder/,
    ],
    [
      ["--user-token", strong, "--agent-token-file", join(SECRETS, "agent-token")],
      {},
      /--agent-token-file .*agent-token is a placeholder.*openssl rand -hex 32/,
    ],
  ] as const) {
    const r = await coordinator([...args], env);
    assert.equal(r.exitCode, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, want);
    assert.doesNotMatch(r.stderr, new RegExp(strong), "a good token is never echoed");
  }
  assert.equal(weakTokenRefusal("--token", strong), undefined);
  assert.equal(weakTokenRefusal("--token", undefined), undefined, "no token: loopback-only use, decided by listenRefusal");
});

test(
  "the coordinator binds gRPC and HTTP to loopback when no host is given",
  { skip: outsideAddress() === undefined && "no non-loopback address here" },
  async () => {
    const h = await startHarness(Coordinator.start, { grpcHost: undefined, httpHost: undefined });
    try {
      const ip = outsideAddress()!;
      assert.equal(await reachable("127.0.0.1", h.coord.grpcPort), true);
      assert.equal(await reachable("127.0.0.1", h.coord.httpPort), true);
      assert.equal(await reachable(ip, h.coord.grpcPort), false, `gRPC not on ${ip}`);
      assert.equal(await reachable(ip, h.coord.httpPort), false, `HTTP not on ${ip}`);
    } finally {
      await h.close();
    }
  },
);

test("the user token opens SweepService only, the agent token AgentService only; --token still sets both", async () => {
  const md = (t: string) => {
    const m = new grpc.Metadata();
    m.set("authorization", `Bearer ${t}`);
    return m;
  };
  const hello = (token: string, agentId: string): agent.AgentMessage => ({
    body: { $case: "hello", hello: { protocolVersion: AGENT_PROTOCOL_VERSION, agentId, hostname: "h", workers: [], cachedPromptKeys: [], token } },
  });
  const connectAgent = (addr: string, token: string, agentId: string) =>
    new Promise<{ ok: boolean; code?: grpc.status }>((res) => {
      const s = agentStream(addr);
      s.on("data", () => {
        s.client.close();
        res({ ok: true });
      });
      s.on("error", (e: grpc.ServiceError) => {
        s.client.close();
        res({ ok: false, code: e.code });
      });
      s.write(hello(token, agentId));
    });
  const list = (c: control.SweepServiceClient, t: string) => call<control.ListRequest, control.ListReply>(c, c.list, {}, md(t));

  const h = await startHarness<Coordinator, CoordinatorOptions>(Coordinator.start, { userToken: "user-tok", agentToken: "agent-tok" });
  try {
    await list(h.sweeps, "user-tok");
    await assert.rejects(list(h.sweeps, "agent-tok"), (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED);
    assert.deepEqual(await connectAgent(h.addr, "user-tok", "wrong-token"), { ok: false, code: grpc.status.UNAUTHENTICATED });
    assert.deepEqual(await connectAgent(h.addr, "agent-tok", "right-token"), { ok: true });
  } finally {
    await h.close();
  }
  const both = await startHarness<Coordinator, CoordinatorOptions>(Coordinator.start, { token: "one" });
  try {
    await list(both.sweeps, "one");
    assert.deepEqual(await connectAgent(both.addr, "one", "compat"), { ok: true });
  } finally {
    await both.close();
  }
});

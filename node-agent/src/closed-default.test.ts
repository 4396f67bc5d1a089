/**
 * Closed by default (issue 15), the agent's side: its HTTP server binds loopback unless
 * --http-host says otherwise, an empty token is an error naming the flag or variable, and
 * --agent-token / FACTSWEEP_AGENT_TOKEN is the token it presents (--token / FACTSWEEP_TOKEN kept),
 * and it refuses plaintext gRPC to a coordinator on another host unless --insecure.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { execa } from "execa";
import { outsideAddress, reachable, REPO_ROOT, ScriptedCoordinator, skipWithoutGolden, startNatsServer } from "@factsweep/testing";

const MAIN = join(REPO_ROOT, "node-agent", "dist", "main.js");
const noTokenEnv = { FACTSWEEP_TOKEN: undefined, FACTSWEEP_AGENT_TOKEN: undefined };

test("an empty agent token is an error (exit 2) naming the flag or variable, not 'no token'", async () => {
  for (const [args, env, name] of [
    [["--token", ""], {}, "--token is empty"],
    [["--agent-token", ""], {}, "--agent-token is empty"],
    [[], { FACTSWEEP_TOKEN: "" }, "FACTSWEEP_TOKEN is set but empty"],
    [[], { FACTSWEEP_AGENT_TOKEN: "" }, "FACTSWEEP_AGENT_TOKEN is set but empty"],
  ] as const) {
    const r = await execa(process.execPath, [MAIN, "--coordinator", "127.0.0.1:1", "--nats-url", "nats://127.0.0.1:1", "--cpu", ...args], {
      reject: false,
      timeout: 20_000,
      env: { ...noTokenEnv, ...env },
    });
    assert.equal(r.exitCode, 2, `${name}: ${r.stderr}`);
    assert.ok(r.stderr.includes(name), `${name}: ${r.stderr}`);
  }
});

test("a plaintext connection to a coordinator on another host is refused (exit 2) unless --insecure; loopback and TLS need nothing", async () => {
  const agent = (args: string[]) =>
    execa(process.execPath, [MAIN, "--nats-url", "nats://127.0.0.1:1", "--cpu", "--engine-root", "/nonexistent", ...args], {
      reject: false,
      timeout: 20_000,
      env: noTokenEnv,
    });
  for (const addr of ["10.0.0.5:7070", "coordinator:7070", "[2001:db8::1]:7070"]) {
    const r = await agent(["--coordinator", addr]);
    assert.equal(r.exitCode, 2, `${addr}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`refusing a plaintext connection to ${addr.replace(/[[\]]/g, "\\$&")}`));
    for (const flag of ["--tls-ca", "--insecure", "--insecure-listen"]) assert.ok(r.stderr.includes(flag), `names ${flag}: ${r.stderr}`);
  }
  // Past the check, each stops at the next one (--engine-root): the connection itself was allowed.
  for (const args of [
    ["--coordinator", "10.0.0.5:7070", "--insecure"],
    ["--coordinator", "127.0.0.1:7070"],
    ["--coordinator", "localhost:7070"],
    ["--coordinator", "[::1]:7070"],
  ]) {
    const r = await agent(args);
    assert.equal(r.exitCode, 2, r.stderr);
    assert.doesNotMatch(r.stderr, /plaintext/, args.join(" "));
    assert.match(r.stderr, /--engine-root/, args.join(" "));
  }
});

const skip = skipWithoutGolden() || (outsideAddress() === undefined && "no non-loopback address here");

test("without --http-host the agent serves /metrics on loopback only, and presents --agent-token over --token", { skip }, async () => {
  const nats = await startNatsServer();
  const coord = new ScriptedCoordinator();
  const port = await coord.start();
  const proc = execa(
    process.execPath,
    [
      MAIN,
      "--coordinator",
      `127.0.0.1:${port}`,
      "--nats-url",
      nats.url,
      "--cpu",
      "--workers",
      "1",
      "--http-port",
      "0",
      "--agent-id",
      "closed",
      "--agent-token",
      "agent-tok",
      "--token",
      "old",
    ],
    { stdout: "pipe", stderr: "pipe", reject: false, buffer: false, env: { ...noTokenEnv, FACTSWEEP_TOKEN: "from-env" } },
  );
  const logs: string[] = [];
  createInterface({ input: proc.stderr }).on("line", (l) => logs.push(l));
  const ready = new Promise<string>((res, rej) => {
    createInterface({ input: proc.stdout }).on("line", (l) => l.startsWith("factsweep-agent ready") && res(l));
    void proc.then((r) => rej(new Error(`agent exited (${r.exitCode}) before ready:\n${logs.join("\n")}`)));
  });
  try {
    const line = await ready;
    const s = await coord.nextStream(0);
    const hello = (await s.next("hello")).hello;
    assert.equal(hello.token, "agent-tok");
    const httpPort = Number(/http_port=(\d+)/.exec(line)![1]);
    assert.equal(await reachable("127.0.0.1", httpPort), true);
    assert.equal(await reachable(outsideAddress()!, httpPort), false, "not on the host's other addresses");
  } finally {
    proc.kill("SIGKILL");
    coord.kill();
    await nats.stop();
  }
});

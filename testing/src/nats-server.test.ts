import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, startNatsServer } from "./nats-server.js";
import { NatsServerError } from "./errors.js";

test("a started nats-server accepts clients and JetStream data survives a restart on the same port", async () => {
  const nats = await startNatsServer();
  try {
    assert.match(nats.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
    const firstPid = nats.pid;
    let nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "T", subjects: ["t.>"] });
    const js = jetstream(nc);
    await js.publish("t.a", new TextEncoder().encode("one"), { msgID: "m1" });
    await js.publish("t.a", new TextEncoder().encode("two"), { msgID: "m2" });
    await nc.close();

    await nats.restart();
    assert.notEqual(nats.pid, firstPid, "restart starts a new process");

    nc = await connect({ servers: nats.url });
    const info = await (await jetstreamManager(nc)).streams.info("T");
    assert.equal(info.state.messages, 2);
    const msg = await (await jetstreamManager(nc)).streams.getMessage("T", { seq: 2 });
    assert.equal(new TextDecoder().decode(msg?.data), "two");
    await nc.close();
  } finally {
    await nats.stop();
  }
  assert.equal(existsSync(nats.storeDir), false, "the temp store dir is removed by stop()");
});

test("a SIGKILLed nats-server comes back with restart() and keeps its streams", async () => {
  const nats = await startNatsServer();
  try {
    let nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "K", subjects: ["k"] });
    await jetstream(nc).publish("k", new Uint8Array([1]));
    await nc.close();
    nats.kill("SIGKILL");
    await nats.restart();
    nc = await connect({ servers: nats.url });
    const info = await (await jetstreamManager(nc)).streams.info("K");
    assert.equal(info.state.messages, 1);
    await nc.close();
  } finally {
    await nats.stop();
  }
});

test("a missing nats-server executable is a NatsServerError naming the Debian package", async () => {
  await assert.rejects(startNatsServer({ bin: "/nonexistent/nats-server" }), (err: unknown) => {
    assert.ok(err instanceof NatsServerError);
    assert.match(err.message, /apt-get install -y nats-server/);
    return true;
  });
});

test("a given store dir is kept by stop() and a new server on it finds the streams; the monitoring port answers", async () => {
  const dir = mkdtempSync(join(tmpdir(), "fs-nats-store-"));
  try {
    const httpPort = await freePort();
    const first = await startNatsServer({ storeDir: dir, httpPort });
    try {
      const nc = await connect({ servers: first.url });
      await (await jetstreamManager(nc)).streams.add({ name: "KEEP", subjects: ["keep"] });
      await jetstream(nc).publish("keep", new Uint8Array([7]));
      await nc.close();
      const jsz = (await (await fetch(`http://127.0.0.1:${httpPort}/jsz`)).json()) as { streams: number };
      assert.equal(jsz.streams, 1);
    } finally {
      await first.stop();
    }
    assert.equal(existsSync(dir), true, "a caller's store dir is never removed");
    const second = await startNatsServer({ storeDir: dir });
    try {
      const nc = await connect({ servers: second.url });
      assert.equal((await (await jetstreamManager(nc)).streams.info("KEEP")).state.messages, 1);
      await nc.close();
    } finally {
      await second.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

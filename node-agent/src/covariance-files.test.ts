// Issue 17 item 2, the agent's side, against a real nats-server's object store: an edit's C is
// fetched once per process (then the local copy), written whole with its hash for the engine; a C
// whose size does not match its metadata is refused; a covariance shard's moment is uploaded as its
// part only when its hash is the engine's.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Objm, StorageType, type ObjectStore } from "@nats-io/obj";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Counter, Registry } from "prom-client";
import { COVARIANCE_BUCKET, covarianceObjectName, covariancePartName } from "@factsweep/shared";
import { startNatsServer, type NatsServerHandle } from "@factsweep/testing";
import { AgentCovariances } from "./covariance-files.js";

let nats: NatsServerHandle;
let nc: NatsConnection;
let os: ObjectStore;
const dir = mkdtempSync(join(tmpdir(), "agent-cov-"));
before(async () => {
  nats = await startNatsServer();
  nc = await connect({ servers: nats.url });
  os = await new Objm(nc).create(COVARIANCE_BUCKET, { storage: StorageType.File });
});
after(async () => {
  await nc.close();
  await nats.stop();
  rmSync(dir, { recursive: true, force: true });
});

const object = (layer: number) => covarianceObjectName("0123456789abcdef", layer, "out_proj", "fedcba9876543210", 2048);
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function agent() {
  const counter = new Counter({ name: "c", help: "c", labelNames: ["source"], registers: [new Registry()] });
  const a = new AgentCovariances(Promise.resolve(nc), dir, counter);
  const count = async (source: string) => (await counter.get()).values.find((v) => v.labels.source === source)?.value ?? 0;
  return { a, count };
}

test("an edit's C is fetched once, then served from the local copy, and given to the engine as a checked file", async () => {
  const obj = object(1);
  const C = new Float32Array([2, 1, 1, 3]);
  const bytes = new Uint8Array(C.buffer);
  await os.putBlob({ name: obj, metadata: { dim: "2", tokens: "7" } }, bytes);
  const { a, count } = agent();
  const params = JSON.stringify({ matrix: "W_o", layer: 1, covariance: { object: obj } });
  const first = JSON.parse((await a.prepare(params)).paramsJson) as { covariance_file: { path: string; sha256: string; dim: number; tokens: number } };
  const again = JSON.parse((await a.prepare(params)).paramsJson) as typeof first;
  assert.deepEqual(again.covariance_file, first.covariance_file);
  assert.equal(first.covariance_file.dim, 2);
  assert.equal(first.covariance_file.tokens, 7);
  assert.equal(first.covariance_file.sha256, sha(bytes));
  assert.ok(Buffer.from(bytes).equals(readFileSync(first.covariance_file.path)));
  assert.deepEqual([await count("fetched"), await count("local")], [1, 1]);
  // Params without a covariance pass unchanged.
  assert.equal((await agent().a.prepare('{"matrix":"W_o"}')).paramsJson, '{"matrix":"W_o"}');
});

test("a C missing from the store, or whose bytes are not dim x dim float32, is refused naming the object", async () => {
  const { a, count } = agent();
  await assert.rejects(a.prepare(JSON.stringify({ covariance: { object: object(2) } })), /cov\..*l2.* is not in the object store factsweep-cov/);
  await os.putBlob({ name: object(3), metadata: { dim: "3", tokens: "7" } }, new Uint8Array(16));
  await assert.rejects(a.prepare(JSON.stringify({ covariance: { object: object(3) } })), /16 bytes with metadata dim 3.*not a float32 dim x dim matrix/);
  await assert.rejects(a.prepare(JSON.stringify({ covariance: { object: "../../etc/passwd" } })), /params\.covariance\.object/);
  assert.equal(await count("fetched"), 0);
});

test("a covariance shard's moment is uploaded as its part only when the file's hash is the engine's, and the file is removed", async () => {
  const obj = object(4);
  const { a } = agent();
  const prepared = await a.prepare(JSON.stringify({ matrix: "W_o", layer: 4, cov_only: true, covariance: { object: obj, part: 1, parts: 2 } }));
  const path = (JSON.parse(prepared.paramsJson) as { moment_path: string }).moment_path;
  const m = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);
  writeFileSync(path, m); // what the engine does
  await assert.rejects(prepared.finish!(JSON.stringify({ moment_sha256: "0".repeat(64), covariance: { tokens: 5, dim: 2 } })), /sha256/);
  assert.equal(await os.info(covariancePartName(obj, 1, 2)), null);
  assert.equal(existsSync(path), false);

  const ok = await a.prepare(JSON.stringify({ cov_only: true, covariance: { object: obj, part: 1, parts: 2 } }));
  const okPath = (JSON.parse(ok.paramsJson) as { moment_path: string }).moment_path;
  writeFileSync(okPath, m);
  await ok.finish!(JSON.stringify({ moment_sha256: sha(m), covariance: { tokens: 5, dim: 2 } }));
  const info = await os.info(covariancePartName(obj, 1, 2));
  assert.deepEqual(info?.metadata, { tokens: "5", dim: "2" });
  assert.ok(Buffer.from(m).equals(Buffer.from((await os.getBlob(covariancePartName(obj, 1, 2)))!)));
  assert.equal(existsSync(okPath), false);
});

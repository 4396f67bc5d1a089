/**
 * EngineClient against a scripted worker (a TEST DOUBLE over in-memory pipes): it causes replies
 * out of order, error replies, silence and a dying stream on demand, which the real worker does
 * not do on request. The end-to-end test against the real Python worker lives in test/.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { engine, ENGINE_PROTOCOL_VERSION } from "@factsweep/proto";
import { EngineClient } from "./engine-client.js";
import { encodeFrame, FrameDecoder } from "./engine-framing.js";
import { EngineClosedError, EngineRequestError, EngineTimeoutError } from "./engine-errors.js";

/** Test double: decodes requests from the client, lets the test decide every reply. */
function scriptedWorker() {
  const toWorker = new PassThrough();
  const fromWorker = new PassThrough();
  const requests: engine.EngineRequest[] = [];
  const waiters: (() => void)[] = [];
  const dec = new FrameDecoder();
  toWorker.pipe(dec);
  dec.on("data", (f: Buffer) => {
    requests.push(engine.EngineRequest.decode(f));
    waiters.splice(0).forEach((w) => w());
  });
  return {
    stdin: toWorker,
    stdout: fromWorker,
    requests,
    async waitFor(n: number) {
      while (requests.length < n) await new Promise<void>((r) => waiters.push(r));
    },
    reply(msg: engine.EngineResponse) {
      fromWorker.write(encodeFrame(engine.EngineResponse.encode(msg).finish()));
    },
    die() {
      fromWorker.end();
    },
  };
}

test("replies that arrive out of order resolve the request with the matching id", async () => {
  const w = scriptedWorker();
  const client = new EngineClient({ stdin: w.stdin, stdout: w.stdout });
  const hello = client.hello();
  const stats = client.stats();
  await w.waitFor(2);
  assert.equal(w.requests[0]!.body?.$case, "hello");
  assert.equal((w.requests[0]!.body as { hello: engine.Hello }).hello.protocolVersion, ENGINE_PROTOCOL_VERSION);
  const [h, s] = w.requests;
  w.reply({ requestId: s!.requestId, body: { $case: "stats", stats: engine.Stats.fromPartial({ cellsRun: 42 }) } });
  w.reply({ requestId: h!.requestId, body: { $case: "hello", hello: engine.HelloReply.fromPartial({ protocolVersion: 1, device: "cpu" }) } });
  assert.equal((await stats).cellsRun, 42);
  assert.equal((await hello).device, "cpu");
  assert.notEqual(h!.requestId, s!.requestId);
});

test("an EngineError reply rejects with EngineRequestError carrying code and field", async () => {
  const w = scriptedWorker();
  const client = new EngineClient({ stdin: w.stdin, stdout: w.stdout });
  const p = client.loadModel({ modelId: "m", path: "/nope" });
  await w.waitFor(1);
  w.reply({
    requestId: w.requests[0]!.requestId,
    body: { $case: "error", error: { code: engine.ErrorCode.ERROR_CODE_NOT_FOUND, field: "path", message: "no config.json in /nope" } },
  });
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof EngineRequestError);
    assert.equal(err.code, "ERROR_CODE_NOT_FOUND");
    assert.equal(err.field, "path");
    assert.equal(err.request, "loadModel");
    assert.match(err.message, /no config\.json/);
    return true;
  });
});

test("an unanswered request times out with EngineTimeoutError and its late reply is reported as stray", async () => {
  const w = scriptedWorker();
  const strays: (number | undefined)[] = [];
  const client = new EngineClient({ stdin: w.stdin, stdout: w.stdout, onStray: (s) => strays.push(s.requestId) });
  await assert.rejects(client.stats({ timeoutMs: 20 }), EngineTimeoutError);
  assert.equal(client.inFlight, 0);
  w.reply({ requestId: w.requests[0]!.requestId, body: { $case: "stats", stats: engine.Stats.fromPartial({}) } });
  // The client stays usable after a timeout.
  const next = client.stats();
  await w.waitFor(2);
  w.reply({ requestId: w.requests[1]!.requestId, body: { $case: "stats", stats: engine.Stats.fromPartial({ cellsRun: 1 }) } });
  assert.equal((await next).cellsRun, 1);
  assert.deepEqual(strays, [w.requests[0]!.requestId]);
});

test("when the worker's stdout ends every pending request rejects with EngineClosedError, and so do later ones", async () => {
  const w = scriptedWorker();
  const client = new EngineClient({ stdin: w.stdin, stdout: w.stdout });
  const a = client.runCells({ modelId: "m", promptKey: "k", cells: [] });
  const b = client.preparePrompt({ modelId: "m", promptKey: "k" });
  await w.waitFor(2);
  w.die();
  await assert.rejects(a, EngineClosedError);
  await assert.rejects(b, EngineClosedError);
  assert.equal(client.closed, true);
  await assert.rejects(client.stats(), EngineClosedError);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough, Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { encodeFrame, FrameDecoder, FrameEncoder } from "./engine-framing.js";
import { EngineProtocolError } from "./engine-errors.js";

async function collect(decoder: FrameDecoder, chunks: Buffer[]): Promise<Buffer[]> {
  const out: Buffer[] = [];
  decoder.on("data", (f: Buffer) => out.push(Buffer.from(f)));
  await pipeline(Readable.from(chunks, { objectMode: false }), decoder);
  return out;
}

const payloads = [Buffer.from("hello"), Buffer.alloc(0), Buffer.alloc(70_000, 7), Buffer.from([0, 1, 2, 3, 4])];
const wire = Buffer.concat(payloads.map((p) => encodeFrame(p)));

test("frames split into 1-byte chunks are reassembled in order", async () => {
  const chunks = [...wire].map((b) => Buffer.from([b]));
  const frames = await collect(new FrameDecoder(), chunks);
  assert.deepEqual(frames, payloads);
});

test("several frames merged into one chunk come out as separate frames", async () => {
  const frames = await collect(new FrameDecoder(), [wire]);
  assert.deepEqual(frames, payloads);
});

test("frames cut at arbitrary points (inside the length prefix too) decode identically", async () => {
  const cuts = [3, 6, 9, 10, 4000, 70_011, 70_013];
  const chunks: Buffer[] = [];
  let at = 0;
  for (const c of cuts) {
    chunks.push(wire.subarray(at, c));
    at = c;
  }
  chunks.push(wire.subarray(at));
  assert.deepEqual(await collect(new FrameDecoder(), chunks), payloads);
});

test("the encoder's output decodes back to the same payloads through real streams", async () => {
  const enc = new FrameEncoder();
  const dec = new FrameDecoder();
  const out: Buffer[] = [];
  dec.on("data", (f: Buffer) => out.push(Buffer.from(f)));
  const mid = new PassThrough();
  const done = pipeline(enc, mid, dec);
  for (const p of payloads) enc.write(p);
  enc.end();
  await done;
  assert.deepEqual(out, payloads);
});

test("a length prefix above the maximum fails the stream with EngineProtocolError", async () => {
  const bad = Buffer.from("Loading model...\n"); // text on stdout reads as a huge length
  await assert.rejects(collect(new FrameDecoder({ maxFrameBytes: 1 << 20 }), [bad]), EngineProtocolError);
});

test("a stream that ends inside a frame is an EngineProtocolError, not a silent drop", async () => {
  await assert.rejects(collect(new FrameDecoder(), [wire.subarray(0, 7)]), /ended inside a frame/);
});

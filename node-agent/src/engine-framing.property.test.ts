// Issue 15 (fuzzing in CI, bounded in time): property tests of the engine protocol's frame decoder
// (4-byte big-endian length, then the payload). Fixed seed and run counts (deterministic in CI);
// a failure prints fast-check's seed, path and counterexample.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameDecoder } from "./engine-framing.js";
import { EngineProtocolError } from "./engine-errors.js";

const SEED = 0x15fd;
const run = <T>(prop: fc.IAsyncProperty<T>, numRuns: number) => fc.assert(prop, { seed: SEED, numRuns, verbose: 1, endOnFailure: true });

/** Feeds chunks to a decoder (stopping at its first error) and ends it; the frames it emitted and its error. */
function decode(chunks: Uint8Array[], maxFrameBytes?: number): Promise<{ frames: Buffer[]; error?: unknown }> {
  const d = new FrameDecoder(maxFrameBytes === undefined ? {} : { maxFrameBytes });
  const frames: Buffer[] = [];
  d.on("data", (f: Buffer) => frames.push(Buffer.from(f)));
  return new Promise((resolve) => {
    d.once("error", (error) => resolve({ frames, error }));
    d.once("end", () => resolve({ frames }));
    for (const c of chunks) {
      if (d.destroyed) return;
      d.write(Buffer.from(c));
    }
    if (!d.destroyed) d.end();
  });
}

/** The bytes cut at the given points (sorted, deduplicated), empty chunks included. */
function cut(bytes: Buffer, points: number[]): Buffer[] {
  const at = [...new Set(points.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of at) {
    out.push(bytes.subarray(prev, p));
    prev = p;
  }
  out.push(bytes.subarray(prev));
  return out;
}

/** What the bytes are, decoded in one piece by a plain reading of the format. */
function reference(bytes: Buffer, max: number): { frames: Buffer[]; end: "clean" | "too_large" | "incomplete" } {
  const frames: Buffer[] = [];
  let at = 0;
  while (bytes.length - at >= 4) {
    const len = bytes.readUInt32BE(at);
    if (len > max) return { frames, end: "too_large" };
    if (bytes.length - at - 4 < len) return { frames, end: "incomplete" };
    frames.push(bytes.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return { frames, end: at === bytes.length ? "clean" : "incomplete" };
}

const payloads = fc.array(
  fc.oneof(
    { weight: 8, arbitrary: fc.uint8Array({ maxLength: 64 }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 70_000 }).map((n) => new Uint8Array(n).fill(n & 0xff)) },
  ),
  { maxLength: 8 },
);

test("any chunking of a valid frame stream (inside length prefixes too, empty chunks too) decodes to the same frames", async () => {
  await run(
    fc.asyncProperty(payloads, fc.array(fc.nat(), { maxLength: 20 }), async (ps, points) => {
      const wire = Buffer.concat(ps.map((p) => encodeFrame(p)));
      const got = await decode(cut(wire, points));
      assert.equal(got.error, undefined);
      assert.deepEqual(
        got.frames,
        ps.map((p) => Buffer.from(p)),
      );
    }),
    300,
  );
});

test("arbitrary bytes, arbitrarily chunked, decode as the format says or fail with an EngineProtocolError only", async () => {
  const bytes = fc.oneof(
    fc.uint8Array({ maxLength: 200 }),
    // mostly-valid streams with a corrupted byte: lengths that overrun, truncate or exceed the cap
    fc.tuple(payloads, fc.nat(), fc.integer({ min: 0, max: 255 })).map(([ps, at, b]) => {
      const wire = Buffer.concat(ps.map((p) => encodeFrame(p)));
      if (wire.length > 0) wire[at % wire.length] = b;
      return new Uint8Array(wire);
    }),
  );
  await run(
    fc.asyncProperty(
      bytes,
      fc.array(fc.nat(), { maxLength: 10 }),
      fc.oneof(fc.constant(undefined), fc.integer({ min: 0, max: 100_000 })),
      async (b, points, max) => {
        const buf = Buffer.from(b);
        const want = reference(buf, max ?? DEFAULT_MAX_FRAME_BYTES);
        const got = await decode(cut(buf, points), max);
        if (want.end === "clean") {
          assert.equal(got.error, undefined);
          assert.deepEqual(got.frames, want.frames);
          return;
        }
        assert.ok(got.error instanceof EngineProtocolError, `expected an EngineProtocolError, got ${String(got.error)}`);
        assert.match(got.error.message, want.end === "too_large" ? /exceeds the maximum/ : /stream ended inside a frame/);
        assert.deepEqual(got.frames, want.frames.slice(0, got.frames.length), "frames before the error are the stream's first frames");
      },
    ),
    400,
  );
});

test("a length over the cap is refused as soon as its 4 bytes arrive, without waiting for or allocating the payload", async () => {
  const before = process.memoryUsage().arrayBuffers;
  await run(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 2 ** 20 }),
      fc.integer({ min: 1, max: 2 ** 32 - 1 }),
      fc.uint8Array({ maxLength: 16 }),
      fc.array(fc.nat(), { maxLength: 4 }),
      async (max, over, tail, points) => {
        const length = Math.min(2 ** 32 - 1, max + over);
        const head = Buffer.alloc(4);
        head.writeUInt32BE(length);
        // No `end()`: the refusal must come from the prefix alone, not from the stream ending.
        const d = new FrameDecoder({ maxFrameBytes: max });
        const error = await new Promise<unknown>((resolve) => {
          d.once("error", resolve);
          d.on("data", () => resolve(new Error("a frame was emitted")));
          for (const c of cut(Buffer.concat([head, tail]), points)) if (!d.destroyed) d.write(c);
          setImmediate(() => resolve(undefined));
        });
        assert.ok(error instanceof EngineProtocolError, `expected an EngineProtocolError, got ${String(error)}`);
        assert.match(error.message, new RegExp(`frame length ${length} exceeds the maximum of ${max} bytes`));
      },
    ),
    300,
  );
  // And at the default cap: 0xffffffff (4 GiB) is refused at once; a just-allowed 512 MiB frame is buffered as it comes, never allocated up front.
  const huge = await decode([Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])]);
  assert.ok(huge.error instanceof EngineProtocolError);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(DEFAULT_MAX_FRAME_BYTES);
  const partial = await decode([head, Buffer.alloc(1000)]);
  assert.match(String((partial.error as Error)?.message), /stream ended inside a frame \(1004 bytes/);
  assert.ok(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024, "no frame-sized allocation");
});

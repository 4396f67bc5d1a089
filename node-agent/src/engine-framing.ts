/**
 * Framing of the engine worker protocol (proto/engine.proto): each message is a 4-byte big-endian
 * unsigned length followed by that many bytes. Pipes deliver arbitrary chunks, so the decoder
 * reassembles frames split across chunks and splits chunks that hold several frames.
 */
import { Transform, type TransformCallback } from "node:stream";
import { EngineProtocolError } from "./engine-errors.js";

/** Frames larger than this are refused (a corrupt length prefix would otherwise buffer forever). */
export const DEFAULT_MAX_FRAME_BYTES = 512 * 1024 * 1024;

/** One frame: the 4-byte big-endian length of `payload`, then `payload`. */
export function encodeFrame(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(4 + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, 4);
  return frame;
}

/**
 * Transform stream: bytes in, one `Buffer` per complete frame out (object mode). A length above
 * `maxFrameBytes` fails the stream with an {@link EngineProtocolError}; a stream that ends in the
 * middle of a frame fails the same way (the peer died mid-write).
 */
export class FrameDecoder extends Transform {
  private readonly maxFrameBytes: number;
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(opts: { maxFrameBytes?: number } = {}) {
    super({ readableObjectMode: true });
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    try {
      this.drain();
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    if (this.buffered > 0) {
      done(new EngineProtocolError(`stream ended inside a frame (${this.buffered} bytes of an incomplete frame)`));
    } else {
      done();
    }
  }

  /** Emit every complete frame in the buffer; concatenates lazily, only when a frame is complete. */
  private drain(): void {
    while (this.buffered >= 4) {
      let head = this.chunks[0]!;
      if (head.length < 4) {
        head = Buffer.concat(this.chunks);
        this.chunks = [head];
      }
      const length = head.readUInt32BE(0);
      if (length > this.maxFrameBytes) {
        throw new EngineProtocolError(
          `frame length ${length} exceeds the maximum of ${this.maxFrameBytes} bytes; the stream is not length-prefixed protobuf (did the worker print to stdout?)`,
        );
      }
      if (this.buffered < 4 + length) return;
      const all = this.chunks.length === 1 ? head : Buffer.concat(this.chunks);
      this.push(all.subarray(4, 4 + length));
      const rest = all.subarray(4 + length);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
    }
  }
}

/** Transform stream: one payload (Uint8Array) in, its frame bytes out. */
export class FrameEncoder extends Transform {
  constructor() {
    super({ writableObjectMode: true });
  }

  override _transform(payload: Uint8Array, _enc: BufferEncoding, done: TransformCallback): void {
    done(null, encodeFrame(payload));
  }
}

"""Length-prefixed protobuf frames: the byte format of the engine worker protocol.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of one serialized
message (``EngineRequest`` towards the worker, ``EngineResponse`` back). These helpers are used by
the worker itself, by its tests and by bench scripts that drive a worker over a pipe::

    proc = subprocess.Popen([sys.executable, "-m", "engine"], stdin=PIPE, stdout=PIPE)
    client = WorkerClient(proc.stdin, proc.stdout)
    reply = client.call(hello=pb.Hello(protocol_version=PROTOCOL_VERSION))

Only the standard library and protobuf are imported here, so importing this module is fast.
"""

from __future__ import annotations

import io
import os
import select
import time
import struct
from typing import BinaryIO, Optional

from engine.errors import ProtocolError

HEADER = struct.Struct(">I")
"""The length prefix: 4 bytes, big-endian, unsigned."""

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest payload a worker accepts by default (``--max-frame-bytes``). A longer prefix is taken as
a corrupted stream: a real request, explicit noise included, is far smaller."""


class FrameError(ProtocolError):
    """The byte stream does not hold a well-formed frame."""


class FrameTooLarge(FrameError):
    """A length prefix above the allowed maximum; the stream cannot be resynchronised after it."""

    def __init__(self, length: int, max_bytes: int):
        super().__init__(
            f"frame length prefix is {length} bytes, above the maximum of {max_bytes} bytes; "
            "the stream is corrupt (is something other than a frame writer on the pipe?) or the "
            "request is too large: raise --max-frame-bytes if it is genuine",
            field="frame.length",
        )
        self.length = length
        self.max_bytes = max_bytes


class TruncatedFrame(FrameError):
    """End of stream in the middle of a frame."""

    def __init__(self, got: int, expected: int, part: str):
        super().__init__(
            f"stream ended inside a frame {part}: got {got} of {expected} bytes",
            field=f"frame.{part}",
        )
        self.got = got
        self.expected = expected


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Reads up to ``n`` bytes, looping over short reads (pipes return what they have)."""
    chunks = []
    left = n
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Optional[bytes]:
    """Reads one frame's payload. Returns ``None`` on a clean end of stream (before any byte of a
    frame); raises ``TruncatedFrame`` when the stream ends inside a frame and ``FrameTooLarge``
    when the prefix exceeds ``max_bytes`` (the payload is then left unread)."""
    header = _read_exact(stream, HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise TruncatedFrame(len(header), HEADER.size, "length")
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(length, max_bytes)
    payload = _read_exact(stream, length)
    if len(payload) < length:
        raise TruncatedFrame(len(payload), length, "payload")
    return payload


class FrameReader:
    """Reads frames through its own buffer, so a reader can also ask, without blocking, whether the
    whole next frame has already arrived (:meth:`ready_frame`; the worker's lookahead). On a stream
    with a file descriptor it reads the descriptor itself (``os.read``: give it an unbuffered stream,
    or one nothing has read from yet); on any other stream it calls ``read`` and never looks ahead."""

    CHUNK = 1 << 16

    def __init__(self, stream: BinaryIO, max_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self._stream = stream
        self.max_bytes = max_bytes
        try:
            self._fd: Optional[int] = stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self._fd = None
        self._buf = bytearray()
        self._eof = False

    def _fill(self, want: int, block: bool, wait: float = 0.0) -> bool:
        """Appends what the stream has (up to about ``want`` bytes); ``block``: wait for at least one
        byte. False at the end of the stream, or (not blocking) when nothing is readable within ``wait``
        seconds."""
        if self._eof:
            return False
        size = max(self.CHUNK, want)
        if self._fd is not None:
            if not block and not select.select([self._fd], [], [], wait)[0]:
                return False
            chunk = os.read(self._fd, size)
        elif not block:
            return False
        else:
            chunk = self._stream.read(size)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def _length(self) -> Optional[int]:
        return HEADER.unpack_from(self._buf)[0] if len(self._buf) >= HEADER.size else None

    def read_frame(self) -> Optional[bytes]:
        """As the module's :func:`read_frame`: the next payload, ``None`` on a clean end of stream,
        ``TruncatedFrame`` / ``FrameTooLarge`` otherwise."""
        while len(self._buf) < HEADER.size and self._fill(HEADER.size - len(self._buf), True):
            pass
        if not self._buf:
            return None
        if len(self._buf) < HEADER.size:
            raise TruncatedFrame(len(self._buf), HEADER.size, "length")
        length = self._length()
        if length > self.max_bytes:
            raise FrameTooLarge(length, self.max_bytes)
        end = HEADER.size + length
        while len(self._buf) < end and self._fill(end - len(self._buf), True):
            pass
        if len(self._buf) < end:
            raise TruncatedFrame(len(self._buf) - HEADER.size, length, "payload")
        payload = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return payload

    def ready_frame(self, wait: float = 0.0) -> Optional[bytes]:
        """The next frame's payload if all of it is already here (buffered, or readable without
        blocking; with ``wait``, arriving within about that many seconds), without consuming it
        (:meth:`read_frame` returns it next); otherwise ``None`` (also for a frame over ``max_bytes``,
        left to :meth:`read_frame` to refuse)."""
        deadline = time.monotonic() + wait
        while True:
            length = self._length()
            if length is not None:
                if length > self.max_bytes:
                    return None
                if len(self._buf) >= HEADER.size + length:
                    return bytes(self._buf[HEADER.size:HEADER.size + length])
            want = HEADER.size + (length or 0) - len(self._buf)
            if not self._fill(want, False, max(0.0, deadline - time.monotonic())):
                return None


def encode_frame(payload: bytes) -> bytes:
    """Prefixes ``payload`` with its length."""
    if len(payload) > 0xFFFFFFFF:
        raise ValueError(f"frame payload of {len(payload)} bytes does not fit a 4-byte length prefix")
    return HEADER.pack(len(payload)) + payload


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    """Writes one frame in a single write and flushes, so a frame is never left half in a buffer."""
    stream.write(encode_frame(payload))
    stream.flush()


def write_message(stream: BinaryIO, message) -> None:
    """Serializes a protobuf message and writes it as one frame."""
    write_frame(stream, message.SerializeToString())


def read_message(stream: BinaryIO, message_type, max_bytes: int = DEFAULT_MAX_FRAME_BYTES):
    """Reads one frame and parses it as ``message_type``; ``None`` on a clean end of stream."""
    payload = read_frame(stream, max_bytes)
    if payload is None:
        return None
    return message_type.FromString(payload)


class WorkerClient:
    """Request/response helper over a worker's pipes: numbers requests, checks that each response
    echoes its request's id. Errors come back as ``EngineResponse`` with ``error`` set; they are
    returned, not raised, so callers can assert on them."""

    def __init__(self, to_worker: BinaryIO, from_worker: BinaryIO, first_request_id: int = 1):
        from engine.proto import engine_pb2  # deferred: the generated module is only needed here

        self._pb = engine_pb2
        self._to = to_worker
        self._from = from_worker
        self._next_id = first_request_id

    def send(self, request_id: Optional[int] = None, **body) -> int:
        """Sends one ``EngineRequest`` whose body is the single keyword given (e.g.
        ``hello=pb.Hello(...)``); returns its request_id."""
        if len(body) != 1:
            raise ValueError(f"expected exactly one body keyword, got {sorted(body)}")
        if request_id is None:
            request_id = self._next_id
            self._next_id += 1
        request = self._pb.EngineRequest(request_id=request_id, **body)
        write_message(self._to, request)
        return request_id

    def receive(self):
        """Reads one ``EngineResponse``; raises ``EOFError`` if the worker closed its stdout."""
        response = read_message(self._from, self._pb.EngineResponse, max_bytes=0xFFFFFFFF)
        if response is None:
            raise EOFError("engine worker closed its stdout")
        return response

    def call(self, **body):
        """Sends one request and returns its response, checking the echoed request_id."""
        request_id = self.send(**body)
        response = self.receive()
        if response.request_id != request_id:
            raise ProtocolError(
                f"response carries request_id {response.request_id}, expected {request_id}",
                field="request_id",
            )
        return response

"""Framing: the 8-byte frame header, an incremental decoder and the encoder. Bytes only, no I/O.

Every request and response on a stream is a sequence of frames::

    offset 0  type      u8   FrameType; unknown types are rejected
    offset 1  flags     u8   bit 0 FINAL: last frame of this request or response;
                             every other bit must be 0
    offset 2  reserved  u16  must be 0
    offset 4  length    u32  payload length, little-endian
    offset 8  payload   ``length`` bytes

Theory of operation of ``FrameDecoder``: the transport hands over whatever bytes arrived, split
anywhere. The decoder validates each header as soon as its 8 bytes are complete, so a hostile
length (up to 2**32-1), type or flag is refused *before* a single payload byte is buffered. A
payload that arrived whole inside one ``feed`` call is returned as a memoryview slice of that
call's buffer (no copy); a payload split across calls is kept as a list of slices and joined
once when its last byte arrives (one copy, however many pieces). After an error the decoder is
dead: every later call raises again, since the stream position is lost.

Ownership: payload views point into the buffers given to ``feed``. Feed ``bytes`` (what
asyncio and aioquic deliver) or never modify a fed buffer afterwards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from dits.protocol.errors import ProtocolViolation, TooLargeError

__all__ = [
    "FLAG_FINAL",
    "HEADER_SIZE",
    "MAX_LENGTH_FIELD",
    "Buffer",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "encode_frame",
    "frame_header",
]

HEADER_SIZE = 8
FLAG_FINAL = 0x01
_KNOWN_FLAGS = FLAG_FINAL
MAX_LENGTH_FIELD = 0xFFFF_FFFF

_HEADER = struct.Struct("<BBHI")

Buffer = bytes | memoryview
"""What encoders return and transports write: ``bytes`` or a read-only-by-convention view."""


class FrameType(IntEnum):
    """The u8 ``type`` of a frame; each names the message its payload encodes."""

    HELLO = 0x01
    WELCOME = 0x02
    LIST_REFS = 0x10
    REFS = 0x11
    HAVE = 0x12
    HAVE_RESULT = 0x13
    PUT_CHUNK = 0x14
    PUT_RESULT = 0x15
    PUT_OBJECT = 0x16
    DATA_PART = 0x17
    GET = 0x18
    BLOB = 0x19
    UPDATE_REFS = 0x1A
    REFS_UPDATED = 0x1B
    STATS = 0x1C
    STATS_RESULT = 0x1D
    PUT_SPECULATIVE = 0x1E
    PING = 0x20
    PONG = 0x21
    ERROR = 0x7F


_TYPES: dict[int, FrameType] = {t.value: t for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        type: what the payload encodes.
        final: the FINAL flag: this frame ends the request or response.
        payload: the payload bytes (a view; see the module docstring on ownership).
    """

    type: FrameType
    final: bool
    payload: memoryview


def encode_frame(type: FrameType, payload: Buffer, final: bool) -> list[Buffer]:
    """Return the buffers of one frame: its header and, when not empty, the payload uncopied.

    Args:
        type: the frame type.
        payload: the payload bytes.
        final: set the FINAL flag.

    Returns:
        ``[header]`` or ``[header, payload]``, to be written in order (``writelines``).

    Raises:
        ValueError: the payload is longer than the u32 length field allows.
    """
    length = memoryview(payload).nbytes
    header = frame_header(type, length, final)
    return [header, payload] if length else [header]


def frame_header(type: FrameType, length: int, final: bool) -> bytes:
    """Return the 8-byte header of a frame whose payload is ``length`` bytes.

    Raises:
        ValueError: ``length`` does not fit the u32 length field, or ``type`` is unknown.
    """
    if not 0 <= length <= MAX_LENGTH_FIELD:
        raise ValueError(f"frame payload of {length} bytes does not fit the u32 length field")
    return _HEADER.pack(FrameType(type), FLAG_FINAL if final else 0, 0, length)


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class FrameDecoder:
    """Incremental frame decoder for one stream (see the module docstring).

    Args:
        max_payload: the largest payload accepted; a longer length field is refused as soon
            as the header is complete, before any payload is buffered.
    """

    __slots__ = (
        "_failed",
        "_final",
        "_have",
        "_header",
        "_max_payload",
        "_need",
        "_pieces",
        "_type",
    )

    def __init__(self, max_payload: int) -> None:
        if not 0 <= max_payload <= MAX_LENGTH_FIELD:
            raise ValueError(f"max_payload must be 0..{MAX_LENGTH_FIELD}, got {max_payload}")
        self._max_payload = max_payload
        self._header = bytearray()
        self._type: FrameType | None = None
        self._final = False
        self._need = 0
        self._have = 0
        self._pieces: list[memoryview] = []
        self._failed = False

    @property
    def pending(self) -> int:
        """Bytes held for a frame that is not complete yet (header and payload)."""
        if self._type is not None:
            return HEADER_SIZE + self._have
        return len(self._header)

    @property
    def bytes_needed(self) -> int:
        """Bytes that complete the header or frame in progress (8 when between frames).

        A reader that must not read past a frame (a pooled TCP connection carries the next
        request right after this one's FINAL frame) can ``readexactly(bytes_needed)`` in a loop.
        """
        if self._type is not None:
            return self._need - self._have
        return HEADER_SIZE - len(self._header)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume ``data`` and return the frames it completes, in order.

        Raises:
            ProtocolViolation: a header with an unknown type, unknown flag bits or a nonzero
                reserved field, or a call after an earlier error.
            TooLargeError: a length field above ``max_payload``.
        """
        if self._failed:
            raise ProtocolViolation("frame decoder used after a protocol error")
        try:
            return self._feed(_as_bytes_view(data))
        except ProtocolViolation:
            self._failed = True
            raise

    def eof(self) -> None:
        """Declare the end of the stream.

        Raises:
            ProtocolViolation: the stream ended inside a frame.
        """
        if self._failed:
            raise ProtocolViolation("frame decoder used after a protocol error")
        if self._header or self._type is not None:
            self._failed = True
            raise ProtocolViolation(
                f"stream ended inside a frame ({self.pending} bytes of an incomplete frame)"
            )

    def _feed(self, view: memoryview) -> list[Frame]:
        frames: list[Frame] = []
        pos = 0
        end = len(view)
        while True:
            if self._type is None:
                if pos == end:
                    break
                if not self._header and end - pos >= HEADER_SIZE:
                    self._start(view[pos : pos + HEADER_SIZE])
                    pos += HEADER_SIZE
                else:
                    take = min(HEADER_SIZE - len(self._header), end - pos)
                    self._header += view[pos : pos + take]
                    pos += take
                    if len(self._header) < HEADER_SIZE:
                        break
                    self._start(memoryview(self._header))
                    self._header = bytearray()
            # Payload of the current frame (possibly empty).
            missing = self._need - self._have
            if not self._pieces and end - pos >= missing:
                payload = view[pos : pos + missing]
                pos += missing
            else:
                take = min(missing, end - pos)
                if take:
                    self._pieces.append(view[pos : pos + take])
                    self._have += take
                    pos += take
                if self._have < self._need:
                    break
                payload = memoryview(b"".join(self._pieces))
                self._pieces = []
            assert self._type is not None
            frames.append(Frame(self._type, self._final, payload))
            self._type = None
            self._need = self._have = 0
        return frames

    def _start(self, header: memoryview) -> None:
        type_, flags, reserved, length = _HEADER.unpack(header)
        frame_type = _TYPES.get(type_)
        if frame_type is None:
            raise ProtocolViolation(f"unknown frame type 0x{type_:02x}")
        if flags & ~_KNOWN_FLAGS:
            raise ProtocolViolation(f"unknown frame flags 0x{flags:02x}")
        if reserved:
            raise ProtocolViolation("reserved frame header field is not zero")
        if length > self._max_payload:
            raise TooLargeError(
                f"frame payload of {length} bytes exceeds the limit of {self._max_payload}"
            )
        self._type = frame_type
        self._final = bool(flags & FLAG_FINAL)
        self._need = length
        self._have = 0

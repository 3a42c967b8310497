"""Every message of protocol version 1 as a frozen dataclass, with its one encoding. No I/O.

Each message class has ``TYPE`` (its frame type), ``encode() -> bytes`` (the frame payload),
``encode_parts()`` (the same payload as a list of buffers, large data uncopied) and the
classmethod ``decode(payload)``. The byte layouts, with offsets, are in docs/protocol.md; the
golden-bytes tests in tests/unit/test_protocol.py pin them.

Conventions: integers are fixed-width little-endian; ``id`` is 32 raw bytes; ``str16`` is a u16
byte length plus that many bytes of *strict* UTF-8. Decoding is strict: a short field, trailing
bytes, bad UTF-8, an unknown enum value or flag bit, a count that the remaining bytes cannot hold
or that exceeds its cap all raise ``ProtocolViolation``, and nothing is allocated from a length
or count before it has been checked against the bytes actually present. Encoding a value that
cannot be represented (a string over 65,535 bytes, an id that is not 32 bytes) raises
``ValueError``: that is a bug in the caller, not the peer (h11's local/remote split).

Two messages may exceed one frame: ``PutObject`` and ``Blob`` (a manifest for a 200 GB file is
~29 MB). They declare ``data_size`` up front and, when the data does not fit the first frame,
continue in ``DATA_PART`` frames (type 0x17) that carry nothing but the next data bytes. The
receiver checks ``data_size`` against its limit before buffering anything
(``dits.protocol.stream``). ``decode`` here handles the single-frame case only.

``decode_chunk_data`` and ``verify_chunk`` turn a received PutChunk or Blob into verified plain
bytes. zstd is used directly here rather than through ``dits.core.compression``: that module's
at-rest form is a tagged buffer whose frames must record their size, while the wire carries the
encoding and the plain size in the message header and may carry frames without a size; going
through it would copy every chunk once more.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Self

import zstandard

from dits.core.ids import ID_LEN, ObjectId, hash_bytes
from dits.protocol.errors import (
    MAX_ERROR_IDS,
    HashMismatchError,
    ProtocolViolation,
    TooLargeError,
    UnsupportedVersionError,
)
from dits.protocol.frames import Buffer, Frame, FrameType, encode_frame, frame_header

__all__ = [
    "ALPN",
    "MAX_IDS",
    "MIN_PAYLOAD",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "ZERO_ID",
    "Blob",
    "BlobKind",
    "Encoding",
    "Error",
    "Get",
    "Have",
    "HaveResult",
    "Hello",
    "Limits",
    "ListRefs",
    "Message",
    "Permission",
    "Ping",
    "Pong",
    "PutChunk",
    "PutObject",
    "PutResult",
    "PutSpeculative",
    "RefChange",
    "Refs",
    "RefsUpdated",
    "Stats",
    "StatsResult",
    "UpdateRefs",
    "Welcome",
    "decode_chunk_data",
    "decode_message",
    "encode_message",
    "negotiate_version",
    "verify_chunk",
    "zstd_bound",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
ALPN = "dits/1"
"""The QUIC/TLS application protocol name of version 1."""

ZERO_ID = ObjectId(bytes(ID_LEN))
"""On the wire, "no id": a ref that does not exist (old) or is to be deleted (new)."""

MIN_PAYLOAD = 256 * 1024
"""The smallest ``max_payload`` a peer may announce: every fixed-size message fits in it."""

MAX_IDS = 1 << 20
"""Hard cap on the count of a Have, Get, HaveResult or UpdateRefs, whatever the limits say.

``max_batch`` may not exceed it. It bounds what decoding allocates: a HaveResult bitmap of
128 KiB becomes a tuple of a million booleans (8 MiB), never more.
"""

_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFF_FFFF
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_PUT_CHUNK_HEAD = struct.Struct("<32sBI")
_PUT_OBJECT_HEAD = struct.Struct("<32sI")
_BLOB_HEAD = struct.Struct("<32sBII")
_LIMITS = struct.Struct("<IIIHI")
_NONCE_LEN = 8


class Permission(IntFlag):
    """What a Welcome grants on the repository (u8 bitmask; other bits are invalid)."""

    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 4


_ALL_PERMISSIONS = int(Permission.READ | Permission.WRITE | Permission.ADMIN)


class BlobKind(IntEnum):
    """What a Have or Get is about: chunk ids or object ids (two separate id spaces)."""

    CHUNK = 1
    OBJECT = 2


class Encoding(IntEnum):
    """How PutChunk or Blob data is encoded: the plain bytes, or exactly one zstd frame."""

    RAW = 0
    ZSTD = 1


def zstd_bound(plain_size: int) -> int:
    """Return the largest zstd ``data`` accepted for ``plain_size`` plain bytes.

    Above zstd's own worst case (``ZSTD_compressBound``), so any honest frame fits; a sender
    whose compression does not pay sends RAW instead.
    """
    return plain_size + (plain_size >> 8) + 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes a server accepts, announced in Welcome; every decoder enforces them.

    Attributes:
        max_payload: largest frame payload in bytes (both directions).
        max_chunk_size: largest plain chunk in bytes.
        max_batch: most ids in one Have or Get (and ref changes in one UpdateRefs).
        max_streams: most concurrent request streams per connection.
        max_object_size: largest object encoding in bytes (an object may span frames).
    """

    max_payload: int = 8 * 1024 * 1024 + 64
    max_chunk_size: int = 4 * 1024 * 1024
    max_batch: int = 16384
    max_streams: int = 64
    max_object_size: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not MIN_PAYLOAD <= self.max_payload <= _MAX_U32:
            raise ValueError(f"max_payload must be {MIN_PAYLOAD}..{_MAX_U32}")
        if not 1 <= self.max_chunk_size <= self.max_payload - 64:
            raise ValueError("max_chunk_size must be positive and fit one frame with its header")
        if not 1 <= self.max_batch <= MAX_IDS or 5 + ID_LEN * self.max_batch > self.max_payload:
            raise ValueError(
                f"max_batch must be 1..{MAX_IDS} and a full Have or Get must fit one frame"
            )
        if not 1 <= self.max_streams <= _MAX_U16:
            raise ValueError(f"max_streams must be 1..{_MAX_U16}")
        if not 1 <= self.max_object_size <= _MAX_U32:
            raise ValueError(f"max_object_size must be 1..{_MAX_U32}")

    def narrowed(self, other: Limits) -> Limits:
        """Return the field-wise minimum: a client applies a server's limits under its own."""
        return Limits(
            max_payload=min(self.max_payload, other.max_payload),
            max_chunk_size=min(self.max_chunk_size, other.max_chunk_size),
            max_batch=min(self.max_batch, other.max_batch),
            max_streams=min(self.max_streams, other.max_streams),
            max_object_size=min(self.max_object_size, other.max_object_size),
        )


def negotiate_version(offered: Iterable[int]) -> int:
    """Return the highest protocol version both ``offered`` and this code speak.

    Raises:
        UnsupportedVersionError: no common version.
    """
    common = set(offered).intersection(SUPPORTED_VERSIONS)
    if not common:
        raise UnsupportedVersionError(
            f"no common protocol version (server speaks {list(SUPPORTED_VERSIONS)})"
        )
    return max(common)


# --- encoding and decoding primitives -------------------------------------------------------


def _check_id(oid: bytes) -> bytes:
    if len(oid) != ID_LEN:
        raise ValueError(f"an id is {ID_LEN} bytes, got {len(oid)}")
    return oid


def _str16(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > _MAX_U16:
        raise ValueError(f"string of {len(raw)} bytes does not fit a u16 length")
    return _U16.pack(len(raw)) + raw


def _bytes16(data: bytes) -> bytes:
    if len(data) > _MAX_U16:
        raise ValueError(f"{len(data)} bytes do not fit a u16 length")
    return _U16.pack(len(data)) + data


def _ids(ids: tuple[ObjectId, ...]) -> bytes:
    return b"".join(_check_id(i) for i in ids)


def _count(n: int) -> bytes:
    if n > MAX_IDS:
        raise ValueError(f"{n} entries exceed the per-message cap of {MAX_IDS}")
    return _U32.pack(n)


def _u32(value: int, what: str) -> bytes:
    if not 0 <= value <= _MAX_U32:
        raise ValueError(f"{what} {value} does not fit a u32")
    return _U32.pack(value)


class _Reader:
    """Bounds-checked cursor over a payload; every malformation is a ProtocolViolation."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: Buffer, what: str) -> None:
        view = memoryview(data)
        self.data = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        self.pos = 0
        self.what = what

    def fail(self, reason: str) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self.what}: {reason}")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n > self.remaining:
            raise self.fail("truncated")
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def oid(self) -> ObjectId:
        return ObjectId(self.take(ID_LEN).tobytes())

    def ids(self, count: int) -> tuple[ObjectId, ...]:
        raw = self.take(count * ID_LEN).tobytes()  # take() checks the length first
        return tuple(ObjectId(raw[i : i + ID_LEN]) for i in range(0, len(raw), ID_LEN))

    def text16(self) -> str:
        raw = self.take(self.u16())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8") from None

    def bytes16(self) -> bytes:
        return self.take(self.u16()).tobytes()

    def rest(self) -> memoryview:
        return self.take(self.remaining)

    def count(self) -> int:
        """A u32 id or entry count, capped at MAX_IDS."""
        value = self.u32()
        if value > MAX_IDS:
            raise self.fail(f"count {value} exceeds the cap of {MAX_IDS}")
        return value

    def enum(self, enum: type[IntEnum], value: int) -> Any:
        try:
            return enum(value)
        except ValueError:
            raise self.fail(f"unknown {enum.__name__} {value}") from None

    def end(self) -> None:
        if self.remaining:
            raise self.fail(f"{self.remaining} trailing bytes")


class _Message:
    """Shared behaviour; subclasses are frozen dataclasses with a ``TYPE``."""

    __slots__ = ()
    TYPE: ClassVar[FrameType]

    def encode_parts(self) -> list[Buffer]:
        """Return the payload as buffers to write in order (large data is not copied)."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """Return the frame payload of this message.

        Raises:
            ValueError: a field cannot be represented (too long, wrong id length, ...).
        """
        return b"".join(self.encode_parts())


# --- connection setup -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(_Message):
    """0x01, client to server, the first request on every connection.

    Attributes:
        versions: protocol versions the client speaks (1 to 255 of them).
        token: the bearer token; empty for anonymous access.
        repo: the repository name on the server.
        agent: free text naming the client, e.g. ``dits/0.1.0``.
    """

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    versions: tuple[int, ...]
    token: bytes
    repo: str
    agent: str

    def encode_parts(self) -> list[Buffer]:
        if not 1 <= len(self.versions) <= 255:
            raise ValueError("Hello offers 1 to 255 versions")
        return [
            _U8.pack(len(self.versions)),
            b"".join(_U16.pack(v) for v in self.versions),
            _bytes16(self.token),
            _str16(self.repo),
            _str16(self.agent),
        ]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one Hello."""
        r = _Reader(payload, "Hello")
        count = r.u8()
        if count == 0:
            raise r.fail("no protocol versions offered")
        versions = tuple(r.u16() for _ in range(count))
        msg = cls(versions, r.bytes16(), r.text16(), r.text16())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Welcome(_Message):
    """0x02, the reply to Hello: the chosen version, the caller's permissions, the limits.

    Attributes:
        version: the protocol version for the rest of the connection.
        permissions: what the token may do on the repository.
        server_id: free text naming the server instance.
        limits: sizes the server accepts; the client narrows its own limits with them.
    """

    TYPE: ClassVar[FrameType] = FrameType.WELCOME
    version: int
    permissions: Permission
    server_id: str
    limits: Limits

    def encode_parts(self) -> list[Buffer]:
        lim = self.limits
        if int(self.permissions) & ~_ALL_PERMISSIONS:
            raise ValueError(f"unknown permission bits in {int(self.permissions):#x}")
        return [
            _U16.pack(self.version),
            _U8.pack(Permission(self.permissions)),
            _str16(self.server_id),
            _LIMITS.pack(
                lim.max_payload,
                lim.max_chunk_size,
                lim.max_batch,
                lim.max_streams,
                lim.max_object_size,
            ),
        ]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one Welcome."""
        r = _Reader(payload, "Welcome")
        version = r.u16()
        bits = r.u8()
        if bits & ~_ALL_PERMISSIONS:
            raise r.fail(f"unknown permission bits 0x{bits:02x}")
        server_id = r.text16()
        fields = _LIMITS.unpack(r.take(_LIMITS.size))
        r.end()
        try:
            limits = Limits(*fields)
        except ValueError as exc:
            raise r.fail(f"unusable limits: {exc}") from None
        return cls(version, Permission(bits), server_id, limits)


# --- refs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListRefs(_Message):
    """0x10: ask for the refs whose names start with ``prefix`` ("" for all) and HEAD."""

    TYPE: ClassVar[FrameType] = FrameType.LIST_REFS
    prefix: str

    def encode_parts(self) -> list[Buffer]:
        return [_str16(self.prefix)]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one ListRefs."""
        r = _Reader(payload, "ListRefs")
        msg = cls(r.text16())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Refs(_Message):
    """0x11, the reply to ListRefs.

    Attributes:
        head: the ref HEAD names (``refs/heads/main``), or "" when the server has none.
        refs: (name, id) pairs with unique names, in the server's order.
    """

    TYPE: ClassVar[FrameType] = FrameType.REFS
    head: str
    refs: tuple[tuple[str, ObjectId], ...]

    def as_dict(self) -> dict[str, ObjectId]:
        """Return the refs as a name -> id mapping."""
        return dict(self.refs)

    def encode_parts(self) -> list[Buffer]:
        out: list[Buffer] = [_str16(self.head), _u32(len(self.refs), "ref count")]
        for name, oid in self.refs:
            out.append(_str16(name))
            out.append(_check_id(oid))
        return out

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one Refs."""
        r = _Reader(payload, "Refs")
        head = r.text16()
        count = r.u32()
        if count * (2 + ID_LEN) > r.remaining:  # each entry is at least 34 bytes
            raise r.fail(f"{count} refs cannot fit in {r.remaining} bytes")
        refs = tuple((r.text16(), r.oid()) for _ in range(count))
        r.end()
        if len({name for name, _ in refs}) != count:
            raise r.fail("duplicate ref names")
        return cls(head, refs)


@dataclass(frozen=True, slots=True)
class RefChange:
    """One compare-and-swap in an UpdateRefs request (not a message by itself).

    Attributes:
        name: the ref, e.g. ``refs/heads/main``.
        expected_old: the value the client last saw, or None when the ref must not exist.
        new: the new value, or None to delete the ref.
        force: allow a non-fast-forward move (the compare-and-swap on ``expected_old`` still
            applies; there is no blind overwrite).
    """

    name: str
    expected_old: ObjectId | None
    new: ObjectId | None
    force: bool = False


@dataclass(frozen=True, slots=True)
class UpdateRefs(_Message):
    """0x1A: apply every change or none (all-or-nothing); names are unique."""

    TYPE: ClassVar[FrameType] = FrameType.UPDATE_REFS
    changes: tuple[RefChange, ...]

    def encode_parts(self) -> list[Buffer]:
        out: list[Buffer] = [_count(len(self.changes))]
        for c in self.changes:
            if c.expected_old is None and c.new is None:
                raise ValueError(f"ref change for {c.name!r} has neither old nor new value")
            if ZERO_ID in (c.expected_old, c.new):
                raise ValueError("the all-zero id means 'no ref'; pass None instead")
            out.append(_str16(c.name))
            out.append(ZERO_ID if c.expected_old is None else _check_id(c.expected_old))
            out.append(ZERO_ID if c.new is None else _check_id(c.new))
            out.append(_U8.pack(1 if c.force else 0))
        return out

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one UpdateRefs."""
        r = _Reader(payload, "UpdateRefs")
        count = r.count()
        if count * (2 + 2 * ID_LEN + 1) > r.remaining:
            raise r.fail(f"{count} ref changes cannot fit in {r.remaining} bytes")
        changes = []
        for _ in range(count):
            name = r.text16()
            if not name:
                raise r.fail("empty ref name")
            old, new, force = r.oid(), r.oid(), r.u8()
            if force > 1:
                raise r.fail(f"force flag must be 0 or 1, got {force}")
            if old == ZERO_ID and new == ZERO_ID:
                raise r.fail(f"ref change for {name!r} has neither old nor new value")
            changes.append(
                RefChange(
                    name,
                    None if old == ZERO_ID else old,
                    None if new == ZERO_ID else new,
                    bool(force),
                )
            )
        r.end()
        if len({c.name for c in changes}) != count:
            raise r.fail("duplicate ref names")
        return cls(tuple(changes))


@dataclass(frozen=True, slots=True)
class RefsUpdated(_Message):
    """0x1B, the reply to UpdateRefs: all ``count`` changes were applied."""

    TYPE: ClassVar[FrameType] = FrameType.REFS_UPDATED
    count: int

    def encode_parts(self) -> list[Buffer]:
        return [_u32(self.count, "count")]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one RefsUpdated."""
        r = _Reader(payload, "RefsUpdated")
        msg = cls(r.u32())
        r.end()
        return msg


# --- negotiation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Have(_Message):
    """0x12: which of these chunk or object ids does the server have *for this caller*?"""

    TYPE: ClassVar[FrameType] = FrameType.HAVE
    kind: BlobKind
    ids: tuple[ObjectId, ...]

    def encode_parts(self) -> list[Buffer]:
        return [_U8.pack(BlobKind(self.kind)), _count(len(self.ids)), _ids(self.ids)]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one Have."""
        r = _Reader(payload, "Have")
        kind = r.enum(BlobKind, r.u8())
        count = r.count()
        if count * ID_LEN != r.remaining:
            raise r.fail(f"{count} ids but {r.remaining} bytes")
        return cls(kind, r.ids(count))


_BYTE_FLAGS = [tuple(bool(byte >> bit & 1) for bit in range(8)) for byte in range(256)]


@dataclass(frozen=True, slots=True)
class HaveResult(_Message):
    """0x13, the reply to Have: one bit per requested id, in request order.

    Attributes:
        kind: echoes the request.
        present: ``present[i]`` is True when the server has ``ids[i]`` for this caller. On the
            wire: a u32 count and ceil(count/8) bytes, bit i of the bitmap = byte i//8, bit
            i%8 (LSB first); padding bits are 0.
    """

    TYPE: ClassVar[FrameType] = FrameType.HAVE_RESULT
    kind: BlobKind
    present: tuple[bool, ...]

    @classmethod
    def for_ids(
        cls, kind: BlobKind, ids: Iterable[ObjectId], have: Callable[[ObjectId], bool]
    ) -> Self:
        """Build the answer for ``ids`` from a membership test (``found.__contains__``)."""
        return cls(kind, tuple(have(i) for i in ids))

    def missing(self, ids: Iterable[ObjectId]) -> list[ObjectId]:
        """Return the requested ``ids`` the server does not have (what the client must send)."""
        return [i for i, here in zip(ids, self.present, strict=True) if not here]

    def encode_parts(self) -> list[Buffer]:
        count = len(self.present)
        bitmap = bytearray((count + 7) // 8)
        for i, here in enumerate(self.present):
            if here:
                bitmap[i >> 3] |= 1 << (i & 7)
        return [_U8.pack(BlobKind(self.kind)), _count(count), bytes(bitmap)]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one HaveResult."""
        r = _Reader(payload, "HaveResult")
        kind = r.enum(BlobKind, r.u8())
        count = r.count()
        if (count + 7) // 8 != r.remaining:
            raise r.fail(f"bitmap for {count} ids must be {(count + 7) // 8} bytes")
        bitmap = r.rest()
        if count % 8 and bitmap[-1] >> (count % 8):
            raise r.fail("bitmap padding bits are not zero")
        flags = [f for byte in bitmap for f in _BYTE_FLAGS[byte]]
        return cls(kind, tuple(flags[:count]))


# --- upload ---------------------------------------------------------------------------------


def _chunk_parts(oid: ObjectId, encoding: Encoding, plain_size: int, data: Buffer) -> list[Buffer]:
    """The payload of PutChunk and PutSpeculative (one layout): header, then the data."""
    _check_sizes(encoding, plain_size, memoryview(data).nbytes, ValueError)
    return [_PUT_CHUNK_HEAD.pack(_check_id(oid), Encoding(encoding), plain_size), data]


def _decode_chunk(payload: Buffer, name: str) -> tuple[ObjectId, Encoding, int, Buffer]:
    r = _Reader(payload, name)
    oid, enc, plain_size = _PUT_CHUNK_HEAD.unpack(r.take(_PUT_CHUNK_HEAD.size))
    encoding = r.enum(Encoding, enc)
    data = r.rest()
    _check_sizes(encoding, plain_size, len(data), r.fail)
    return ObjectId(oid), encoding, plain_size, data


@dataclass(frozen=True, slots=True)
class PutChunk(_Message):
    """0x14: one chunk; a put request is one or more PutChunk frames, the last FINAL.

    Attributes:
        id: BLAKE3 of the plain bytes (the server re-hashes).
        encoding: RAW (``data`` is the plain bytes) or ZSTD (one zstd frame).
        plain_size: the plain length (at most ``Limits.max_chunk_size``).
        data: the rest of the payload. A chunk never spans frames.
    """

    TYPE: ClassVar[FrameType] = FrameType.PUT_CHUNK
    id: ObjectId
    encoding: Encoding
    plain_size: int
    data: Buffer

    def encode_parts(self) -> list[Buffer]:
        return _chunk_parts(self.id, self.encoding, self.plain_size, self.data)

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload (``data`` is a view of it). Raises ProtocolViolation if malformed."""
        return cls(*_decode_chunk(payload, "PutChunk"))


@dataclass(frozen=True, slots=True)
class PutSpeculative(_Message):
    """0x1E: one chunk uploaded ahead of a push (the background agent); PutChunk's layout.

    A speculative request is one or more PutSpeculative frames, the last FINAL, answered by
    PutResult. The server keeps the chunk private to this token in this repository until a
    push promotes it, counts it against the token's speculative quota, and may expire it
    (docs/protocol.md, "Speculative uploads"). Deliberately not a PutChunk subclass: code that
    handles push uploads must never take a speculative one for one.

    Attributes:
        id: BLAKE3 of the plain bytes (the server re-hashes).
        encoding: RAW (``data`` is the plain bytes) or ZSTD (one zstd frame).
        plain_size: the plain length (at most ``Limits.max_chunk_size``).
        data: the rest of the payload. A chunk never spans frames.
    """

    TYPE: ClassVar[FrameType] = FrameType.PUT_SPECULATIVE
    id: ObjectId
    encoding: Encoding
    plain_size: int
    data: Buffer

    @classmethod
    def of(cls, chunk: PutChunk) -> Self:
        """The same chunk as a speculative upload (the bytes are shared, not copied)."""
        return cls(chunk.id, chunk.encoding, chunk.plain_size, chunk.data)

    def encode_parts(self) -> list[Buffer]:
        return _chunk_parts(self.id, self.encoding, self.plain_size, self.data)

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload (``data`` is a view of it). Raises ProtocolViolation if malformed."""
        return cls(*_decode_chunk(payload, "PutSpeculative"))


@dataclass(frozen=True, slots=True)
class PutObject(_Message):
    """0x16: one object's canonical encoding (dits.core.codec); the server re-hashes it.

    On the wire: id, u32 ``data_size``, then the data. Data beyond the first frame follows in
    DATA_PART frames (see the module docstring).
    """

    TYPE: ClassVar[FrameType] = FrameType.PUT_OBJECT
    id: ObjectId
    data: Buffer

    def encode_parts(self) -> list[Buffer]:
        size = memoryview(self.data).nbytes
        return [_PUT_OBJECT_HEAD.pack(_check_id(self.id), _check_u32(size)), self.data]

    @classmethod
    def decode_head(cls, payload: Buffer) -> tuple[Self, int]:
        """Decode a first frame: the message with the data so far, and the declared data size.

        Raises:
            ProtocolViolation: malformed, or more data than declared.
        """
        r = _Reader(payload, "PutObject")
        oid, size = _PUT_OBJECT_HEAD.unpack(r.take(_PUT_OBJECT_HEAD.size))
        data = r.rest()
        if len(data) > size:
            raise r.fail(f"{len(data)} data bytes but data_size {size}")
        return cls(ObjectId(oid), data), size

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a single-frame PutObject. Raises ProtocolViolation if malformed or partial."""
        msg, size = cls.decode_head(payload)
        if memoryview(msg.data).nbytes != size:
            raise ProtocolViolation("malformed PutObject: data continues in DATA_PART frames")
        return msg


@dataclass(frozen=True, slots=True)
class PutResult(_Message):
    """0x15, the reply to a put request: messages accepted, and how many were new to the server."""

    TYPE: ClassVar[FrameType] = FrameType.PUT_RESULT
    accepted: int
    stored_new: int

    def encode_parts(self) -> list[Buffer]:
        if self.stored_new > self.accepted:
            raise ValueError("stored_new cannot exceed accepted")
        return [_u32(self.accepted, "accepted"), _u32(self.stored_new, "stored_new")]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one PutResult."""
        r = _Reader(payload, "PutResult")
        accepted, stored_new = r.u32(), r.u32()
        r.end()
        if stored_new > accepted:
            raise r.fail("stored_new exceeds accepted")
        return cls(accepted, stored_new)


# --- download -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get(_Message):
    """0x18: send these chunks or objects (at least one); the reply is one Blob per id."""

    TYPE: ClassVar[FrameType] = FrameType.GET
    kind: BlobKind
    ids: tuple[ObjectId, ...]

    def encode_parts(self) -> list[Buffer]:
        if not self.ids:
            raise ValueError("Get needs at least one id")
        return [_U8.pack(BlobKind(self.kind)), _count(len(self.ids)), _ids(self.ids)]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one Get."""
        r = _Reader(payload, "Get")
        kind = r.enum(BlobKind, r.u8())
        count = r.count()
        if count == 0:
            raise r.fail("no ids")
        if count * ID_LEN != r.remaining:
            raise r.fail(f"{count} ids but {r.remaining} bytes")
        return cls(kind, r.ids(count))


@dataclass(frozen=True, slots=True)
class Blob(_Message):
    """0x19: one requested chunk or object, in request order; may span frames.

    On the wire: id, encoding u8, plain_size u32, data_size u32, data (DATA_PART frames carry
    what does not fit the first frame). RAW data is exactly ``plain_size`` bytes; ZSTD data is
    one zstd frame of at most ``zstd_bound(plain_size)`` bytes. A server may send its at-rest
    form (dits.core.compression) as is: the tag byte is the encoding.
    """

    TYPE: ClassVar[FrameType] = FrameType.BLOB
    id: ObjectId
    encoding: Encoding
    plain_size: int
    data: Buffer

    def encode_parts(self) -> list[Buffer]:
        size = memoryview(self.data).nbytes
        _check_sizes(self.encoding, self.plain_size, size, ValueError)
        head = _BLOB_HEAD.pack(_check_id(self.id), Encoding(self.encoding), self.plain_size, size)
        return [head, self.data]

    @classmethod
    def decode_head(cls, payload: Buffer) -> tuple[Self, int]:
        """Decode a first frame: the message with the data so far, and the declared data size.

        Raises:
            ProtocolViolation: malformed, inconsistent sizes, or more data than declared.
        """
        r = _Reader(payload, "Blob")
        oid, enc, plain_size, size = _BLOB_HEAD.unpack(r.take(_BLOB_HEAD.size))
        encoding = r.enum(Encoding, enc)
        _check_sizes(encoding, plain_size, size, r.fail)
        data = r.rest()
        if len(data) > size:
            raise r.fail(f"{len(data)} data bytes but data_size {size}")
        return cls(ObjectId(oid), encoding, plain_size, data), size

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a single-frame Blob. Raises ProtocolViolation if malformed or partial."""
        msg, size = cls.decode_head(payload)
        if memoryview(msg.data).nbytes != size:
            raise ProtocolViolation("malformed Blob: data continues in DATA_PART frames")
        return msg


def _check_u32(value: int) -> int:
    if value > _MAX_U32:
        raise ValueError(f"{value} bytes do not fit a u32 size")
    return value


def _check_sizes(
    encoding: Encoding, plain_size: int, data_size: int, fail: Callable[[str], Exception]
) -> None:
    if not 0 <= plain_size <= _MAX_U32:
        raise fail(f"plain_size {plain_size} does not fit a u32")
    if encoding == Encoding.RAW and data_size != plain_size:
        raise fail(f"raw data of {data_size} bytes but plain_size {plain_size}")
    if encoding == Encoding.ZSTD and data_size > zstd_bound(plain_size):
        raise fail(f"zstd data of {data_size} bytes is too long for plain_size {plain_size}")


# --- admin and health -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats(_Message):
    """0x1C (admin): ask for server statistics. Empty payload."""

    TYPE: ClassVar[FrameType] = FrameType.STATS

    def encode_parts(self) -> list[Buffer]:
        return []

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is empty."""
        _Reader(payload, "Stats").end()
        return cls()


@dataclass(frozen=True, slots=True)
class StatsResult(_Message):
    """0x1D, the reply to Stats: a JSON object (u32 length + UTF-8), free-form by design."""

    TYPE: ClassVar[FrameType] = FrameType.STATS_RESULT
    document: str

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build the message from JSON-serialisable values (keys sorted, compact)."""
        return cls(json.dumps(dict(values), sort_keys=True, separators=(",", ":")))

    def to_dict(self) -> dict[str, Any]:
        """Return the document as a dict."""
        value: dict[str, Any] = json.loads(self.document)
        return value

    def encode_parts(self) -> list[Buffer]:
        raw = self.document.encode("utf-8")
        return [_u32(len(raw), "document length"), raw]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it holds exactly one JSON object."""
        r = _Reader(payload, "StatsResult")
        size = r.u32()
        if size != r.remaining:
            raise r.fail(f"document length {size} but {r.remaining} bytes")
        try:
            document = str(r.rest(), "utf-8")
            value = json.loads(document)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
            raise r.fail("document is not UTF-8 JSON") from None
        if not isinstance(value, dict):
            raise r.fail("document is not a JSON object")
        return cls(document)


@dataclass(frozen=True, slots=True)
class Ping(_Message):
    """0x20: health probe with an 8-byte nonce; allowed before Hello."""

    TYPE: ClassVar[FrameType] = FrameType.PING
    nonce: bytes

    def encode_parts(self) -> list[Buffer]:
        if len(self.nonce) != _NONCE_LEN:
            raise ValueError("a ping nonce is 8 bytes")
        return [self.nonce]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly 8 bytes."""
        r = _Reader(payload, cls.__name__)
        nonce = r.take(_NONCE_LEN).tobytes()
        r.end()
        return cls(nonce)


@dataclass(frozen=True, slots=True)
class Pong(_Message):
    """0x21, the reply to Ping: the same nonce."""

    TYPE: ClassVar[FrameType] = FrameType.PONG
    nonce: bytes

    def encode_parts(self) -> list[Buffer]:
        if len(self.nonce) != _NONCE_LEN:
            raise ValueError("a pong nonce is 8 bytes")
        return [self.nonce]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly 8 bytes."""
        r = _Reader(payload, cls.__name__)
        nonce = r.take(_NONCE_LEN).tobytes()
        r.end()
        return cls(nonce)


@dataclass(frozen=True, slots=True)
class Error(_Message):
    """0x7F: the request failed; always the final frame of a response.

    Attributes:
        code: an ``ErrorCode`` value (kept as int so a newer server's code still decodes).
        message: human-readable text, no server paths or secrets.
        ids: ids the error is about (at most 1000), e.g. missing chunks.
        ref: the ref name the error is about, or "".
    """

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: int
    message: str
    ids: tuple[ObjectId, ...] = ()
    ref: str = ""

    def encode_parts(self) -> list[Buffer]:
        if len(self.ids) > MAX_ERROR_IDS:
            raise ValueError(f"an Error carries at most {MAX_ERROR_IDS} ids")
        if not 0 <= self.code <= _MAX_U16:
            raise ValueError(f"error code {self.code} does not fit a u16")
        return [
            _U16.pack(self.code),
            _str16(self.message),
            _U16.pack(len(self.ids)),
            _ids(self.ids),
            _str16(self.ref),
        ]

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a payload. Raises ProtocolViolation unless it is exactly one Error."""
        r = _Reader(payload, "Error")
        code = r.u16()
        message = r.text16()
        count = r.u16()
        if count > MAX_ERROR_IDS:
            raise r.fail(f"{count} ids exceed the cap of {MAX_ERROR_IDS}")
        msg = cls(code, message, r.ids(count), r.text16())
        r.end()
        return msg


Message = (
    Hello
    | Welcome
    | ListRefs
    | Refs
    | Have
    | HaveResult
    | PutChunk
    | PutResult
    | PutObject
    | PutSpeculative
    | Get
    | Blob
    | UpdateRefs
    | RefsUpdated
    | Stats
    | StatsResult
    | Ping
    | Pong
    | Error
)
"""Any message of protocol version 1."""

_DECODERS: dict[FrameType, Callable[[Buffer], Message]] = {
    cls.TYPE: cls.decode
    for cls in (
        Hello,
        Welcome,
        ListRefs,
        Refs,
        Have,
        HaveResult,
        PutChunk,
        PutResult,
        PutObject,
        PutSpeculative,
        Get,
        Blob,
        UpdateRefs,
        RefsUpdated,
        Stats,
        StatsResult,
        Ping,
        Pong,
        Error,
    )
}


def decode_message(frame: Frame) -> Message:
    """Decode a frame holding one whole message.

    Multi-frame PutObject and Blob messages need ``dits.protocol.stream``, which also checks
    the order of frames within a request or response.

    Raises:
        ProtocolViolation: a DATA_PART frame, or a malformed payload.
    """
    decoder = _DECODERS.get(frame.type)
    if decoder is None:
        raise ProtocolViolation(f"unexpected {frame.type.name} frame")
    return decoder(frame.payload)


def encode_message(msg: Message, *, final: bool, max_payload: int) -> list[Buffer]:
    """Return the frames of one message as buffers, splitting PutObject and Blob data.

    Args:
        msg: the message.
        final: whether this message ends its request or response (the FINAL flag goes on its
            last frame).
        max_payload: the peer's ``Limits.max_payload``.

    Returns:
        Header and payload buffers to write in order; big data is referenced, not copied.

    Raises:
        ValueError: a field cannot be represented, a message that cannot span frames does
            not fit ``max_payload``, or ``max_payload`` is below ``MIN_PAYLOAD``.
    """
    if max_payload < MIN_PAYLOAD:
        raise ValueError(f"max_payload {max_payload} is below the minimum of {MIN_PAYLOAD}")
    parts = msg.encode_parts()
    size = sum(memoryview(p).nbytes for p in parts)
    if size <= max_payload:
        # parts = [head, data]: keep data apart
        if isinstance(msg, PutChunk | PutObject | Blob | PutSpeculative):
            out: list[Buffer] = [frame_header(msg.TYPE, size, final) + parts[0]]
            if memoryview(parts[1]).nbytes:
                out.append(parts[1])
            return out
        return [frame_header(msg.TYPE, size, final) + b"".join(parts)]
    if not isinstance(msg, PutObject | Blob):
        raise ValueError(f"{type(msg).__name__} of {size} bytes exceeds max_payload {max_payload}")
    head = bytes(parts[0])
    data = memoryview(msg.data)
    if data.format != "B" or data.ndim != 1:
        data = data.cast("B")
    room = max_payload - len(head)
    out = [frame_header(msg.TYPE, max_payload, False) + head, data[:room]]
    pos = room
    while pos < len(data):
        piece = data[pos : pos + max_payload]
        pos += len(piece)
        out.extend(encode_frame(FrameType.DATA_PART, piece, final and pos == len(data)))
    return out


# --- received chunk data --------------------------------------------------------------------

_free_decompressors: dict[int, list[zstandard.ZstdDecompressor]] = {}


def _window_cap(max_size: int) -> int:
    """The zstd window a decoder allows: the output cap rounded up to a power of two (>= 1 MiB).

    A window larger than the whole output is useless to an honest encoder, so a frame asking
    for one is refused before its window is allocated.
    """
    return 1 << max(20, (max_size - 1).bit_length())


def decode_chunk_data(
    msg: PutChunk | Blob | PutSpeculative, max_chunk_size: int
) -> bytes | memoryview:
    """Return the plain bytes of a received PutChunk or Blob, never allocating beyond the cap.

    Not verified yet: call ``verify_chunk`` (objects too: an object id is also BLAKE3 of its
    bytes). For objects pass ``Limits.max_object_size`` as the cap.

    Args:
        msg: the received message.
        max_chunk_size: the largest plain size accepted.

    Returns:
        RAW data as received (a view, not copied) or the decompressed bytes.

    Raises:
        TooLargeError: ``plain_size`` or the zstd frame's declared size exceeds the cap.
        ProtocolViolation: RAW data of the wrong length; a zstd frame that is invalid,
            truncated, followed by other bytes, declares or decodes to a size other than
            ``plain_size``, or needs a window larger than the cap.
    """
    if msg.plain_size > max_chunk_size:
        raise TooLargeError(
            f"plain_size {msg.plain_size} exceeds the limit of {max_chunk_size}", ids=[msg.id]
        )
    data = memoryview(msg.data)
    if msg.encoding == Encoding.RAW:
        if data.nbytes != msg.plain_size:
            raise ProtocolViolation(
                f"raw data of {data.nbytes} bytes but plain_size {msg.plain_size}", ids=[msg.id]
            )
        return msg.data
    if msg.encoding != Encoding.ZSTD:
        raise ProtocolViolation(f"unknown encoding {msg.encoding}", ids=[msg.id])
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise ProtocolViolation("chunk data is not a zstd frame", ids=[msg.id]) from None
    if declared >= 0:
        # zstandard allocates the declared size and ignores max_output_size: check it first.
        if declared > max_chunk_size:
            raise TooLargeError(
                f"zstd frame declares {declared} bytes, above the limit of {max_chunk_size}",
                ids=[msg.id],
            )
        if declared != msg.plain_size:
            raise ProtocolViolation(
                f"zstd frame declares {declared} bytes but plain_size is {msg.plain_size}",
                ids=[msg.id],
            )
    window = _window_cap(max_chunk_size)
    pool = _free_decompressors.setdefault(window, [])
    try:
        decompressor = pool.pop()
    except IndexError:
        decompressor = zstandard.ZstdDecompressor(max_window_size=window)
    try:
        # Without a declared size, output stops at max_output_size (0 would mean "no limit").
        plain = decompressor.decompress(
            data, max_output_size=max(msg.plain_size, 1), allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise ProtocolViolation(
            f"zstd data does not decode to {msg.plain_size} bytes: {exc}", ids=[msg.id]
        ) from None
    finally:
        pool.append(decompressor)
    if len(plain) != msg.plain_size:
        raise ProtocolViolation(
            f"zstd data decoded to {len(plain)} bytes but plain_size is {msg.plain_size}",
            ids=[msg.id],
        )
    return plain


def verify_chunk(oid: ObjectId, plain: Buffer) -> None:
    """Check that ``plain`` hashes (BLAKE3) to ``oid``; for chunks and object encodings alike.

    Raises:
        HashMismatchError: it does not; ``ids`` names ``oid``.
    """
    if hash_bytes(plain) != oid:
        raise HashMismatchError(f"data sent as {oid.hex()} hashes to something else", ids=[oid])

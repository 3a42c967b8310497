"""The one canonical, versioned encoding of every object; object id = BLAKE3 of the encoding.

Header (6 bytes): ``b"DITS"`` magic, kind (u8, ObjectKind), format version (u8, currently 1).
Bodies use fixed-width little-endian integers and length-prefixed UTF-8 strings; the exact byte
layout of each kind is in docs/object-model.md. Decoding is strict: trailing bytes, unknown
versions, unsorted tree entries or unsafe names are errors, so one object has exactly one
encoding and one id.
"""

from __future__ import annotations

import struct

import blake3

from dits.core.ids import ID_LEN, ObjectId
from dits.core.objects import (
    ChunkRef,
    Commit,
    Identity,
    Manifest,
    Object,
    ObjectKind,
    Symlink,
    Tree,
    TreeEntry,
    TreeEntryKind,
)

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "DecodeError",
    "decode_object",
    "encode_object",
    "object_id",
    "peek_kind",
]

MAGIC = b"DITS"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
# Bounds an attacker-supplied object cannot exceed (decoding must not allocate unboundedly).
MAX_CHUNKS_PER_MANIFEST = 1 << 26
MAX_TREE_ENTRIES = 1 << 22
MAX_PARENTS = 255

_HEADER = struct.Struct("<4sBB")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_I16 = struct.Struct("<h")
_CHUNK = struct.Struct("<32sI")
_TREE_ENTRY_FIXED = struct.Struct("<BIQ32sH")


class DecodeError(ValueError):
    """Bytes are not a valid canonical encoding of any object."""


def _put_str(out: list[bytes], text: str, width: struct.Struct) -> None:
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) >= 1 << (8 * width.size):
        raise ValueError("string too long for its length field")
    out.append(width.pack(len(raw)))
    out.append(raw)


def _put_identity(out: list[bytes], ident: Identity) -> None:
    _put_str(out, ident.name, _U16)
    _put_str(out, ident.email, _U16)
    out.append(_I64.pack(ident.timestamp))
    out.append(_I16.pack(ident.tz_offset_min))


def encode_object(obj: Object) -> bytes:
    """Return the canonical encoding (header + body) of ``obj``."""
    out: list[bytes] = []
    if isinstance(obj, Manifest):
        out.append(_HEADER.pack(MAGIC, ObjectKind.MANIFEST, FORMAT_VERSION))
        _put_str(out, obj.profile, _U8)
        out.append(_U64.pack(obj.size))
        out.append(obj.file_hash)
        out.append(_U32.pack(len(obj.chunks)))
        pack = _CHUNK.pack
        out.extend(pack(c.id, c.size) for c in obj.chunks)
    elif isinstance(obj, Tree):
        out.append(_HEADER.pack(MAGIC, ObjectKind.TREE, FORMAT_VERSION))
        out.append(_U32.pack(len(obj.entries)))
        for e in obj.entries:
            name = e.name.encode("utf-8", "surrogateescape")
            out.append(_TREE_ENTRY_FIXED.pack(e.kind, e.mode, e.size, e.id, len(name)))
            out.append(name)
    elif isinstance(obj, Commit):
        out.append(_HEADER.pack(MAGIC, ObjectKind.COMMIT, FORMAT_VERSION))
        out.append(obj.tree)
        out.append(_U8.pack(len(obj.parents)))
        out.extend(obj.parents)
        _put_identity(out, obj.author)
        _put_identity(out, obj.committer)
        message = obj.message.encode("utf-8", "surrogateescape")
        out.append(_U32.pack(len(message)))
        out.append(message)
    elif isinstance(obj, Symlink):
        out.append(_HEADER.pack(MAGIC, ObjectKind.SYMLINK, FORMAT_VERSION))
        _put_str(out, obj.target, _U16)
    else:  # pragma: no cover - exhaustive over Object
        raise TypeError(f"cannot encode {type(obj).__name__}")
    return b"".join(out)


def object_id(encoded: bytes | memoryview) -> ObjectId:
    """Return the id of an encoded object: BLAKE3-256 of the full typed encoding."""
    return ObjectId(blake3.blake3(encoded).digest())


class _Reader:
    """Bounds-checked cursor over an encoding; every short read is a DecodeError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise DecodeError("object encoding is truncated")
        view = self.data[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))

    def u(self, fmt: struct.Struct) -> int:
        value: int = fmt.unpack(self.take(fmt.size))[0]
        return value

    def oid(self) -> ObjectId:
        return ObjectId(bytes(self.take(ID_LEN)))

    def text(self, width: struct.Struct) -> str:
        raw = bytes(self.take(self.u(width)))
        try:
            return raw.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError as exc:  # pragma: no cover - surrogateescape accepts all bytes
            raise DecodeError(str(exc)) from None

    def identity(self) -> Identity:
        name = self.text(_U16)
        email = self.text(_U16)
        ts = self.u(_I64)
        tz = self.u(_I16)
        return Identity(name, email, ts, tz)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError("object encoding has trailing bytes")


def peek_kind(data: bytes | memoryview) -> ObjectKind:
    """Return the kind named by an encoding's header without decoding the body.

    Raises:
        DecodeError: bad magic, unknown kind or unsupported version.
    """
    if len(data) < _HEADER.size:
        raise DecodeError("object encoding is shorter than its header")
    magic, kind, version = _HEADER.unpack(data[: _HEADER.size])
    if magic != MAGIC:
        raise DecodeError("not a dits object (bad magic)")
    if version not in SUPPORTED_VERSIONS:
        raise DecodeError(f"unsupported object format version {version}")
    try:
        return ObjectKind(kind)
    except ValueError:
        raise DecodeError(f"unknown object kind {kind}") from None


def decode_object(data: bytes | memoryview) -> Object:
    """Decode a canonical encoding.

    Raises:
        DecodeError: anything but a canonical encoding of a valid object.
    """
    kind = peek_kind(data)
    r = _Reader(data)
    r.take(_HEADER.size)
    obj: Object
    try:
        if kind is ObjectKind.MANIFEST:
            profile = r.text(_U8)
            size = r.u(_U64)
            file_hash = r.oid()
            count = r.u(_U32)
            if count > MAX_CHUNKS_PER_MANIFEST:
                raise DecodeError("manifest lists too many chunks")
            raw = r.take(count * _CHUNK.size)
            chunks = tuple(ChunkRef(ObjectId(cid), sz) for cid, sz in _CHUNK.iter_unpack(raw))
            obj = Manifest(profile, size, file_hash, chunks)
        elif kind is ObjectKind.TREE:
            count = r.u(_U32)
            if count > MAX_TREE_ENTRIES:
                raise DecodeError("tree lists too many entries")
            entries = []
            for _ in range(count):
                ekind, mode, esize, eid, name_len = r.unpack(_TREE_ENTRY_FIXED)
                name = bytes(r.take(name_len)).decode("utf-8", "surrogateescape")
                entries.append(
                    TreeEntry(name, TreeEntryKind(ekind), mode, esize, ObjectId(bytes(eid)))
                )
            obj = Tree(tuple(entries))
        elif kind is ObjectKind.COMMIT:
            tree = r.oid()
            parents = tuple(r.oid() for _ in range(r.u(_U8)))
            author = r.identity()
            committer = r.identity()
            message = bytes(r.take(r.u(_U32))).decode("utf-8", "surrogateescape")
            obj = Commit(tree, parents, author, committer, message)
        else:
            obj = Symlink(r.text(_U16))
    except DecodeError:
        raise
    except (ValueError, struct.error) as exc:
        raise DecodeError(f"invalid {kind.name.lower()} object: {exc}") from None
    r.end()
    return obj

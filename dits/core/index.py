"""IndexEntry: what the staging index records per path, and its fixed binary encoding.

Stat data (size, mtime_ns, ctime_ns, inode, dev) lets status recognise an unchanged file
without reading it, as git's index does. Encoding (little-endian, 69 bytes):
``version u8 | kind u8 | mode u32 | size u64 | mtime_ns i64 | ctime_ns i64 | inode u64 |
dev u64 | oid 32B`` with version = 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from dits.core.ids import ObjectId

__all__ = ["EntryKind", "IndexEntry", "decode_index_entry", "encode_index_entry"]

_INDEX_FORMAT = struct.Struct("<BBIQqqQQ32s")
_INDEX_VERSION = 1


class _StatLike(Protocol):
    """What `from_stat` needs of an ``os.stat_result`` (a value: the core still does no I/O)."""

    @property
    def st_mode(self) -> int: ...

    @property
    def st_size(self) -> int: ...

    @property
    def st_mtime_ns(self) -> int: ...

    @property
    def st_ctime_ns(self) -> int: ...

    @property
    def st_ino(self) -> int: ...

    @property
    def st_dev(self) -> int: ...


class EntryKind(IntEnum):
    """What a path is: a regular file (oid = manifest) or a symlink (oid = symlink object)."""

    FILE = 1
    SYMLINK = 2


@dataclass(frozen=True)
class IndexEntry:
    """One staged path."""

    kind: EntryKind
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    dev: int
    oid: ObjectId

    @classmethod
    def from_stat(cls, kind: EntryKind, st: _StatLike, oid: ObjectId) -> IndexEntry:
        """Record ``oid`` with the stat data of the file it was read from or written to."""
        return cls(
            kind, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, oid
        )

    def same_stat(self, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bool:
        """True when the recorded stat data matches, so the content is taken as unchanged."""
        return (
            self.size == size
            and self.mtime_ns == mtime_ns
            and self.ctime_ns == ctime_ns
            and self.inode == inode
        )


def encode_index_entry(entry: IndexEntry) -> bytes:
    """Return the fixed 69-byte encoding of ``entry``."""
    return _INDEX_FORMAT.pack(
        _INDEX_VERSION,
        int(entry.kind),
        entry.mode,
        entry.size,
        entry.mtime_ns,
        entry.ctime_ns,
        entry.inode,
        entry.dev,
        entry.oid,
    )


def decode_index_entry(data: bytes | memoryview) -> IndexEntry:
    """Decode an index entry.

    Raises:
        ValueError: wrong length or unknown version.
    """
    if len(data) != _INDEX_FORMAT.size:
        raise ValueError(f"index entry has {len(data)} bytes, expected {_INDEX_FORMAT.size}")
    version, kind, mode, size, mtime, ctime, ino, dev, oid = _INDEX_FORMAT.unpack(data)
    if version != _INDEX_VERSION:
        raise ValueError(f"unsupported index entry version {version}")
    return IndexEntry(EntryKind(kind), mode, size, mtime, ctime, ino, dev, ObjectId(oid))

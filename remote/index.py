"""The server's index: repositories, refs, where every permanent blob lives, who may see what.

One LMDB environment at ``<root>/index`` with LMDB's safe defaults (``sync=True``,
``metasync=True``, ``writemap=False``): the server acknowledges a push only after its ref update
is on disk. The index is the source of truth (RELIABILITY.md 2.3): permanent storage may hold
bytes the index does not mention (a crash after a promotion's upload); it never lacks bytes the
index points at, because bytes are written and made durable before their entries commit.

Databases (keys big-endian where they must sort, layouts in docs/operations.md):

* ``repos``: repository name (UTF-8) -> repo id u32.
* ``refs``: repo id u32 + ref name -> 32-byte commit id.
* ``blobs``: kind u8 + id -> location: pack hash (32), offset u64, stored size u32, plain size
  u32. Global: the bytes of a chunk are stored once whichever repositories use it.
* ``visible``: repo id u32 + kind u8 + id -> empty. What a repository may read and what its "have"
  answers count. Invariant: when an object is visible, everything it reaches is visible.
* ``temp``: kind u8 + id + repo id u32 + uploader (16 bytes) -> created (f64, server clock).
  Uploaded and verified, not yet promoted; visible only to that uploader in that repository.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from dits.core.ids import ID_LEN, ObjectId
from dits.errors import DitsError, UsageError
from dits.protocol import BlobKind, StaleRefError

__all__ = ["UPLOADER_LEN", "BlobLocation", "RefCas", "ServerIndex"]

UPLOADER_LEN = 16
_REPO = struct.Struct(">I")
_LOCATION = struct.Struct("<32sQII")
_TEMP_VALUE = struct.Struct("<d")
_MAP_SIZE = 1 << 40  # address space, not disk: the file grows as it fills
_DBS = (b"repos", b"refs", b"blobs", b"visible", b"temp", b"meta")


@dataclass(frozen=True)
class BlobLocation:
    """Where a permanent blob's at-rest form lives: ``offset`` into pack ``pack`` (its hash)."""

    pack: bytes
    offset: int
    stored_size: int
    plain_size: int

    def encode(self) -> bytes:
        return _LOCATION.pack(self.pack, self.offset, self.stored_size, self.plain_size)

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> BlobLocation:
        pack, offset, stored, plain = _LOCATION.unpack(raw)
        return cls(bytes(pack), int(offset), int(stored), int(plain))


@dataclass(frozen=True)
class RefCas:
    """One ref move inside a promotion: ``old`` must still be current (None: must not exist)."""

    name: str
    old: ObjectId | None
    new: ObjectId | None


def uploader_key(uploader: str) -> bytes:
    """Fixed-width form of an uploader id (a token id) for index keys."""
    raw = uploader.encode("utf-8")[:UPLOADER_LEN]
    return raw.ljust(UPLOADER_LEN, b"\0")


class ServerIndex:
    """The index; safe for threads of one process and for several processes."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(path), map_size=_MAP_SIZE, max_dbs=len(_DBS) + 2, max_readers=254
            )
        except lmdb.Error as exc:
            raise DitsError(f"cannot open the server index at {path}: {exc}") from exc
        with self._env.begin(write=True) as txn:
            self._db = {name.decode(): self._env.open_db(name, txn=txn) for name in _DBS}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._env.close()

    # -- repositories -----------------------------------------------------------------------

    def create_repo(self, name: str) -> int:
        with self._env.begin(write=True) as txn:
            key = name.encode()
            if txn.get(key, db=self._db["repos"]) is not None:
                raise UsageError(f"repository {name!r} already exists")
            raw = txn.get(b"next_repo_id", db=self._db["meta"])
            repo_id = _REPO.unpack(raw)[0] if raw else 1
            txn.put(b"next_repo_id", _REPO.pack(repo_id + 1), db=self._db["meta"])
            txn.put(key, _REPO.pack(repo_id), db=self._db["repos"])
            return int(repo_id)

    def repo_id(self, name: str) -> int | None:
        with self._env.begin() as txn:
            raw = txn.get(name.encode(), db=self._db["repos"])
        return None if raw is None else int(_REPO.unpack(raw)[0])

    def repos(self) -> dict[str, int]:
        with self._env.begin() as txn:
            return {
                bytes(k).decode(): int(_REPO.unpack(v)[0])
                for k, v in txn.cursor(db=self._db["repos"])
            }

    # -- refs --------------------------------------------------------------------------------

    def refs(self, repo: int, prefix: str = "") -> dict[str, ObjectId]:
        start = _REPO.pack(repo) + prefix.encode()
        out: dict[str, ObjectId] = {}
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._db["refs"])
            if cursor.set_range(start):
                for key, value in cursor:
                    if not bytes(key).startswith(start):
                        break
                    out[bytes(key[4:]).decode()] = ObjectId(bytes(value))
        return out

    # -- visibility and temp -------------------------------------------------------------------

    def have(
        self, repo: int, uploader: bytes, kind: BlobKind, ids: Iterable[ObjectId]
    ) -> list[bool]:
        """Per id: visible in ``repo``, or uploaded by ``uploader`` to ``repo`` and not yet
        promoted. Never anything only another repository or uploader holds."""
        vis, tmp = self._db["visible"], self._db["temp"]
        prefix = _REPO.pack(repo) + bytes([kind])
        suffix = _REPO.pack(repo) + uploader
        with self._env.begin() as txn:
            return [
                txn.get(prefix + oid, db=vis) is not None
                or txn.get(bytes([kind]) + oid + suffix, db=tmp) is not None
                for oid in ids
            ]

    def is_visible(self, txn: Any, repo: int, kind: BlobKind, oid: ObjectId) -> bool:
        return txn.get(_REPO.pack(repo) + bytes([kind]) + oid, db=self._db["visible"]) is not None

    def is_temp(self, txn: Any, repo: int, uploader: bytes, kind: BlobKind, oid: bytes) -> bool:
        key = bytes([kind]) + oid + _REPO.pack(repo) + uploader
        return txn.get(key, db=self._db["temp"]) is not None

    def add_temp(self, items: Iterable[tuple[int, bytes, BlobKind, ObjectId]]) -> None:
        """Record (repo, uploader, kind, id) temp entries in one durable transaction."""
        now = _TEMP_VALUE.pack(time.time())
        with self._env.begin(write=True) as txn:
            for repo, uploader, kind, oid in items:
                key = bytes([kind]) + oid + _REPO.pack(repo) + uploader
                txn.put(key, now, db=self._db["temp"])

    def temp_holders(self, txn: Any, kind: BlobKind, oid: bytes) -> int:
        """How many (repo, uploader) temp entries name this blob."""
        prefix = bytes([kind]) + oid
        cursor = txn.cursor(db=self._db["temp"])
        count = 0
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not bytes(key).startswith(prefix):
                    break
                count += 1
        return count

    def expire_temp(self, cutoff: float) -> tuple[int, list[tuple[BlobKind, ObjectId]]]:
        """Drop temp entries created before ``cutoff`` (server clock), in one transaction.

        Returns how many entries went, and the blobs no temp entry names any more (their temp
        bytes may go).
        """
        db = self._db["temp"]
        dropped = 0
        orphaned: list[tuple[BlobKind, ObjectId]] = []
        with self._lock, self._env.begin(write=True) as txn:
            old = [
                bytes(key)
                for key, value in txn.cursor(db=db)
                if _TEMP_VALUE.unpack(value)[0] < cutoff
            ]
            for key in old:
                txn.delete(key, db=db)
                dropped += 1
            for key in dict.fromkeys(k[: 1 + ID_LEN] for k in old):
                kind, oid = BlobKind(key[0]), ObjectId(key[1:])
                if self.temp_holders(txn, kind, oid) == 0:
                    orphaned.append((kind, oid))
        return dropped, orphaned

    def iter_temp(self) -> Iterator[tuple[BlobKind, ObjectId, int, bytes, float]]:
        with self._env.begin() as txn:
            rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._db["temp"])]
        for key, value in rows:
            kind = BlobKind(key[0])
            oid = ObjectId(key[1 : 1 + ID_LEN])
            repo = int(_REPO.unpack(key[1 + ID_LEN : 5 + ID_LEN])[0])
            yield kind, oid, repo, key[5 + ID_LEN :], _TEMP_VALUE.unpack(value)[0]

    # -- permanent blobs -----------------------------------------------------------------------

    def location(self, txn: Any, kind: BlobKind, oid: bytes) -> BlobLocation | None:
        raw = txn.get(bytes([kind]) + oid, db=self._db["blobs"])
        return None if raw is None else BlobLocation.decode(raw)

    def locate_visible(
        self, repo: int, kind: BlobKind, ids: Iterable[ObjectId]
    ) -> list[BlobLocation | None]:
        """Locations of blobs ``repo`` may read; None where it may not (or they are absent)."""
        with self._env.begin() as txn:
            return [
                self.location(txn, kind, oid) if self.is_visible(txn, repo, kind, oid) else None
                for oid in ids
            ]

    def read(self) -> Any:
        """A read transaction (context manager) for multi-step checks."""
        return self._env.begin()

    def promote(
        self,
        repo: int,
        uploader: bytes,
        placed: dict[tuple[BlobKind, ObjectId], BlobLocation],
        visible: Iterable[tuple[BlobKind, ObjectId]],
        refs: list[RefCas],
    ) -> list[tuple[BlobKind, ObjectId]]:
        """The commit point of a push, in one durable transaction.

        Records where newly stored blobs live, makes the push's closure visible in ``repo``,
        moves every ref by compare-and-swap (all or none), and drops the uploader's temp
        entries for what became visible. Returns the blobs no temp entry names any more (their
        temp bytes may go).

        Raises:
            StaleRefError: a ref no longer has its expected old value; nothing changed.
        """
        repo_key = _REPO.pack(repo)
        suffix = repo_key + uploader
        db = self._db
        with self._lock, self._env.begin(write=True) as txn:
            for cas in refs:
                key = repo_key + cas.name.encode()
                current = txn.get(key, db=db["refs"])
                current_id = None if current is None else bytes(current)
                if current_id != cas.old:
                    raise StaleRefError(
                        f"{cas.name} moved on the server while pushing; pull and push again",
                        ref=cas.name,
                    )
            for (kind, oid), where in placed.items():
                txn.put(bytes([kind]) + oid, where.encode(), db=db["blobs"], overwrite=False)
            released = []
            for kind, oid in visible:
                txn.put(repo_key + bytes([kind]) + oid, b"", db=db["visible"])
                if txn.delete(bytes([kind]) + oid + suffix, db=db["temp"]):
                    released.append((kind, oid))
            for cas in refs:
                key = repo_key + cas.name.encode()
                if cas.new is None:
                    txn.delete(key, db=db["refs"])
                else:
                    txn.put(key, cas.new, db=db["refs"])
            return [(k, o) for k, o in released if self.temp_holders(txn, k, o) == 0]

    def stats(self) -> dict[str, int]:
        with self._env.begin() as txn:
            return {
                name: int(txn.stat(self._db[name])["entries"])
                for name in ("repos", "refs", "blobs", "visible", "temp")
            }

    def iter_blobs(self) -> Iterator[tuple[BlobKind, ObjectId, BlobLocation]]:
        with self._env.begin() as txn:
            rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._db["blobs"])]
        for key, value in rows:
            yield BlobKind(key[0]), ObjectId(key[1:]), BlobLocation.decode(value)

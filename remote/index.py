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
* ``temp``: kind u8 + id + repo id u32 + uploader (16 bytes) -> ``TempEntry`` (42 bytes: flags,
  state, plain size, created, last touched, condemned at, pinned until; times on the server's
  clock). Uploaded and verified, not yet promoted; counted by "have" only for that uploader in
  that repository, never readable. Push uploads and speculative uploads (flag bit 0) share it.
* ``meta``: ``next_repo_id``; ``clock`` (the last persisted server time, ``remote.clock``);
  ``speculative`` (u64 counters: bytes held, uploaded, promoted, expired); ``held:`` + uploader
  (u64: speculative bytes this token holds, for its quota). The counters change in the same
  transactions as the entries they count, so they are never recomputed by scans.

Temp entries and time (RELIABILITY.md 2.3): a "have" answer that counts a temp entry pins it
(``pinned_until``) and freshens it in the same write transaction (``have_and_pin``); a ref
update re-checks and pins everything it is about to promote (``pin_temp``). Speculative
entries expire in two phases: ``mark_expired`` condemns LIVE, unpinned entries untouched for a
TTL; ``sweep_candidate`` removes one CONDEMNED entry, in its own transaction, only if it is
still condemned, unpinned and past the grace period. No method here reads a clock: ``now``
is always an argument (the server's clock, ``remote.clock``).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

import lmdb

from dits.core.ids import ID_LEN, ObjectId
from dits.errors import DitsError, UsageError
from dits.protocol import BlobKind, QuotaExceededError, StaleRefError

__all__ = [
    "UPLOADER_LEN",
    "BlobLocation",
    "RefCas",
    "ServerIndex",
    "SpeculativeFigures",
    "TempEntry",
    "TempState",
    "format_bytes",
    "uploader_key",
    "uploader_name",
]

UPLOADER_LEN = 16
_REPO = struct.Struct(">I")
_LOCATION = struct.Struct("<32sQII")
_TEMP_ENTRY = struct.Struct("<BBQdddd")  # see TempEntry
_LEGACY_TEMP = struct.Struct("<d")  # before the speculative tier: created only
_U64 = struct.Struct("<Q")
_FIGURES = struct.Struct("<QQQQ")  # speculative bytes held, uploaded, promoted, expired
_FLOAT = struct.Struct("<d")
_CLOCK_KEY = b"clock"
_FIGURES_KEY = b"speculative"
_HELD_PREFIX = b"held:"
_SPECULATIVE = 0x01
_WRITE_BATCH = 4096  # entries per write transaction in scans (short txns keep "have" fast)
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


class TempState(IntEnum):
    """Where a temp entry is in its life: LIVE, or CONDEMNED by a GC mark (RELIABILITY 2.3)."""

    LIVE = 0
    CONDEMNED = 1


@dataclass(frozen=True)
class TempEntry:
    """The value of a ``temp`` entry: u8 flags (bit 0 speculative), u8 state, u64 plain size,
    then f64 created, last_touched, condemned_at, pinned_until (server clock, seconds)."""

    speculative: bool
    size: int
    created: float
    last_touched: float
    state: TempState = TempState.LIVE
    condemned_at: float = 0.0
    pinned_until: float = 0.0

    def encode(self) -> bytes:
        return _TEMP_ENTRY.pack(
            _SPECULATIVE if self.speculative else 0,
            self.state,
            self.size,
            self.created,
            self.last_touched,
            self.condemned_at,
            self.pinned_until,
        )

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> TempEntry:
        if len(raw) == _LEGACY_TEMP.size:  # written before the speculative tier existed
            (created,) = _LEGACY_TEMP.unpack(raw)
            return cls(False, 0, created, created)
        flags, state, size, created, touched, condemned, pinned = _TEMP_ENTRY.unpack(raw)
        return cls(
            bool(flags & _SPECULATIVE), size, created, touched, TempState(state), condemned, pinned
        )

    def pinned(self, now: float) -> bool:
        return self.pinned_until > now

    @staticmethod
    def freshen_encoded(raw: bytes | memoryview, now: float, pin_until: float) -> bytes:
        """``decode(raw).freshened(now, pin_until).encode()`` without the objects: pushes
        pin thousands of entries at a time, and the dataclass round trip was most of it."""
        if len(raw) != _TEMP_ENTRY.size:
            return TempEntry.decode(raw).freshened(now, pin_until).encode()
        flags, _, size, created, _, _, pinned = _TEMP_ENTRY.unpack(raw)
        return _TEMP_ENTRY.pack(
            flags, TempState.LIVE, size, created, now, 0.0, max(pinned, pin_until)
        )

    def freshened(self, now: float, pin_until: float) -> TempEntry:
        """Touched and pinned now: LIVE again even if a GC mark had condemned it."""
        return replace(
            self,
            last_touched=now,
            state=TempState.LIVE,
            condemned_at=0.0,
            pinned_until=max(self.pinned_until, pin_until),
        )


@dataclass(frozen=True)
class SpeculativeFigures:
    """Persistent speculative-tier counters (bytes are plain, uncompressed sizes)."""

    held: int = 0
    uploaded: int = 0
    promoted: int = 0
    expired: int = 0

    def plus(
        self, *, held: int = 0, uploaded: int = 0, promoted: int = 0, expired: int = 0
    ) -> SpeculativeFigures:
        return SpeculativeFigures(
            max(self.held + held, 0),
            max(self.uploaded + uploaded, 0),
            self.promoted + promoted,
            self.expired + expired,
        )


@dataclass(frozen=True)
class RefCas:
    """One ref move inside a promotion: ``old`` must still be current (None: must not exist)."""

    name: str
    old: ObjectId | None
    new: ObjectId | None


def _expired(entry: TempEntry, now: float, ttl: float) -> bool:
    return (
        entry.speculative
        and entry.state is TempState.LIVE
        and not entry.pinned(now)
        and now - entry.last_touched > ttl
    )


def _sweepable(entry: TempEntry, now: float, grace: float) -> bool:
    return (
        entry.state is TempState.CONDEMNED
        and not entry.pinned(now)
        and now - entry.condemned_at > grace
    )


def uploader_key(uploader: str) -> bytes:
    """Fixed-width form of an uploader id (a token id) for index keys."""
    raw = uploader.encode("utf-8")[:UPLOADER_LEN]
    return raw.ljust(UPLOADER_LEN, b"\0")


def uploader_name(key: bytes) -> str:
    """The token id inside an uploader key."""
    return key.rstrip(b"\0").decode("utf-8", "replace")


def format_bytes(n: int) -> str:
    """``n`` bytes for people: "100 GiB", "1.5 MiB", "300 bytes"."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} bytes"


def _temp_key(kind: BlobKind, oid: bytes, repo: int, uploader: bytes) -> bytes:
    return bytes([kind]) + oid + _REPO.pack(repo) + uploader


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

    def present(
        self, repo: int, uploader: bytes, kind: BlobKind, ids: Iterable[ObjectId]
    ) -> list[bool]:
        """Per id: visible in ``repo``, or uploaded by ``uploader`` to ``repo`` and not yet
        promoted. Never anything only another repository or uploader holds. Read-only: for
        the server's own checks; answers to clients go through ``have_and_pin``."""
        vis, tmp = self._db["visible"], self._db["temp"]
        prefix = _REPO.pack(repo) + bytes([kind])
        suffix = _REPO.pack(repo) + uploader
        with self._env.begin() as txn:
            return [
                txn.get(prefix + oid, db=vis) is not None
                or txn.get(bytes([kind]) + oid + suffix, db=tmp) is not None
                for oid in ids
            ]

    def have_and_pin(
        self,
        repo: int,
        uploader: bytes,
        kind: BlobKind,
        ids: Iterable[ObjectId],
        now: float,
        pin_until: float,
    ) -> list[bool]:
        """``present``, and every temp entry the answer counts is pinned until ``pin_until``,
        touched and made LIVE again, in the same write transaction as the answer.

        A read transaction answers first; the write transaction opens only when some id is
        not visible but has a temp entry, so a push whose chunks are all on the server pays
        no write. Inside it the answer for those ids is taken again: an entry swept between
        the two transactions is reported absent (the client sends it), never present.
        """
        ids = list(ids)
        vis, tmp = self._db["visible"], self._db["temp"]
        prefix = _REPO.pack(repo) + bytes([kind])
        suffix = _REPO.pack(repo) + uploader
        answer = [False] * len(ids)
        temp_only: list[int] = []
        with self._env.begin() as txn:
            for i, oid in enumerate(ids):
                if txn.get(prefix + oid, db=vis) is not None:
                    answer[i] = True
                elif txn.get(bytes([kind]) + oid + suffix, db=tmp) is not None:
                    temp_only.append(i)
        if not temp_only:
            return answer
        with self._env.begin(write=True) as txn:
            for i in temp_only:
                oid = ids[i]
                if txn.get(prefix + oid, db=vis) is not None:
                    answer[i] = True
                    continue
                key = bytes([kind]) + oid + suffix
                raw = txn.get(key, db=tmp)
                if raw is None:
                    continue
                txn.put(key, TempEntry.freshen_encoded(raw, now, pin_until), db=tmp)
                answer[i] = True
        return answer

    def pin_temp(
        self,
        repo: int,
        uploader: bytes,
        items: Iterable[tuple[BlobKind, ObjectId]],
        now: float,
        pin_until: float,
    ) -> list[ObjectId]:
        """Re-check and pin what a ref update is about to promote, in one write transaction.

        Returns the ids that are neither visible in ``repo`` nor held by a temp entry of
        ``uploader`` any more (expired since the client's "have"); the rest are pinned until
        ``pin_until`` (the promotion lease), so no GC sweep removes them meanwhile.
        """
        vis, tmp = self._db["visible"], self._db["temp"]
        repo_key = _REPO.pack(repo)
        gone: list[ObjectId] = []
        with self._env.begin(write=True) as txn:
            for kind, oid in items:
                if txn.get(repo_key + bytes([kind]) + oid, db=vis) is not None:
                    continue
                key = _temp_key(kind, oid, repo, uploader)
                raw = txn.get(key, db=tmp)
                if raw is None:
                    gone.append(oid)
                    continue
                txn.put(key, TempEntry.freshen_encoded(raw, now, pin_until), db=tmp)
        return gone

    def is_visible(self, txn: Any, repo: int, kind: BlobKind, oid: ObjectId) -> bool:
        return txn.get(_REPO.pack(repo) + bytes([kind]) + oid, db=self._db["visible"]) is not None

    def is_temp(self, txn: Any, repo: int, uploader: bytes, kind: BlobKind, oid: bytes) -> bool:
        key = bytes([kind]) + oid + _REPO.pack(repo) + uploader
        return txn.get(key, db=self._db["temp"]) is not None

    def add_temp(
        self, items: Iterable[tuple[int, bytes, BlobKind, ObjectId, int]], now: float
    ) -> None:
        """Record push uploads (repo, uploader, kind, id, plain size) in one durable
        transaction. An entry that exists already (a retried batch, or a speculative upload
        of the same chunk) is only touched: it keeps its kind and its quota charge."""
        db = self._db["temp"]
        with self._env.begin(write=True) as txn:
            for repo, uploader, kind, oid, size in items:
                key = _temp_key(kind, oid, repo, uploader)
                raw = txn.get(key, db=db)
                if raw is None:
                    entry = TempEntry(False, size, now, now)
                else:
                    old = TempEntry.decode(raw)
                    entry = replace(old, last_touched=max(old.last_touched, now))
                txn.put(key, entry.encode(), db=db)

    def add_speculative(
        self,
        repo: int,
        uploader: bytes,
        written: Iterable[tuple[ObjectId, int]],
        also: Iterable[ObjectId],
        now: float,
        quota: int,
    ) -> list[ObjectId]:
        """Record speculative chunk uploads of ``uploader`` to ``repo``, all or none.

        Args:
            written: (id, plain size) of chunks whose bytes are in the temporary store now;
                each becomes a new speculative entry unless visible or already held.
            also: chunks of the same request that were already held for this uploader: their
                entries are touched (never created: their bytes were not written).
            now: the server's time.
            quota: the most speculative bytes this uploader may hold.

        Returns:
            The ids that got a new entry (and were charged to the quota).

        Raises:
            QuotaExceededError: the new entries would take the uploader over ``quota``;
                nothing was recorded.
        """
        tmp, vis, meta = self._db["temp"], self._db["visible"], self._db["meta"]
        vis_prefix = _REPO.pack(repo) + bytes([BlobKind.CHUNK])
        created: list[ObjectId] = []
        charge = 0
        with self._env.begin(write=True) as txn:
            for oid in also:
                key = _temp_key(BlobKind.CHUNK, oid, repo, uploader)
                raw = txn.get(key, db=tmp)
                if raw is not None:
                    old = TempEntry.decode(raw)
                    fresh = replace(old, last_touched=now, state=TempState.LIVE, condemned_at=0.0)
                    txn.put(key, fresh.encode(), db=tmp)
            for oid, size in written:
                if txn.get(vis_prefix + oid, db=vis) is not None:
                    continue
                key = _temp_key(BlobKind.CHUNK, oid, repo, uploader)
                if txn.get(key, db=tmp) is not None:
                    continue  # a concurrent request of this uploader recorded it first
                txn.put(key, TempEntry(True, size, now, now).encode(), db=tmp)
                created.append(oid)
                charge += size
            if charge:
                held = self._held(txn, uploader)
                if held + charge > quota:  # raising aborts the transaction: nothing recorded
                    raise QuotaExceededError(
                        f"speculative quota of {format_bytes(quota)} for token "
                        f"{uploader_name(uploader)} is full; push or wait for expiry"
                    )
                txn.put(_HELD_PREFIX + uploader, _U64.pack(held + charge), db=meta)
                self._add_figures(txn, held=charge, uploaded=charge)
        return created

    def forget_speculative(
        self, repo: int, uploader: bytes, ids: Iterable[ObjectId], now: float
    ) -> list[tuple[BlobKind, ObjectId]]:
        """Undo the new entries of a refused speculative request (quota and counters too).

        Entries a "have" pinned meanwhile stay: that answer must hold. Returns the blobs no
        temp entry names any more (their temp bytes may go).
        """
        tmp = self._db["temp"]
        removed = 0
        dropped: list[tuple[BlobKind, ObjectId]] = []
        with self._env.begin(write=True) as txn:
            for oid in ids:
                key = _temp_key(BlobKind.CHUNK, oid, repo, uploader)
                raw = txn.get(key, db=tmp)
                if raw is None:
                    continue
                entry = TempEntry.decode(raw)
                if not entry.speculative or entry.pinned(now):
                    continue
                txn.delete(key, db=tmp)
                removed += entry.size
                dropped.append((BlobKind.CHUNK, oid))
            if removed:
                self._charge(txn, uploader, -removed)
                self._add_figures(txn, held=-removed, uploaded=-removed)
            return [item for item in dropped if not self._held_anywhere(txn, item[1])]

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

    def _held_anywhere(self, txn: Any, oid: bytes) -> bool:
        # The temporary store keys bytes by id alone, chunks and objects alike.
        return any(self.temp_holders(txn, kind, oid) for kind in BlobKind)

    def unheld(self, ids: Iterable[ObjectId]) -> list[ObjectId]:
        """The ids no temp entry (any kind, repository or uploader) names: bytes that may go."""
        with self._env.begin() as txn:
            return [oid for oid in ids if not self._held_anywhere(txn, oid)]

    def expire_temp(
        self, now: float, max_age: float
    ) -> tuple[int, list[tuple[BlobKind, ObjectId]]]:
        """Drop push-upload entries untouched for ``max_age`` seconds, in one transaction.

        Abandoned pushes only: speculative entries go through ``mark_expired`` and
        ``sweep_candidate``. A "have" answer touches the entries it counts, so a push in
        progress is never expired by an age longer than the pin lease. Returns how many
        entries went, and the blobs no temp entry names any more (their temp bytes may go).
        """
        db = self._db["temp"]
        dropped = 0
        orphaned: list[tuple[BlobKind, ObjectId]] = []
        with self._lock, self._env.begin(write=True) as txn:
            old = []
            for key, value in txn.cursor(db=db):
                entry = TempEntry.decode(value)
                if not entry.speculative and now - entry.last_touched >= max_age:
                    old.append(bytes(key))
            for key in old:
                txn.delete(key, db=db)
                dropped += 1
            for key in dict.fromkeys(k[: 1 + ID_LEN] for k in old):
                kind, oid = BlobKind(key[0]), ObjectId(key[1:])
                if not self._held_anywhere(txn, oid):
                    orphaned.append((kind, oid))
        return dropped, orphaned

    # -- speculative expiry (two phases) ---------------------------------------------------------

    def mark_expired(self, now: float, ttl: float) -> int:
        """GC mark: speculative entries LIVE, unpinned and untouched for more than ``ttl``
        become CONDEMNED at ``now``. Candidates are found in a read transaction and each is
        re-checked inside the short write transaction that condemns it. Returns how many."""
        tmp = self._db["temp"]
        with self._env.begin() as txn:
            keys = [
                bytes(key)
                for key, value in txn.cursor(db=tmp)
                if _expired(TempEntry.decode(value), now, ttl)
            ]
        marked = 0
        for start in range(0, len(keys), _WRITE_BATCH):
            with self._env.begin(write=True) as txn:
                for key in keys[start : start + _WRITE_BATCH]:
                    raw = txn.get(key, db=tmp)
                    if raw is None:
                        continue
                    entry = TempEntry.decode(raw)
                    if _expired(entry, now, ttl):
                        condemned = replace(entry, state=TempState.CONDEMNED, condemned_at=now)
                        txn.put(key, condemned.encode(), db=tmp)
                        marked += 1
        return marked

    def sweep_candidates(self, now: float, grace: float) -> list[bytes]:
        """Keys of entries condemned more than ``grace`` ago (a snapshot: not to be trusted;
        ``sweep_candidate`` checks each again)."""
        with self._env.begin() as txn:
            return [
                bytes(key)
                for key, value in txn.cursor(db=self._db["temp"])
                if _sweepable(TempEntry.decode(value), now, grace)
            ]

    def sweep_candidate(
        self, key: bytes, now: float, grace: float
    ) -> tuple[BlobKind, ObjectId, int, bool] | None:
        """GC sweep of one entry, in its own write transaction: removed only if it is still
        CONDEMNED, unpinned and condemned more than ``grace`` ago.

        Returns None when it stayed, else (kind, id, plain size, whether any temp entry still
        names the blob). The caller deletes the blob's temp bytes after this commit, and only
        when nothing names them.
        """
        tmp = self._db["temp"]
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=tmp)
            if raw is None:
                return None
            entry = TempEntry.decode(raw)
            if not _sweepable(entry, now, grace):
                return None
            txn.delete(key, db=tmp)
            uploader = key[5 + ID_LEN :]
            self._charge(txn, uploader, -entry.size)
            self._add_figures(txn, held=-entry.size, expired=entry.size)
            oid = ObjectId(key[1 : 1 + ID_LEN])
            return BlobKind(key[0]), oid, entry.size, self._held_anywhere(txn, oid)

    # -- counters and clock --------------------------------------------------------------------

    def _held(self, txn: Any, uploader: bytes) -> int:
        raw = txn.get(_HELD_PREFIX + uploader, db=self._db["meta"])
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def _charge(self, txn: Any, uploader: bytes, delta: int) -> None:
        meta = self._db["meta"]
        held = max(self._held(txn, uploader) + delta, 0)
        if held:
            txn.put(_HELD_PREFIX + uploader, _U64.pack(held), db=meta)
        else:
            txn.delete(_HELD_PREFIX + uploader, db=meta)

    def _figures(self, txn: Any) -> SpeculativeFigures:
        raw = txn.get(_FIGURES_KEY, db=self._db["meta"])
        return SpeculativeFigures() if raw is None else SpeculativeFigures(*_FIGURES.unpack(raw))

    def _add_figures(self, txn: Any, **delta: int) -> None:
        f = self._figures(txn).plus(**delta)
        txn.put(
            _FIGURES_KEY,
            _FIGURES.pack(f.held, f.uploaded, f.promoted, f.expired),
            db=self._db["meta"],
        )

    def held_bytes(self, uploader: bytes) -> int:
        """Speculative bytes ``uploader`` holds now (what its quota counts)."""
        with self._env.begin() as txn:
            return self._held(txn, uploader)

    def speculative_figures(self) -> tuple[SpeculativeFigures, dict[str, int]]:
        """The persistent counters, and the bytes each token holds (token id -> bytes)."""
        with self._env.begin() as txn:
            return self._figures(txn), dict(self.speculative_figures_in(txn))

    def temp_audit(self) -> tuple[list[ObjectId], dict[str, tuple[int, int]]]:
        """For fsck, from one snapshot: the ids temp entries name, and per token whose quota
        counter disagrees with its speculative entries, (counter, sum of entry sizes)."""
        with self._env.begin() as txn:
            named: list[ObjectId] = []
            sizes: dict[bytes, int] = {}
            for key, value in txn.cursor(db=self._db["temp"]):
                named.append(ObjectId(bytes(key[1 : 1 + ID_LEN])))
                entry = TempEntry.decode(value)
                if entry.speculative:
                    holder = bytes(key[5 + ID_LEN :])
                    sizes[holder] = sizes.get(holder, 0) + entry.size
            wrong: dict[str, tuple[int, int]] = {}
            counted = {uploader_key(name): held for name, held in self.speculative_figures_in(txn)}
            for holder in sizes.keys() | counted.keys():
                if sizes.get(holder, 0) != counted.get(holder, 0):
                    wrong[uploader_name(holder)] = (counted.get(holder, 0), sizes.get(holder, 0))
        return list(dict.fromkeys(named)), wrong

    def speculative_figures_in(self, txn: Any) -> list[tuple[str, int]]:
        """(token id, speculative bytes held) per token, inside ``txn``."""
        out: list[tuple[str, int]] = []
        cursor = txn.cursor(db=self._db["meta"])
        if cursor.set_range(_HELD_PREFIX):
            for key, value in cursor:
                key = bytes(key)
                if not key.startswith(_HELD_PREFIX):
                    break
                out.append((uploader_name(key[len(_HELD_PREFIX) :]), int(_U64.unpack(value)[0])))
        return out

    def load_clock(self) -> float:
        """The last server time persisted (0.0 if none): a floor for the next ServerClock."""
        with self._env.begin() as txn:
            raw = txn.get(_CLOCK_KEY, db=self._db["meta"])
        return 0.0 if raw is None else float(_FLOAT.unpack(raw)[0])

    def save_clock(self, now: float) -> None:
        """Persist ``now`` unless a later time is already stored (other processes)."""
        with self._env.begin(write=True) as txn:
            raw = txn.get(_CLOCK_KEY, db=self._db["meta"])
            if raw is None or _FLOAT.unpack(raw)[0] < now:
                txn.put(_CLOCK_KEY, _FLOAT.pack(now), db=self._db["meta"])

    def iter_temp(self) -> Iterator[tuple[BlobKind, ObjectId, int, bytes, TempEntry]]:
        with self._env.begin() as txn:
            rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._db["temp"])]
        for key, value in rows:
            kind = BlobKind(key[0])
            oid = ObjectId(key[1 : 1 + ID_LEN])
            repo = int(_REPO.unpack(key[1 + ID_LEN : 5 + ID_LEN])[0])
            yield kind, oid, repo, key[5 + ID_LEN :], TempEntry.decode(value)

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
        moves every ref by compare-and-swap (all or none), and drops the temp entries of what
        became visible: this uploader's and any other uploader's in ``repo`` (visibility
        answers for them from now on). Speculative bytes dropped here count as promoted and
        leave their uploader's quota. Returns the blobs no temp entry names any more (their
        temp bytes may go).

        Raises:
            StaleRefError: a ref no longer has its expected old value; nothing changed.
        """
        repo_key = _REPO.pack(repo)
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
            promoted: dict[bytes, int] = {}
            cursor = txn.cursor(db=db["temp"])
            for kind, oid in visible:
                txn.put(repo_key + bytes([kind]) + oid, b"", db=db["visible"])
                prefix = bytes([kind]) + oid + repo_key
                dropped = []
                if cursor.set_range(prefix):
                    for key, value in cursor:
                        if not bytes(key).startswith(prefix):
                            break
                        dropped.append(bytes(key))
                        entry = TempEntry.decode(value)
                        if entry.speculative:
                            holder = bytes(key[len(prefix) :])
                            promoted[holder] = promoted.get(holder, 0) + entry.size
                for key in dropped:
                    txn.delete(key, db=db["temp"])
                if dropped:
                    released.append((kind, oid))
            for holder, size in promoted.items():
                self._charge(txn, holder, -size)
                self._add_figures(txn, held=-size, promoted=size)
            for cas in refs:
                key = repo_key + cas.name.encode()
                if cas.new is None:
                    txn.delete(key, db=db["refs"])
                else:
                    txn.put(key, cas.new, db=db["refs"])
            return [(k, o) for k, o in released if not self._held_anywhere(txn, o)]

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

"""What dits-remote does with each request, independent of the transport (synchronous, thread-safe).

The asyncio handler (``remote.handler``) decodes frames and calls these methods in a thread
pool; tests may call them directly. The push protocol follows RELIABILITY.md 2.3:

1. ``have``: answered from the index, scoped to what this caller may read in this repository
   plus what this uploader already uploaded here, pushed or speculatively (so an interrupted
   push resumes, and the agent's uploads count). A temp entry the answer counts is pinned for
   the pin lease in the same write transaction (``ServerIndex.have_and_pin``).
2. ``put_chunks`` / ``put_objects``: every byte is decompressed under a cap and re-hashed, even
   when the server already holds that id; then written to the temporary store, made durable,
   and only then recorded as this uploader's temp entry. Concurrent batches share one flush
   (``remote.group_commit``); a batch is answered only after the flush that covers it.
3. ``update_refs``: fast-forward check, connectivity check from each new tip (a walk that stops
   at what the repository can already see), one write transaction that re-checks and pins
   every temp blob of the walk for the promotion lease (gone ones: ``MISSING_OBJECTS``, the
   client sends them again), promotion of the walked temp blobs into permanent
   storage as pack objects (create-only, durable), then one durable index transaction that
   records the locations, makes the closure visible and moves every ref by compare-and-swap.
   A crash before that transaction leaves at most unreferenced pack objects (``fsck`` lists
   them); a crash after it loses nothing.

Speculative uploads (``put_speculative``) are in ``remote.speculative``, their expiry in
``remote.gc``. Every time decision uses ``self.clock`` (``remote.clock``), never a client's.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from dits.core.codec import DecodeError, decode_object, object_id
from dits.core.compression import decode_stored
from dits.core.ids import ObjectId, hash_bytes, short_id
from dits.core.objects import Commit, Manifest, Symlink, Tree
from dits.errors import ObjectNotFoundError
from dits.protocol import (
    Blob,
    BlobKind,
    Encoding,
    ForbiddenError,
    HashMismatchError,
    InvalidObjectError,
    Limits,
    MissingObjectsError,
    NonFastForwardError,
    NotFoundError,
    NotFoundOrForbiddenError,
    Permission,
    PutChunk,
    PutObject,
    PutSpeculative,
    RefChange,
    RemoteError,
    decode_chunk_data,
    verify_chunk,
)
from dits.store.lmdb import LmdbEnvironment
from dits.store.packs import PACK_TARGET_SIZE, PackBlobStore, PackLocation
from remote.bytes_lock import TempBytesLock
from remote.clock import Clock, ServerClock
from remote.group_commit import GroupCommit
from remote.index import BlobLocation, RefCas, ServerIndex, uploader_key
from remote.speculative import SpeculativePolicy, SpeculativeUpload
from remote.storage import PermanentStorage, StorageNotFoundError

__all__ = [
    "PACK_SIZE",
    "PushReport",
    "RemoteService",
    "Session",
    "pack_key",
    "speculative_figures",
]

log = logging.getLogger("dits.remote")

PACK_SIZE = 16 << 20  # promoted blobs are packed into objects of about this size (see docs)
_RECORD_HEAD = 36  # id + u32 stored length, as in client packs
_LINK_MIN_BYTES = 32 << 20  # below this, promotion copies out of the open temp pack instead
_READ_BYTES = 8 << 20  # adjacent records are read together up to this much
_REF_PREFIX = "refs/heads/"
_RELEASE_WAIT = 0.2  # a push waits this long for uploads to let go of the temp-bytes lock


@dataclass
class Session:
    """An authenticated connection's view: which repository, what it may do, who uploads."""

    repo: str
    repo_id: int
    permissions: Permission
    uploader: bytes

    def require(self, needed: Permission) -> None:
        if needed & self.permissions != needed:
            raise ForbiddenError(
                f"this token may not {(needed.name or 'do that').lower()} {self.repo}"
            )


@dataclass
class PushReport:
    """What one ref update promoted (for logs and stats)."""

    walked: int = 0
    promoted: int = 0
    packs: int = 0
    bytes_stored: int = 0
    released: list[tuple[BlobKind, ObjectId]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per step (walk, pin, store, commit, release), for the server log."""

    def timed(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - since
        return now


def pack_key(pack: bytes) -> str:
    hexed = pack.hex()
    return f"packs/{hexed[:2]}/{hexed}"


class RemoteService:
    """The server's state: index, temporary store, permanent storage, tokens."""

    def __init__(
        self,
        root: Path,
        storage: PermanentStorage,
        tokens: object,
        *,
        limits: Limits | None = None,
        server_id: str = "dits-remote",
        temp_pack_size: int = PACK_TARGET_SIZE,
        policy: SpeculativePolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.root = root
        self.limits = limits or Limits()
        self.server_id = server_id
        self.policy = policy or SpeculativePolicy()
        self.index = ServerIndex(root / "index")
        self.clock: Clock = clock or ServerClock(self.index.load_clock())
        self.temp_env = LmdbEnvironment(root / "temp")
        self.temp = PackBlobStore(
            self.temp_env,
            root / "temp" / "packs",
            max_value_size=self.limits.max_object_size,
            pack_target_size=temp_pack_size,
        )
        self.storage = storage
        self.tokens = tokens
        self.temp_bytes_lock = TempBytesLock(root / "temp" / "bytes.lock")
        self._temp_commit: GroupCommit[tuple[int, bytes, BlobKind, ObjectId, int]] = GroupCommit(
            self._commit_temp
        )
        # One promotion at a time in this process; GC sweeps take it too (remote.gc).
        self.promote_lock = threading.Lock()
        self._pack_buffers: list[bytearray] = []  # reused by every promotion (under the lock)
        self.counters: dict[str, int] = {
            "chunks_received": 0,
            "bytes_received": 0,
            "objects_received": 0,
            "speculative_chunks_received": 0,
            "pushes": 0,
            "blobs_served": 0,
            "bytes_served": 0,
        }

    def close(self) -> None:
        self.index.save_clock(self.clock.now())
        self.temp.close()
        self.temp_env.close()
        self.index.close()

    # -- hello -----------------------------------------------------------------------------------

    def open_session(self, token: bytes, repo: str) -> Session:
        """Authenticate ``token`` for ``repo``.

        Raises:
            UnauthenticatedError: a malformed, unknown, revoked or expired token.
            NotFoundOrForbiddenError: no such repository, or no access (indistinguishable).
        """
        permissions = self.tokens.authenticate(token, repo)  # type: ignore[attr-defined]
        repo_id = self.index.repo_id(repo)
        if repo_id is None or not permissions & Permission.READ:
            raise NotFoundOrForbiddenError(f"repository {repo!r} not found or not accessible")
        return Session(repo, repo_id, Permission(permissions), uploader_key(_token_id(token)))

    def check_session(self, session: Session, token: bytes) -> None:
        """Re-validate on every request, so a revoked token stops working at once."""
        permissions = self.tokens.authenticate(token, session.repo)  # type: ignore[attr-defined]
        if not permissions & Permission.READ:
            raise NotFoundOrForbiddenError(
                f"repository {session.repo!r} not found or not accessible"
            )
        session.permissions = Permission(permissions)

    # -- reads -----------------------------------------------------------------------------------

    def list_refs(self, session: Session, prefix: str) -> dict[str, ObjectId]:
        session.require(Permission.READ)
        return self.index.refs(session.repo_id, prefix)

    def have(self, session: Session, kind: BlobKind, ids: tuple[ObjectId, ...]) -> list[bool]:
        """Per id: may this caller take it as present? Temp entries counted are pinned for
        ``policy.pin_lease`` in the same transaction as the answer (RELIABILITY rule 1)."""
        session.require(Permission.READ)
        now = self.clock.now()
        return self.index.have_and_pin(
            session.repo_id, session.uploader, kind, ids, now, now + self.policy.pin_lease
        )

    def get(self, session: Session, kind: BlobKind, ids: tuple[ObjectId, ...]) -> Iterator[Blob]:
        """Blobs in request order, read lazily; records that touch in one pack are read with one
        request of at most about 8 MiB.

        Raises:
            NotFoundError: an id is absent or not readable in this repository (one answer).
        """
        session.require(Permission.READ)
        places = self.index.locate_visible(session.repo_id, kind, ids)
        i = 0
        while i < len(ids):
            where = places[i]
            if where is None:
                raise NotFoundError(
                    f"{kind.name.lower()} {short_id(ids[i])} not found", ids=[ids[i]]
                )
            j = i + 1
            end = where.offset + where.stored_size
            while j < len(ids) and end - where.offset < _READ_BYTES:
                nxt = places[j]
                if nxt is None or nxt.pack != where.pack or nxt.offset != end + _RECORD_HEAD:
                    break
                end = nxt.offset + nxt.stored_size
                j += 1
            try:
                data = self.storage.get(pack_key(where.pack), where.offset, end - where.offset)
            except StorageNotFoundError:
                raise NotFoundError(
                    f"{kind.name.lower()} {short_id(ids[i])} is missing from storage; "
                    "run 'dits-remote fsck'",
                    ids=[ids[i]],
                ) from None
            view = memoryview(data)
            pos = 0
            for k in range(i, j):
                loc = places[k]
                assert loc is not None
                stored = view[pos : pos + loc.stored_size]
                pos += loc.stored_size + _RECORD_HEAD
                self.counters["blobs_served"] += 1
                self.counters["bytes_served"] += loc.stored_size
                yield Blob(ids[k], Encoding(stored[0]), loc.plain_size, stored[1:])
            i = j

    # -- uploads ---------------------------------------------------------------------------------

    def put_chunks(self, session: Session, msgs: list[PutChunk]) -> tuple[int, int]:
        """Verify and store a batch of chunks in the temporary tier. Returns (accepted, new).

        Raises:
            HashMismatchError: a chunk's bytes do not hash to its id; nothing of the batch
                is recorded.
            TooLargeError: a size limit was exceeded.
        """
        session.require(Permission.WRITE)
        plain = []
        for msg in msgs:
            data = decode_chunk_data(msg, self.limits.max_chunk_size)
            verify_chunk(msg.id, data)  # every received byte, even for ids we already hold
            plain.append((msg.id, data))
        return self._store_temp(session, BlobKind.CHUNK, plain)

    def put_objects(self, session: Session, msgs: list[PutObject]) -> tuple[int, int]:
        """Verify (hash and canonical decode) and store objects in the temporary tier."""
        session.require(Permission.WRITE)
        items = []
        for msg in msgs:
            if object_id(msg.data) != msg.id:
                raise HashMismatchError(
                    f"object {short_id(msg.id)}: its bytes hash to something else", ids=[msg.id]
                )
            try:
                decode_object(msg.data)  # receive-side fsck: hostile names, bad sizes
            except (DecodeError, ValueError) as exc:
                raise InvalidObjectError(
                    f"object {short_id(msg.id)}: {exc}", ids=[msg.id]
                ) from None
            items.append((msg.id, msg.data))
        return self._store_temp(session, BlobKind.OBJECT, items)

    def speculative_upload(self, session: Session) -> SpeculativeUpload:
        """Start one PutSpeculative request (its batches go through ``add``)."""
        session.require(Permission.WRITE)
        return SpeculativeUpload(self, session)

    def put_speculative(self, session: Session, msgs: list[PutSpeculative]) -> tuple[int, int]:
        """A whole PutSpeculative request in one batch. Returns (accepted, new).

        Raises:
            QuotaExceededError: the token's speculative quota is full; nothing stored.
            HashMismatchError / TooLargeError: a bad chunk; nothing stored.
        """
        upload = self.speculative_upload(session)
        try:
            return upload.add(msgs)
        except RemoteError:
            upload.abort()
            raise

    def _store_temp(
        self, session: Session, kind: BlobKind, items: list[tuple[ObjectId, bytes | memoryview]]
    ) -> tuple[int, int]:
        if not items:
            return 0, 0
        ids = [i for i, _ in items]
        already = self.index.present(session.repo_id, session.uploader, kind, ids)
        fresh = [item for item, have in zip(items, already, strict=True) if not have]
        if fresh:
            with self.temp_bytes_lock.shared():  # until the entries commit (remote.bytes_lock)
                self.temp.put_many(fresh)
                self._temp_commit.submit(
                    [(session.repo_id, session.uploader, kind, i, len(d)) for i, d in fresh]
                )
        key = "chunks_received" if kind is BlobKind.CHUNK else "objects_received"
        self.counters[key] += len(items)
        self.counters["bytes_received"] += sum(len(d) for _, d in items)
        return len(items), len(fresh)

    def flush_temp(self) -> None:
        """Make every temp byte written so far durable, sharing the push uploads' flush."""
        self._temp_commit.submit([])

    def _commit_temp(self, entries: list[tuple[int, bytes, BlobKind, ObjectId, int]]) -> None:
        """One flush for every upload batch that arrived since the last: bytes first, then
        the entries that promise them (called by the group commit's leader thread)."""
        self.temp_env.durable()
        if entries:
            self.index.add_temp(entries, self.clock.now())

    def release_temp_bytes(self, ids: Iterable[ObjectId], *, wait: float) -> int:
        """Delete the temp bytes of ``ids`` that no temp entry names, checked again under the
        exclusive temp-bytes lock (``remote.bytes_lock``). Returns how many went; 0 when the
        lock stayed busy for ``wait`` seconds (``gc`` removes such orphans later)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        with self.temp_bytes_lock.exclusive(wait) as held:
            if not held:
                log.info("temp bytes of %d blobs left for gc (uploads busy)", len(wanted))
                return 0
            return self.temp.delete_many(self.index.unheld(wanted))

    # -- ref updates -----------------------------------------------------------------------------

    def update_refs(self, session: Session, changes: tuple[RefChange, ...]) -> PushReport:
        """Connectivity check, promotion and the atomic compare-and-swap of every ref.

        Raises:
            StaleRefError: a ref is not at the client's expected old value.
            NonFastForwardError: a move that loses commits, without ``force``.
            MissingObjectsError: the new tips reach blobs that are neither visible in this
                repository nor uploaded in this push (ids listed).
        """
        session.require(Permission.WRITE)
        current = self.index.refs(session.repo_id)
        for change in changes:
            _check_ref_name(change.name)
            if current.get(change.name) != change.expected_old:
                from dits.protocol import StaleRefError

                raise StaleRefError(
                    f"{change.name} is not where you last saw it; pull and push again",
                    ref=change.name,
                )
        with self.promote_lock:
            t = time.perf_counter()
            walk = _Walk(self, session)
            for change in changes:
                if change.new is not None:
                    walk.reach(change.new)
            walked = time.perf_counter() - t
            t = time.perf_counter()
            if not walk.missing and walk.temp_items:
                # Re-check and pin in one transaction: what the walk (or an earlier "have")
                # saw may have expired since; nothing pinned here is swept before promotion.
                now = self.clock.now()
                gone = self.index.pin_temp(
                    session.repo_id,
                    session.uploader,
                    walk.temp_items,
                    now,
                    now + self.policy.promotion_lease,
                )
                walk.missing.update(gone)
            pinned = time.perf_counter() - t
            if walk.missing:
                missing = sorted(walk.missing)
                raise MissingObjectsError(
                    f"the push is incomplete: {len(missing)} objects or chunks are missing "
                    "(expired or never uploaded); push again to send them",
                    ids=missing[:1000],
                )
            for change in changes:
                old = current.get(change.name)
                moves_back = old is not None and change.new is not None and not change.force
                if moves_back and not walk.is_ancestor(old, change.new):  # type: ignore[arg-type]
                    raise NonFastForwardError(
                        f"{change.name}: the server has commits you do not; pull first "
                        "(or push --force)",
                        ref=change.name,
                    )
            report = self._promote(session, walk, changes)
            report.phases = {"walk": walked, "pin": pinned, **report.phases}
        self.counters["pushes"] += 1
        return report

    def _promote(self, session: Session, walk: _Walk, changes: tuple[RefChange, ...]) -> PushReport:
        report = PushReport(walked=len(walk.temp_items))
        t = time.perf_counter()
        placed: dict[tuple[BlobKind, ObjectId], BlobLocation] = {}
        with self.index.read() as txn:
            todo = [item for item in walk.temp_items if self.index.location(txn, *item) is None]
        todo = self._link_final_temp_packs(todo, placed, report)
        if not self._pack_buffers:
            size = PACK_SIZE + self.limits.max_chunk_size + _RECORD_HEAD
            self._pack_buffers = [bytearray(size), bytearray(size)]
        writer = _PackWriter(self.storage, self._pack_buffers)
        try:
            for key in todo:
                # Hashed on receipt; the record header (id, length) is checked again here.
                writer.add(self.temp, key, placed)
        finally:
            writer.finish(placed)
        report.packs += writer.packs
        report.bytes_stored += writer.bytes
        report.promoted = len(placed)
        t = report.timed("store", t)
        cas = [RefCas(c.name, c.expected_old, c.new) for c in changes]
        report.released = self.index.promote(
            session.repo_id, session.uploader, placed, walk.temp_items, cas
        )
        t = report.timed("commit", t)
        if report.released:
            self.release_temp_bytes([oid for _, oid in report.released], wait=_RELEASE_WAIT)
        report.timed("release", t)
        return report

    def _link_final_temp_packs(
        self,
        todo: list[tuple[BlobKind, ObjectId]],
        placed: dict[tuple[BlobKind, ObjectId], BlobLocation],
        report: PushReport,
    ) -> list[tuple[BlobKind, ObjectId]]:
        """Promote whole temp packs by hard link where the backend allows it; return the rest.

        A final temp pack (one no longer appended to) never changes again, and its records
        were hashed on receipt and fsynced before they were recorded, so on the local backend
        it can become a permanent pack object as it is: one link instead of copying every byte
        again. When this push has at least ``_LINK_MIN_BYTES`` in the pack still being appended
        to, that pack is closed first so it can be linked too. Records in a linked pack that
        this push does not promote (other uploads, dead space) are stored but never indexed,
        so nobody can read them. A linked pack is named by a random id rather than by its
        content hash: hashing it would mean reading every byte back.
        """
        link = getattr(self.storage, "link_file", None)
        if link is None or not todo:
            return todo
        where_of = [(key, self.temp.locate(key[1])) for key in todo]
        open_pack = self.temp.open_pack()
        in_open = sum(w.stored_size for _, w in where_of if w.pack == open_pack)
        if in_open >= _LINK_MIN_BYTES:
            self.temp.close_open_pack()
            open_pack = self.temp.open_pack()
        by_pack: dict[int, list[tuple[tuple[BlobKind, ObjectId], PackLocation]]] = {}
        rest: list[tuple[BlobKind, ObjectId]] = []
        for key, where in where_of:
            if where.pack == open_pack:
                rest.append(key)
            else:
                by_pack.setdefault(where.pack, []).append((key, where))
        for entries in by_pack.values():
            path = entries[0][1].path
            pack = secrets.token_bytes(32)
            try:
                if link(pack_key(pack), path):
                    report.packs += 1
                    report.bytes_stored += path.stat().st_size
            except OSError:  # another file system (EXDEV) or the like: copy these records
                rest.extend(key for key, _ in entries)
                continue
            for key, where in entries:
                placed[key] = BlobLocation(
                    pack, where.data_offset, where.stored_size, where.plain_size
                )
        return rest

    def expire_temp(self, max_age: float) -> dict[str, int]:
        """Forget push uploads untouched for ``max_age`` seconds that no push promoted
        (abandoned pushes), free their temp bytes and repack the temp tier. Speculative
        uploads expire through ``remote.gc`` instead."""
        dropped, orphaned = self.index.expire_temp(self.clock.now(), max_age)
        removed = self.release_temp_bytes([oid for _, oid in orphaned], wait=5.0)
        repacked = self.temp.repack()
        return {
            "entries_expired": dropped,
            "blobs_removed": removed,
            "bytes_freed": repacked.bytes_freed,
        }

    def temp_maintenance(self) -> None:
        """Give back the space of promoted temp blobs (run after pushes and by gc)."""
        self.temp.repack()

    def speculative_stats(self) -> dict[str, object]:
        """The speculative tier's figures (``dits-remote stats``, the Stats message)."""
        return speculative_figures(self.index)


def speculative_figures(index: ServerIndex) -> dict[str, object]:
    """Bytes held, promoted, expired and uploaded, the hit rate (promoted / uploaded: how
    much of what the agents pre-uploaded a push later used), and the bytes per token."""
    figures, per_token = index.speculative_figures()
    return {
        "speculative_bytes_held": figures.held,
        "speculative_bytes_uploaded": figures.uploaded,
        "speculative_bytes_promoted": figures.promoted,
        "speculative_bytes_expired": figures.expired,
        "speculative_hit_rate": (
            round(figures.promoted / figures.uploaded, 4) if figures.uploaded else None
        ),
        "speculative_held_by_token": per_token,
    }


class _PackWriter:
    """Copies temp records into pack objects: two reused buffers, one filling while the other
    is hashed and written (fresh memory is slow to touch on small VMs, and the write overlaps
    the next pack's reads)."""

    def __init__(self, storage: PermanentStorage, buffers: list[bytearray]) -> None:
        self.storage = storage
        self.buffers = buffers
        self.current = 0
        self.fill = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dits-promote")
        self.pending: Future[int] | None = None
        self.placeholders: list[tuple[BlobKind, ObjectId]] = []
        self.packs = 0
        self.bytes = 0

    def add(
        self,
        temp: PackBlobStore,
        key: tuple[BlobKind, ObjectId],
        placed: dict[tuple[BlobKind, ObjectId], BlobLocation],
    ) -> None:
        where = temp.locate(key[1])
        need = _RECORD_HEAD + where.stored_size
        buf = self.buffers[self.current]
        if self.fill and (self.fill + need > len(buf) or self.fill >= PACK_SIZE):
            self._flush(placed)
            buf = self.buffers[self.current]
        if need > len(buf):  # an object bigger than a buffer: a pack of its own
            own = bytearray(need)
            temp.read_record_into(key[1], memoryview(own))
            self._write(
                own,
                [(key, BlobLocation(b"", _RECORD_HEAD, where.stored_size, where.plain_size))],
                placed,
            )
            return
        _, stored, plain = temp.read_record_into(key[1], memoryview(buf)[self.fill :])
        placed[key] = BlobLocation(b"", self.fill + _RECORD_HEAD, stored, plain)
        self.placeholders.append(key)
        self.fill += need

    def finish(self, placed: dict[tuple[BlobKind, ObjectId], BlobLocation]) -> None:
        if self.fill:
            self._flush(placed)
        self._wait()
        self.pool.shutdown()

    def _flush(self, placed: dict[tuple[BlobKind, ObjectId], BlobLocation]) -> None:
        self._wait()  # the other buffer's write must be done before it is refilled
        view = memoryview(self.buffers[self.current])[: self.fill]
        keys, self.placeholders = self.placeholders, []
        self.pending = self.pool.submit(self._write_pack, view, keys, placed)
        self.current ^= 1
        self.fill = 0

    def _wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def _write(
        self,
        data: bytearray,
        entries: list[tuple[tuple[BlobKind, ObjectId], BlobLocation]],
        placed: dict[tuple[BlobKind, ObjectId], BlobLocation],
    ) -> None:
        for key, where in entries:
            placed[key] = where
        self._write_pack(memoryview(data), [k for k, _ in entries], placed)

    def _write_pack(
        self,
        view: memoryview,
        keys: list[tuple[BlobKind, ObjectId]],
        placed: dict[tuple[BlobKind, ObjectId], BlobLocation],
    ) -> int:
        pack = blake3.blake3(view, max_threads=blake3.blake3.AUTO).digest()
        self.storage.put(pack_key(pack), view)  # create-only and durable; a retry verifies
        for key in keys:
            w = placed[key]
            placed[key] = BlobLocation(pack, w.offset, w.stored_size, w.plain_size)
        self.packs += 1
        self.bytes += len(view)
        return len(view)


class _Walk:
    """The connectivity check: everything reachable from the new tips, stopping at what the
    repository can already see, must be visible or uploaded by this uploader to it."""

    def __init__(self, service: RemoteService, session: Session) -> None:
        self.service = service
        self.session = session
        self.seen: set[tuple[BlobKind, ObjectId]] = set()
        self.temp_items: list[tuple[BlobKind, ObjectId]] = []
        self.missing: set[ObjectId] = set()
        self.commits: dict[ObjectId, tuple[ObjectId, ...]] = {}

    def _state(self, kind: BlobKind, oid: ObjectId) -> str:
        index, s = self.service.index, self.session
        with index.read() as txn:
            if index.is_visible(txn, s.repo_id, kind, oid):
                return "visible"
            if index.is_temp(txn, s.repo_id, s.uploader, kind, oid):
                return "temp"
        return "missing"

    def reach(self, tip: ObjectId) -> None:
        stack: list[tuple[BlobKind, ObjectId]] = [(BlobKind.OBJECT, tip)]
        chunk_batch: list[ObjectId] = []
        while stack:
            kind, oid = stack.pop()
            if (kind, oid) in self.seen:
                continue
            self.seen.add((kind, oid))
            if kind is BlobKind.CHUNK:
                chunk_batch.append(oid)
                if len(chunk_batch) >= 4096:
                    self._chunks(chunk_batch)
                    chunk_batch = []
                continue
            state = self._state(kind, oid)
            if state == "visible":
                continue  # its closure is visible too (the index invariant)
            if state == "missing":
                self.missing.add(oid)
                continue
            self.temp_items.append((kind, oid))
            obj = decode_object(self.service.temp.get(oid))
            if isinstance(obj, Commit):
                self.commits[oid] = obj.parents
                stack.append((BlobKind.OBJECT, obj.tree))
                stack.extend((BlobKind.OBJECT, p) for p in obj.parents)
            elif isinstance(obj, Tree):
                for entry in obj.entries:
                    stack.append((BlobKind.OBJECT, entry.id))
            elif isinstance(obj, Manifest):
                stack.extend((BlobKind.CHUNK, c.id) for c in obj.chunks)
            elif isinstance(obj, Symlink):
                pass
        if chunk_batch:
            self._chunks(chunk_batch)

    def _chunks(self, ids: list[ObjectId]) -> None:
        s = self.session
        present = self.service.index.present(s.repo_id, s.uploader, BlobKind.CHUNK, ids)
        with self.service.index.read() as txn:
            for oid, have in zip(ids, present, strict=True):
                if not have:
                    self.missing.add(oid)
                elif not self.service.index.is_visible(txn, s.repo_id, BlobKind.CHUNK, oid):
                    self.temp_items.append((BlobKind.CHUNK, oid))

    def is_ancestor(self, old: ObjectId, new: ObjectId) -> bool:
        """Is ``old`` reachable from ``new``? Walks uploaded commits, then visible ones."""
        seen: set[ObjectId] = set()
        stack = [new]
        while stack:
            oid = stack.pop()
            if oid == old:
                return True
            if oid in seen:
                continue
            seen.add(oid)
            parents = self.commits.get(oid)
            if parents is None:
                parents = self._visible_parents(oid)
            stack.extend(parents)
        return False

    def _visible_parents(self, oid: ObjectId) -> tuple[ObjectId, ...]:
        blobs = list(self.service.get(self.session, BlobKind.OBJECT, (oid,)))
        blob = blobs[0]
        data = bytes(blob.data)
        plain = decode_stored(
            bytes([blob.encoding]) + data, max_size=self.service.limits.max_object_size
        )
        if hash_bytes(plain) != oid:
            raise ObjectNotFoundError(f"object {short_id(oid)} is corrupt in storage")
        obj = decode_object(plain)
        return obj.parents if isinstance(obj, Commit) else ()


def _check_ref_name(name: str) -> None:
    from dits.repository import validate_branch_name

    if not name.startswith(_REF_PREFIX):
        raise InvalidObjectError(f"ref {name!r} is not under {_REF_PREFIX}", ref=name)
    try:
        validate_branch_name(name[len(_REF_PREFIX) :])
    except Exception as exc:
        raise InvalidObjectError(f"ref {name!r}: {exc}", ref=name) from None


def _token_id(token: bytes) -> str:
    """The public id inside a token (``dits_<id>_<secret>``), or "anonymous"."""
    parts = token.split(b"_")
    if len(parts) >= 3 and parts[0] == b"dits":
        return parts[1].decode("ascii", "replace")
    return "anonymous"

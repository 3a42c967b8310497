"""Streaming checkout for `dits clone`: chunks go from the network into the files and the store.

A clone does not fetch everything and then check out, which would read every chunk back out of
the store. `stream_checkout` plans the checkout of the server's HEAD tip from the objects just
fetched, fetches the missing chunks in file order, and writes each verified chunk into the
temporary files of the files that use it while putting it into the store; a file is renamed
into place as soon as its last byte is written. It stores no object and moves no ref: the
caller (`dits.ops.sync.clone`) then fetches the chunks the tip does not use, stores the objects
and moves the refs, so fetch's order holds (chunks, then objects, then refs).

Theory of operation:

* **Plan.** The tip's non-empty files in path order; each chunk position is a *slot* (file,
  offset, chunk). Slots are cut into batches of at most ``BATCH_BYTES`` written bytes and the
  server's ``max_batch`` ids. A missing chunk is fetched
  once, by the batch of its first slot; slots of that batch are written from memory, later
  slots read it back from the store. A chunk stored before the clone started (resume) is read
  from the store. Batches are generated as they are taken, so the plan is never all in memory.
* **Batches** are taken in order by ``STREAMS`` workers: a Get for the batch's missing chunks,
  then in a thread: decode, verify, ``put_many``, write every slot (``os.pwrite``), and commit
  (fchmod, fsync, rename) each file whose last slot that was. A batch that reads chunks an
  earlier batch fetches waits until that batch is done; the earliest unfinished batch never
  waits, so the workers cannot deadlock.
* **Bounds.** Memory: ``STREAMS`` batches of ``BATCH_BYTES``, received and decoded. Open files:
  a file is opened when its first slot is written and closed with its last. A file's slots are
  contiguous and a thread writes its batch's slots in order, so only files cut by the boundary
  of a batch not yet done stay open: about ``2 * STREAMS`` at most, however many files.
* **Failure.** The first error stops the workers from taking new batches; once no thread runs,
  every file not committed is aborted (its temporary file removed) and the error is raised.
  Files already renamed into place are complete. A killed process leaves complete files in the
  tree and its temporary files in ``.dits/tmp`` (swept by the next run); the resumed clone
  overwrites every file, reading the chunks it already stored from the store.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dits.core.codec import decode_object
from dits.core.ids import ObjectId, short_id
from dits.core.index import EntryKind, IndexEntry
from dits.core.objects import Manifest, Object
from dits.errors import CorruptObjectError
from dits.net.client import RemoteSession
from dits.ops.checkout import PendingFile, sweep_stale_temp, write_entry
from dits.ops.snapshot import FlatEntry, commit_snapshot
from dits.protocol import Blob, BlobKind, decode_chunk_data, verify_chunk
from dits.repository import Repository

__all__ = ["BATCH_BYTES", "STREAMS", "StreamedCheckout", "stream_checkout"]

BATCH_BYTES = 8 << 20  # file bytes one batch writes (fetched or read back from the store)
STREAMS = 4  # batches in flight, as fetch's PUT_STREAMS

Progress = Callable[[int], None]
_Slot = tuple[int, int, ObjectId, int]  # file number, offset, chunk, size


@dataclass
class StreamedCheckout:
    """What `stream_checkout` wrote: index entries, and the chunks it fetched."""

    index: dict[str, IndexEntry] = field(default_factory=dict)
    fetched: set[ObjectId] = field(default_factory=set)
    bytes_written: int = 0


@dataclass
class _Batch:
    number: int
    fetch: list[ObjectId] = field(default_factory=list)
    slots: list[_Slot] = field(default_factory=list)
    after: set[int] = field(default_factory=set)  # batches fetching chunks this one reads back
    fetch_bytes: int = 0
    write_bytes: int = 0


class _FetchedView(Repository):
    """``repo`` seen with the objects just fetched, which are stored only after their chunks."""

    def __init__(self, repo: Repository, fetched: Iterable[tuple[ObjectId, bytes]]) -> None:
        super().__init__(
            repo.root,
            chunks=repo.chunks,
            objects=repo.objects,
            refs=repo.refs,
            index=repo.index,
            config=repo.config,
        )
        self._fetched = dict(fetched)

    def get_object(self, oid: ObjectId) -> Object:
        data = self._fetched.get(oid)
        if data is None:
            return super().get_object(oid)
        return decode_object(data)  # verified and decoded once already by the fetch


def _plan(
    manifests: list[Manifest], missing: Collection[ObjectId], max_ids: int
) -> Iterator[_Batch]:
    fetched_by: dict[ObjectId, int] = {}
    batch = _Batch(0)
    for number, manifest in enumerate(manifests):
        offset = 0
        for ref in manifest.chunks:
            fetch = ref.id in missing and ref.id not in fetched_by
            if batch.slots and (
                batch.write_bytes + ref.size > BATCH_BYTES
                or (fetch and len(batch.fetch) >= max_ids)
            ):
                yield batch
                batch = _Batch(batch.number + 1)
            if fetch:
                fetched_by[ref.id] = batch.number
                batch.fetch.append(ref.id)
                batch.fetch_bytes += ref.size
            else:
                source = fetched_by.get(ref.id)
                if source is not None and source != batch.number:
                    batch.after.add(source)
            batch.slots.append((number, offset, ref.id, ref.size))
            batch.write_bytes += ref.size
            offset += ref.size
    if batch.slots:
        yield batch


class _Files:
    """The files being written, shared by the batch threads: opened at the first slot written,
    committed by the thread that writes the last."""

    def __init__(self, repo: Repository, files: list[tuple[str, FlatEntry, Manifest]]) -> None:
        self.repo = repo
        self.files = files
        self.remaining = [len(m.chunks) for _, _, m in files]
        self.open: dict[int, PendingFile] = {}
        self.stats: dict[int, os.stat_result] = {}
        self.lock = threading.Lock()

    def write(self, number: int, data: bytes | memoryview, offset: int) -> None:
        with self.lock:
            pending = self.open.get(number)
            if pending is None:
                path, entry, _ = self.files[number]
                pending = self.open[number] = PendingFile(self.repo, path, entry.mode)
        pending.write_at(data, offset)
        with self.lock:
            self.remaining[number] -= 1
            if self.remaining[number]:
                return
            del self.open[number]
        self.stats[number] = pending.commit()

    def abort_all(self) -> None:
        for pending in self.open.values():
            pending.abort()
        self.open.clear()


async def stream_checkout(
    repo: Repository,
    session: RemoteSession,
    tip: ObjectId,
    fetched: Iterable[tuple[ObjectId, bytes]],
    missing: Collection[ObjectId],
    *,
    on_plan: Progress | None = None,
    on_bytes: Progress | None = None,
) -> StreamedCheckout:
    """Write the tree of commit ``tip`` into ``repo``'s working tree, fetching chunks as it goes.

    Every file and symlink of the tip is written (an existing one is overwritten: the folder is
    the clone's own) and gets the index entry `switch` would give it; the index itself, the
    objects and the refs are left to the caller.

    Args:
        repo: the repository being cloned into; the caller holds its write lock.
        session: the open session to the server.
        tip: the commit to check out.
        fetched: the objects fetched but not stored yet (the tip's among them, or in the store).
        missing: chunks not in the local store; those the tip uses are fetched exactly once.
        on_plan: called once with the bytes of all files to write.
        on_bytes: called with the plain bytes of each batch of chunks fetched and written.

    Returns:
        The index entries of the written paths, the chunks fetched and the bytes written.

    Raises:
        HashMismatchError / ProtocolViolation: the server sent a chunk that is not what it
            claims; no partially written file is left in the tree.
        UnsafePathError: a path would be written through a symlink or over a folder.
    """
    view = _FetchedView(repo, fetched)
    snapshot = commit_snapshot(view, tip)
    files: list[tuple[str, FlatEntry, Manifest]] = []
    others: list[tuple[str, FlatEntry]] = []  # symlinks and empty files: no chunks to stream
    for path in sorted(snapshot):
        entry = snapshot[path]
        manifest = view.get_typed(entry.oid, Manifest) if entry.kind is EntryKind.FILE else None
        if manifest is not None and manifest.chunks:
            files.append((path, entry, manifest))
        else:
            others.append((path, entry))
    if on_plan is not None:
        on_plan(sum(e.size for e in snapshot.values()))
    sweep_stale_temp(repo)
    out = StreamedCheckout()
    batches = _plan([m for _, _, m in files], missing, session.limits.max_batch)
    table = _Files(repo, files)
    await _run(repo, session, batches, table, out, on_bytes)
    for number, (path, entry, _) in enumerate(files):
        out.index[path] = IndexEntry.from_stat(entry.kind, table.stats[number], entry.oid)
        out.bytes_written += entry.size
    for path, entry in others:
        st = await asyncio.to_thread(write_entry, view, path, entry)
        out.index[path] = IndexEntry.from_stat(entry.kind, st, entry.oid)
        out.bytes_written += entry.size
    return out


async def _run(
    repo: Repository,
    session: RemoteSession,
    batches: Iterator[_Batch],
    table: _Files,
    out: StreamedCheckout,
    on_bytes: Progress | None,
) -> None:
    limit = session.limits.max_chunk_size
    loop = asyncio.get_running_loop()
    done: set[int] = set()
    changed = asyncio.Condition()
    errors: list[Exception] = []

    def write_batch(batch: _Batch, blobs: list[Blob]) -> None:
        plain: dict[ObjectId, bytes | memoryview] = {}
        for blob in blobs:
            chunk = decode_chunk_data(blob, limit)
            verify_chunk(blob.id, chunk)
            plain[blob.id] = chunk
        if plain:
            repo.chunks.put_many(list(plain.items()))
        for number, offset, oid, size in batch.slots:
            data = plain.get(oid)
            if data is None:  # stored earlier; kept for the other slots of this batch
                data = plain[oid] = repo.chunks.get(oid)
            if len(data) != size:
                raise CorruptObjectError(
                    f"{table.files[number][0]}: chunk {short_id(oid)} has the wrong size"
                )
            table.write(number, data, offset)

    def ready(batch: _Batch) -> bool:
        return bool(errors) or batch.after <= done

    async def worker() -> None:
        while not errors:
            batch = next(batches, None)
            if batch is None:
                return
            try:
                if batch.after:
                    async with changed:
                        await changed.wait_for(functools.partial(ready, batch))
                    if errors:
                        return
                blobs = (
                    [b async for b in session.get(BlobKind.CHUNK, batch.fetch)]
                    if batch.fetch
                    else []
                )
                await loop.run_in_executor(pool, write_batch, batch, blobs)
            except Exception as exc:
                errors.append(exc)
            else:
                done.add(batch.number)
                out.fetched.update(batch.fetch)
                if on_bytes is not None and batch.fetch_bytes:
                    on_bytes(batch.fetch_bytes)
            async with changed:
                changed.notify_all()

    streams = max(1, min(STREAMS, session.limits.max_streams))
    pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="dits-clone")
    try:
        await asyncio.gather(*(worker() for _ in range(streams)))
    finally:
        pool.shutdown(wait=True)  # no thread may still write when the files are aborted
        table.abort_all()  # empty unless something failed
    if errors:
        raise errors[0]

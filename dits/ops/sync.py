"""push, fetch and clone: moving commits between a local repository and a dits-remote.

Push sends only what the server lacks: it asks "have" for the commits, then level by level for
the trees and manifests of the commits the server lacks, then for the chunks of the manifests it
lacks (a blob the server can see implies everything it reaches, so the walk stops there). Chunks
go through the staging engine (``dits.staging``): read and encoded for the wire a bounded
lookahead ahead of parallel put streams, in their at-rest form unless the measured link makes
compression (or stronger compression) pay; objects follow; the ref moves last by
compare-and-swap. Chunks the server already received from an interrupted push count as
present, so a re-run sends only the rest.

Fetch mirrors it: objects level by level (``Get``), then the chunks the local store lacks over
parallel streams, each verified against its id before it is stored; objects are stored after
the chunks they reach, and the remote-tracking ref last, so an interrupted fetch keeps its
chunks and never leaves a ref pointing at something incomplete.

Clone is a fetch whose checked-out files are written as their chunks arrive
(`dits.ops.clone`), in the same order: chunks, objects, refs, then the index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from dits.core.codec import decode_object, object_id
from dits.core.ids import ObjectId, short_id
from dits.core.index import IndexEntry
from dits.core.objects import Commit, Manifest, Object, Tree
from dits.errors import (
    ConflictError,
    CorruptObjectError,
    DitsError,
    ObjectNotFoundError,
    UsageError,
)
from dits.hooks import run_hook
from dits.net.client import RemoteSession, open_session
from dits.ops.clone import stream_checkout
from dits.protocol import (
    BlobKind,
    Encoding,
    InvalidObjectError,
    MissingObjectsError,
    Permission,
    PutChunk,
    PutObject,
    RefChange,
    decode_chunk_data,
    verify_chunk,
)
from dits.remotes import KnownHosts, RemoteSpec, add_remote, get_remote, parse_url
from dits.repository import HEADS, Repository
from dits.staging.config import StagingConfig
from dits.staging.engine import StagedChunk, StagingEngine, StagingStats, StoredChunkStager
from dits.store.base import RefUpdate

__all__ = ["FetchResult", "PushResult", "clone", "fetch", "push"]

REMOTES = "refs/remotes/"
BATCH_BYTES = 8 << 20  # one put or get request carries about this much
PUT_STREAMS = 4
MISSING_RETRIES = 3  # rounds of re-sending what the server lost between Have and UpdateRefs

Progress = Callable[[int], None]
Pace = Callable[[int], Awaitable[None]]


@dataclass
class PushResult:
    """Figures of one push (``--json``)."""

    remote: str
    branch: str
    transport: str = ""
    old: str | None = None
    new: str | None = None
    up_to_date: bool = False
    objects_total: int = 0
    objects_sent: int = 0
    chunks_total: int = 0
    chunks_sent: int = 0
    chunk_bytes_total: int = 0  # plain bytes of every chunk this push is about
    chunk_bytes_sent: int = 0  # plain bytes of the chunks it had to send
    chunks_resent: int = 0  # sent again because the server lost them meanwhile (expired)
    bytes_sent: int = 0  # on the wire, framing included
    upload_seconds: float = 0.0  # time spent sending chunks
    seconds: float = 0.0
    staging: dict[str, object] | None = None  # the staging engine's figures (push --stats)

    @property
    def chunks_present(self) -> int:
        return self.chunks_total - self.chunks_sent

    @property
    def bytes_skipped(self) -> int:
        return max(0, self.chunk_bytes_total - self.chunk_bytes_sent)

    def to_json(self) -> dict[str, object]:
        doc = dict(self.__dict__)
        doc["chunks_already_on_server"] = self.chunks_present
        doc["bytes_skipped"] = self.bytes_skipped
        doc["percent_already_on_server"] = (
            round(100 * self.chunks_present / self.chunks_total, 1) if self.chunks_total else 100.0
        )
        doc["percent_bytes_presynced"] = (
            round(100 * self.bytes_skipped / self.chunk_bytes_total, 1)
            if self.chunk_bytes_total
            else 100.0
        )
        return doc


@dataclass
class FetchResult:
    """Figures of one fetch or clone (``--json``)."""

    remote: str
    transport: str = ""
    updated: dict[str, str] = field(default_factory=dict)
    objects_received: int = 0
    chunks_received: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    head: str = ""

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _with_transport(spec: RemoteSpec, transport: str | None) -> RemoteSpec:
    return spec if transport is None else dataclasses.replace(spec, transport=transport)


# -- push -----------------------------------------------------------------------------------------


def push(
    repo: Repository,
    remote: str | None = None,
    branch: str | None = None,
    *,
    force: bool = False,
    transport: str | None = None,
    on_total: Progress | None = None,
    on_bytes: Progress | None = None,
    known_hosts: KnownHosts | None = None,
    limit_rate: int = 0,
    sequential_staging: bool = False,
) -> PushResult:
    """Push ``branch`` (default: the current one) to ``remote`` (default: origin).

    ``transport`` (``auto``, ``quic``, ``tcp``) overrides the remote's configured one.
    ``limit_rate`` caps the upload in bytes/s (0: unlimited). ``sequential_staging`` stages
    chunks before sending them instead of overlapping the two (benchmarks compare them).

    Raises:
        UsageError: no such remote or branch.
        HookFailedError: the pre-push hook refused.
        StaleRefError / NonFastForwardError: the server's branch moved; pull first.
    """
    spec = _with_transport(get_remote(repo.config, remote), transport)
    branch = branch or repo.current_branch()
    ref = HEADS + branch
    tip = repo.refs.get_ref(ref)
    if tip is None:
        raise UsageError(f"branch {branch!r} has no commits to push")
    tracking = REMOTES + f"{spec.name}/{branch}"
    seen_remote = repo.refs.get_ref(tracking)
    run_hook(
        repo.dits_dir,
        repo.root,
        "pre-push",
        args=[spec.name, str(spec.url)],
        stdin=f"{ref} {tip.hex()} {ref} {(seen_remote or bytes(32)).hex()}\n",
    )
    staging = _Staging(StagingConfig.from_config(repo.config), limit_rate, sequential_staging)
    result = asyncio.run(
        _push(repo, spec, branch, tip, force, on_total, on_bytes, known_hosts, staging)
    )
    if not result.up_to_date or seen_remote != tip:
        repo.refs.update_refs([RefUpdate(tracking, tip, repo.refs.get_ref(tracking))])
    return result


async def _push(
    repo: Repository,
    spec: RemoteSpec,
    branch: str,
    tip: ObjectId,
    force: bool,
    on_total: Progress | None,
    on_bytes: Progress | None,
    known_hosts: KnownHosts | None,
    staging: _Staging,
) -> PushResult:
    started = time.perf_counter()
    result = PushResult(spec.name, branch, new=tip.hex())
    session = await open_session(spec, known_hosts=known_hosts)
    try:
        result.transport = session.transport
        if not session.permissions & Permission.WRITE:
            from dits.protocol import ForbiddenError

            raise ForbiddenError(f"the token for {spec.name} may not push to {spec.url.repo}")
        ref = HEADS + branch
        remote_old = (await session.list_refs(HEADS)).as_dict().get(ref)
        result.old = remote_old.hex() if remote_old else None
        if remote_old == tip:
            result.up_to_date = True
            return result
        # The plan holds only objects the server said it lacks, and their chunks with sizes.
        objects, chunks, total = await _plan_push(repo, session, tip)
        result.objects_total = result.objects_sent = len(objects)
        result.chunks_total = len(total)
        result.chunk_bytes_total = sum(total.values())
        # The server pins what Have counts (its speculative tier cannot expire it under us).
        on_server = await session.have(BlobKind.CHUNK, list(chunks)) if chunks else set()
        missing_chunks = [(c, size) for c, size in chunks.items() if c not in on_server]
        result.chunks_sent = len(missing_chunks)
        result.chunk_bytes_sent = sum(size for _, size in missing_chunks)
        if on_total is not None:
            on_total(result.chunk_bytes_sent)
        upload_started = time.perf_counter()
        figures = await _send_chunks(repo, session, missing_chunks, on_bytes, staging)
        result.staging = figures.to_json() if figures is not None else None
        result.upload_seconds = time.perf_counter() - upload_started
        await _send_objects(repo, session, objects)
        change = RefChange(ref, remote_old, tip, force)
        for attempt in range(MISSING_RETRIES + 1):
            try:
                await session.update_refs([change])
                break
            except MissingObjectsError as exc:
                # Something the server had said it held (a speculative chunk past its TTL)
                # is gone: send it again, as git-lfs re-uploads what a batch call lost.
                lost = [i for i in exc.ids if i in chunks or i in total]
                lost_objects = [i for i in exc.ids if i in set(objects)]
                if attempt == MISSING_RETRIES or not (lost or lost_objects):
                    raise
                sizes = {**total, **chunks}
                resend = [(i, sizes[i]) for i in lost]
                await _send_chunks(repo, session, resend, None, staging)
                await _send_objects(repo, session, lost_objects)
                result.chunks_resent += len(lost)
        result.bytes_sent = session.bytes_sent
        return result
    finally:
        result.seconds = time.perf_counter() - started
        await session.close()


async def _plan_push(
    repo: Repository, session: RemoteSession, tip: ObjectId
) -> tuple[list[ObjectId], dict[ObjectId, int], dict[ObjectId, int]]:
    """Objects the server lacks, the chunks (id -> size) of their manifests to ask about, and
    the chunks (id -> size) this push is about (see below)."""
    commits = _local_commits(repo, tip)
    have = await session.have(BlobKind.OBJECT, commits)
    todo = [c for c in commits if c not in have]
    objects: list[ObjectId] = list(todo)
    level: list[ObjectId] = []
    for oid in todo:
        commit = repo.get_object(oid)
        assert isinstance(commit, Commit)
        level.append(commit.tree)
    chunk_sizes: dict[ObjectId, int] = {}
    seen: set[ObjectId] = set(todo)
    while level:
        level = [o for o in dict.fromkeys(level) if o not in seen]
        seen.update(level)
        if not level:
            break
        present = await session.have(BlobKind.OBJECT, level)
        next_level: list[ObjectId] = []
        for oid in level:
            if oid in present:
                continue
            objects.append(oid)
            obj = repo.get_object(oid)
            if isinstance(obj, Tree):
                next_level.extend(e.id for e in obj.entries)
            elif isinstance(obj, Manifest):
                chunk_sizes.update((c.id, c.size) for c in obj.chunks)
        level = next_level
    # "M of N chunks already on server": N counts every chunk this push is about, the tip's
    # and those of any other new manifest, so M = N - sent is never negative.
    total = _tip_chunks(repo, tip)
    total.update(chunk_sizes)
    return objects, chunk_sizes, total


def _local_commits(repo: Repository, tip: ObjectId) -> list[ObjectId]:
    out: list[ObjectId] = []
    seen: set[ObjectId] = set()
    stack = [tip]
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        out.append(oid)
        commit = repo.get_object(oid)
        assert isinstance(commit, Commit)
        stack.extend(commit.parents)
    return out


def _tip_chunks(repo: Repository, tip: ObjectId) -> dict[ObjectId, int]:
    commit = repo.get_object(tip)
    assert isinstance(commit, Commit)
    chunks: dict[ObjectId, int] = {}
    stack = [commit.tree]
    seen: set[ObjectId] = set()
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        obj = repo.get_object(oid)
        if isinstance(obj, Tree):
            stack.extend(e.id for e in obj.entries)
        elif isinstance(obj, Manifest):
            chunks.update((c.id, c.size) for c in obj.chunks)
    return chunks


def read_chunk_batch(
    repo: Repository, ids: list[ObjectId], *, missing_ok: bool = False
) -> list[PutChunk]:
    """PutChunk messages for ``ids`` from the local store (``missing_ok``: skip absent ones).

    The at-rest form is sent as is: RAW or one zstd frame. Not re-hashed here: the server
    hashes every byte it receives and refuses a mismatch, naming the chunk."""
    get_stored = getattr(repo.chunks, "get_stored", None)
    out = []
    for oid in ids:
        try:
            if get_stored is not None:
                stored, plain_size = get_stored(oid, verify=False)
                out.append(PutChunk(oid, Encoding(stored[0]), plain_size, memoryview(stored)[1:]))
            else:
                data = repo.chunks.get(oid)
                out.append(PutChunk(oid, Encoding.RAW, len(data), data))
        except ObjectNotFoundError:
            if not missing_ok:
                raise
    return out


@dataclass(frozen=True)
class _Staging:
    config: StagingConfig
    limit_rate: int = 0
    sequential: bool = False


async def _send_chunks(
    repo: Repository,
    session: RemoteSession,
    chunks: list[tuple[ObjectId, int]],
    on_bytes: Progress | None,
    staging: _Staging,
) -> StagingStats | None:
    """Send ``chunks`` (id, plain size) through the staging engine; its figures, or None."""
    if not chunks:
        return None
    engine = StagingEngine(
        staging.config,
        max_streams=min(PUT_STREAMS, session.limits.max_streams),
        limit_rate=staging.limit_rate,
        transport_stats=session.conn.stats,
        sequential=staging.sequential,
    )

    async def send(batch: list[StagedChunk], pace: Pace | None) -> None:
        msgs = [PutChunk(c.id, c.encoding, c.plain_size, c.payload) for c in batch]
        await session.put(msgs, pace=pace)
        if on_bytes is not None:
            on_bytes(sum(c.plain_size for c in batch))

    probed = repo.config.get("core.compression") is not False  # see StoredChunkStager
    return await engine.run(chunks, StoredChunkStager(repo.chunks, raw_was_probed=probed), send)


async def _send_objects(repo: Repository, session: RemoteSession, ids: list[ObjectId]) -> None:
    batch: list[PutObject] = []
    size = 0
    for oid in ids:
        data = repo.objects.get(oid)
        batch.append(PutObject(oid, data))
        size += len(data)
        if size >= BATCH_BYTES:
            await session.put(batch)
            batch, size = [], 0
    if batch:
        await session.put(batch)


# -- fetch and clone ------------------------------------------------------------------------------


def fetch(
    repo: Repository,
    remote: str | None = None,
    *,
    transport: str | None = None,
    on_total: Progress | None = None,
    on_bytes: Progress | None = None,
    known_hosts: KnownHosts | None = None,
) -> FetchResult:
    """Download every branch of ``remote`` the local store lacks; update remote-tracking refs.
    ``transport`` overrides the remote's configured one."""
    spec = _with_transport(get_remote(repo.config, remote), transport)
    return asyncio.run(_fetch(repo, spec, on_total, on_bytes, known_hosts))


async def _fetch(
    repo: Repository,
    spec: RemoteSpec,
    on_total: Progress | None,
    on_bytes: Progress | None,
    known_hosts: KnownHosts | None,
    *,
    check_out: bool = False,
    on_checkout: Progress | None = None,
) -> FetchResult:
    """Fetch every branch; with ``check_out`` (clone) also write the server's HEAD branch into
    the working tree as its chunks arrive (`dits.ops.clone`), then make it the local branch."""
    started = time.perf_counter()
    result = FetchResult(spec.name)
    session = await open_session(spec, known_hosts=known_hosts)
    try:
        result.transport = session.transport
        refs = await session.list_refs(HEADS)
        result.head = refs.head
        tips = refs.as_dict()
        tip = tips.get(refs.head) if check_out else None
        branch = refs.head[len(HEADS) :] if tip is not None else ""
        if branch and repo.refs.get_ref(HEADS + branch) not in (None, tip):
            raise ConflictError(f"local branch {branch} differs from origin; not checking out")
        objects, chunks = await _fetch_objects(repo, session, list(tips.values()))
        result.objects_received = len(objects)
        local = repo.chunks.has_many([c for c, _ in chunks])
        missing = {c: size for c, size in chunks if c not in local}
        if on_total is not None:
            on_total(sum(missing.values()))
        index: dict[str, IndexEntry] = {}
        if tip is not None:
            streamed = await stream_checkout(
                repo, session, tip, objects, missing, on_plan=on_checkout, on_bytes=on_bytes
            )
            index = streamed.index
            result.chunks_received = len(streamed.fetched)
            for oid in streamed.fetched:
                del missing[oid]
        # What a checked-out tip does not use: history, other branches; or all, for a fetch.
        result.chunks_received += await _fetch_chunks(repo, session, list(missing), on_bytes)
        # Objects after the chunks they reach, refs last (see the module docstring).
        for i in range(0, len(objects), 4096):
            repo.objects.put_many(objects[i : i + 4096])
        updates = _tracking_updates(repo, spec, tips, result)
        if tip is not None and repo.refs.get_ref(HEADS + branch) is None:
            updates.append(RefUpdate(HEADS + branch, tip, None))
        if updates:
            repo.refs.update_refs(updates)
        if tip is not None:
            repo.index.replace_all(index)
            repo.refs.set_head(HEADS + branch)
        result.bytes_received = session.bytes_received
        return result
    finally:
        result.seconds = time.perf_counter() - started
        await session.close()


def _tracking_updates(
    repo: Repository, spec: RemoteSpec, tips: dict[str, ObjectId], result: FetchResult
) -> list[RefUpdate]:
    """Moves of the remote-tracking refs to the server's ``tips``, noted in ``result``."""
    updates = []
    for ref, tip in tips.items():
        tracking = REMOTES + f"{spec.name}/{ref[len(HEADS) :]}"
        old = repo.refs.get_ref(tracking)
        if old != tip:
            updates.append(RefUpdate(tracking, tip, old))
            result.updated[ref[len(HEADS) :]] = tip.hex()
    return updates


async def _fetch_objects(
    repo: Repository, session: RemoteSession, tips: list[ObjectId]
) -> tuple[list[tuple[ObjectId, bytes]], list[tuple[ObjectId, int]]]:
    """Every object reachable from ``tips`` the local store lacks, verified and decoded."""
    got: list[tuple[ObjectId, bytes]] = []
    chunks: dict[ObjectId, int] = {}
    seen: set[ObjectId] = set()
    level = tips
    while level:
        level = [o for o in dict.fromkeys(level) if o not in seen]
        seen.update(level)
        local = repo.objects.has_many(level)
        wanted = [o for o in level if o not in local]
        next_level: list[ObjectId] = []
        for oid in level:
            if oid in local:
                _children(repo.get_object(oid), next_level, chunks)
        step = session.limits.max_batch
        for i in range(0, len(wanted), step):
            async for blob in session.get(BlobKind.OBJECT, wanted[i : i + step]):
                data = bytes(decode_chunk_data(blob, session.limits.max_object_size))
                if object_id(data) != blob.id:
                    raise CorruptObjectError(
                        f"the server sent wrong bytes for object {short_id(blob.id)}"
                    )
                try:
                    obj = decode_object(data)  # names are checked here: no '..', '.dits', '/'
                except ValueError as exc:  # DecodeError included
                    raise InvalidObjectError(
                        f"the server sent an invalid object {short_id(blob.id)}: {exc}",
                        ids=[blob.id],
                    ) from None
                got.append((blob.id, data))
                _children(obj, next_level, chunks)
        level = next_level
    return got, list(chunks.items())


def _children(obj: Object, out: list[ObjectId], chunks: dict[ObjectId, int]) -> None:
    if isinstance(obj, Commit):
        out.append(obj.tree)
        out.extend(obj.parents)
    elif isinstance(obj, Tree):
        out.extend(e.id for e in obj.entries)
    elif isinstance(obj, Manifest):
        for c in obj.chunks:
            chunks[c.id] = c.size


async def _fetch_chunks(
    repo: Repository, session: RemoteSession, ids: list[ObjectId], on_bytes: Progress | None
) -> int:
    if not ids:
        return 0
    per_request = 32
    batches = [ids[i : i + per_request] for i in range(0, len(ids), per_request)]
    queue: asyncio.Queue[list[ObjectId]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    received = 0
    limit = session.limits.max_chunk_size

    def verify_and_store(items: list[tuple[ObjectId, Encoding, int, bytes]]) -> int:
        plain = []
        for oid, enc, size, data in items:
            msg = PutChunk(oid, enc, size, data)
            chunk = decode_chunk_data(msg, limit)
            verify_chunk(oid, chunk)
            plain.append((oid, chunk))
        repo.chunks.put_many(plain)
        return sum(len(c) for _, c in plain)

    async def worker() -> None:
        nonlocal received
        while not queue.empty():
            batch = queue.get_nowait()
            items = [
                (b.id, Encoding(b.encoding), b.plain_size, bytes(b.data))
                async for b in session.get(BlobKind.CHUNK, batch)
            ]
            stored = await asyncio.to_thread(verify_and_store, items)
            received += len(items)
            if on_bytes is not None:
                on_bytes(stored)

    await asyncio.gather(*(worker() for _ in range(min(PUT_STREAMS, len(batches)))))
    return received


_CLONE_INCOMPLETE = "clone.incomplete"  # set until a clone has finished; allows a resume


def clone(
    url: str,
    target: Path,
    *,
    token: str | None = None,
    transport: str | None = None,
    on_total: Progress | None = None,
    on_bytes: Progress | None = None,
    on_checkout: Progress | None = None,
    known_hosts: KnownHosts | None = None,
) -> tuple[Repository, FetchResult]:
    """Create ``target``, fetch everything from ``url`` and check out the server's HEAD branch.

    The chunks of the checked-out files are written into the files as they arrive, and stored
    (`dits.ops.clone`); the chunks only history or other branches use follow, then the objects,
    then the refs, then the index. An interrupted clone is resumed by running it again on the
    same folder: chunks already stored are not downloaded again, and every file is rewritten.

    Args:
        url: ``dits://host[:port]/repo``.
        target: the folder to create (or holding an interrupted clone of ``url``).
        token: stored as ``remote.origin.token``.
        transport: stored as ``remote.origin.transport``.
        on_total: called once with the bytes of chunks to download.
        on_bytes: called with the bytes of each batch of chunks downloaded (and written).
        on_checkout: called once with the bytes of the files to write.
        known_hosts: pinned certificates (default: the user's).

    Returns:
        The open repository (the caller closes it) and the fetch figures.

    Raises:
        UsageError: ``target`` is not empty and not an interrupted clone of ``url``.
        ConflictError: an interrupted clone's branch differs from the server's.
        HashMismatchError / ProtocolViolation: the server sent bad bytes; no partially
            written file is left in the tree.
    """
    parse_url(url)  # refuse a bad URL before creating anything
    resuming = (target / ".dits").is_dir()
    if target.exists() and any(target.iterdir()) and not resuming:
        raise UsageError(f"{target} exists and is not empty")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    repo = Repository.open(target) if resuming else Repository.init(target)
    try:
        stored = repo.config.get("remote.origin.url") if resuming else None
        if resuming:
            # A clone sets refs only at its very end, so a folder with refs and no
            # clone.incomplete mark is a finished clone (or another repository): rewriting
            # every file would throw away the user's edits.
            if not repo.config.get(_CLONE_INCOMPLETE) and repo.refs.list_refs():
                raise UsageError(
                    f"{target} is already a dits repository; run 'dits pull' inside it, or "
                    "clone into a new folder"
                )
            if stored is not None and stored != url:
                raise UsageError(
                    f"{target} holds an interrupted clone of {stored}; run the same clone again "
                    "to resume it, or remove the folder"
                )
        if stored is None:  # a new clone, or one killed before it noted its remote
            add_remote(repo.config, "origin", url, token=token)
            if transport:
                repo.config.set("remote.origin.transport", transport)
        repo.config.set(_CLONE_INCOMPLETE, True)
        spec = get_remote(repo.config, "origin")
        with repo.write_lock("dits clone"):
            result = asyncio.run(
                _fetch(
                    repo,
                    spec,
                    on_total,
                    on_bytes,
                    known_hosts,
                    check_out=True,
                    on_checkout=on_checkout,
                )
            )
        repo.config.unset(_CLONE_INCOMPLETE)
    except BaseException:
        # A clone that stored nothing (the server could not be reached, a bad token) leaves
        # nothing behind, as git does; one that got data keeps it so running it again resumes.
        try:
            empty = not resuming and not (repo.chunks.stats().count or repo.objects.stats().count)
        except DitsError:
            empty = False
        repo.close()
        if empty:
            shutil.rmtree(target if created else target / ".dits", ignore_errors=True)
        raise
    return repo, result

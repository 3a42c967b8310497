"""Pre-upload of staged chunks: priority queue, dedup, bandwidth cap, backoff, push priority.

Chunks arrive from the stager (already in the local store) with a priority key. ``workers``
coroutines take batches of about ``BATCH_BYTES`` in priority order, drop what the dedup cache
says the server holds, ask the server (Have) about the rest, and send what it lacks as
PutSpeculative requests through the staging engine that push uses (``dits.staging``: chunks
read and encoded for the wire ahead of the stream, under the ``[staging]`` memory bound, with
one network estimate kept across batches). Every byte written goes through one shared token
bucket, in slices of at most 64 KiB, so the uplink never sees bursts above ``max_bandwidth``.

Uploading stops (chunks stay queued, nothing is lost) while any *hold* is set: the user paused
the agent, an explicit push is running (it gets the uplink), files are being written quickly
(active editing), the server's quota is full, or the last attempt failed and the backoff has
not run out. Network errors back off exponentially (1 s doubling to 60 s); a full quota waits
``QUOTA_BACKOFF`` seconds; nothing is ever dropped for a transient reason.

What the server holds is remembered in the persistent cache with an expiry of ``chunk_ttl``
(the server forgets unpromoted speculative chunks after its own TTL), so a restarted agent
uploads nothing twice.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dits.core.ids import ObjectId
from dits.errors import DitsError
from dits.protocol import BlobKind, PutChunk, QuotaExceededError, RemoteError
from dits.remotes import KnownHosts, RemoteSpec
from dits.repository import Repository
from dits.staging.bucket import TokenBucket
from dits.staging.config import StagingConfig
from dits.staging.engine import StagedChunk, StagingEngine, StagingStats, StoredChunkStager
from dits.staging.network import NetworkMonitor
from dits.store.speculative import SpeculativeCache, server_scope

__all__ = ["BATCH_BYTES", "Uploader", "UploaderFigures"]

log = logging.getLogger("dits.speculative")

BATCH_BYTES = 4 << 20  # one PutSpeculative request; small enough to pace, big enough to amortise
QUOTA_BACKOFF = 300.0
MAX_BACKOFF = 60.0
RATE_WINDOW = 10.0  # seconds of acknowledged uploads the current rate is measured over
PUSH_HOLD_LIMIT = 900.0  # a push that never said "done" (killed) releases the uplink after this


@dataclass
class UploaderFigures:
    """Counters shown by ``dits speculative status``."""

    chunks_queued: int = 0
    bytes_queued: int = 0
    chunks_uploaded: int = 0
    bytes_uploaded: int = 0
    chunks_skipped: int = 0  # the server already had them
    bytes_skipped: int = 0
    failures: int = 0
    last_error: str = ""
    holds: list[str] = field(default_factory=list)
    retry_in: float = 0.0
    upload_rate: float = 0.0
    connected: bool = False
    staging: dict[str, Any] = field(default_factory=dict)  # summed over the staged batches


class Uploader:
    """The upload half of the agent (one per daemon; also used by ``speculative sync``)."""

    def __init__(
        self,
        repo: Repository,
        cache: SpeculativeCache,
        spec: RemoteSpec | None,
        *,
        max_bandwidth: int,
        workers: int,
        chunk_ttl: float,
        known_hosts: KnownHosts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.cache = cache
        self.spec = spec
        # What the cache says the server holds is about this remote repository and token only.
        self.scope = server_scope(str(spec.url), spec.token) if spec is not None else b""
        self.workers = max(1, workers)
        self.chunk_ttl = chunk_ttl
        self.known_hosts = known_hosts
        self.clock = clock
        self.bucket = TokenBucket(float(max_bandwidth), float(min(max_bandwidth, 256 << 10)))
        self._heap: list[tuple[Any, int, ObjectId, int]] = []
        self._queued: set[ObjectId] = set()
        self._seq = itertools.count()
        self._holds: dict[str, float] = {}  # reason -> until (clock), inf = until released
        self._wake = asyncio.Event()
        self._session: Any = None
        self._session_lock = asyncio.Lock()
        self._acked: deque[tuple[float, int]] = deque()
        self._backoff = 0.0
        self._inflight = 0
        self.figures = UploaderFigures()
        self.staging_config = StagingConfig.from_config(repo.config)
        self.monitor = NetworkMonitor(
            window=self.staging_config.network_prediction_window,
            predict=self.staging_config.enable_network_prediction,
        )
        self.on_uploaded: Callable[[int, int], None] | None = None

    # -- queue ---------------------------------------------------------------------------------

    def enqueue(self, chunks: Iterable[tuple[ObjectId, int]], priority: Any) -> int:
        """Queue chunks (id, size) at ``priority`` (smaller first); returns how many were new."""
        added = 0
        for oid, size in chunks:
            if oid in self._queued:
                continue
            self._queued.add(oid)
            heapq.heappush(self._heap, (priority, next(self._seq), oid, size))
            self.figures.chunks_queued += 1
            self.figures.bytes_queued += size
            added += 1
        if added:
            self._wake.set()
        return added

    def clear(self) -> int:
        """Empty the queue; returns how many chunks were dropped (they stay in the local store)."""
        dropped = len(self._heap)
        self._heap.clear()
        self._queued.clear()
        self.figures.chunks_queued = 0
        self.figures.bytes_queued = 0
        return dropped

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing on the wire."""
        return not self._heap and self._inflight == 0

    # -- holds ---------------------------------------------------------------------------------

    def hold(self, reason: str, seconds: float = float("inf")) -> None:
        """Stop uploading for ``reason`` (until ``release`` or ``seconds`` have passed)."""
        self._holds[reason] = self.clock() + seconds

    def release(self, reason: str) -> None:
        if self._holds.pop(reason, None) is not None:
            self._wake.set()

    def holds(self) -> dict[str, float]:
        """Active holds and the seconds left on each (inf = until released)."""
        now = self.clock()
        for reason in [r for r, until in self._holds.items() if until <= now]:
            del self._holds[reason]
        return {r: until - now for r, until in self._holds.items()}

    # -- figures -------------------------------------------------------------------------------

    def current_rate(self) -> float:
        """Bytes per second acknowledged by the server over the last ``RATE_WINDOW`` seconds."""
        now = time.monotonic()
        while self._acked and self._acked[0][0] < now - RATE_WINDOW:
            self._acked.popleft()
        if not self._acked:
            return 0.0
        span = max(now - self._acked[0][0], 1.0)
        return sum(n for _, n in self._acked) / span

    def snapshot(self) -> UploaderFigures:
        f = self.figures
        holds = self.holds()
        f.holds = sorted(holds)
        f.retry_in = round(max(holds.values(), default=0.0), 1) if holds else 0.0
        if f.retry_in == float("inf"):
            f.retry_in = 0.0
        f.upload_rate = round(self.current_rate(), 1)
        f.connected = self._session is not None
        return f

    # -- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Upload until ``stop`` is set (the queue is kept; a restart re-stages from the cache)."""
        try:
            await asyncio.gather(*(self._worker(stop) for _ in range(self.workers)))
        finally:
            await self._disconnect()

    async def close(self) -> None:
        """Close the connection (the queue is kept)."""
        await self._disconnect()

    async def drain(self) -> None:
        """Upload everything queued now, then return (``speculative sync``); errors raise."""
        while self._heap:
            batch = self._take_batch()
            await self._upload(batch)

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            holds = self.holds()
            if holds or not self._heap or self.spec is None:
                self._wake.clear()
                wait = min([*holds.values(), 1.0]) if holds else 1.0
                stopper = asyncio.ensure_future(stop.wait())
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {stopper, waker}, timeout=max(wait, 0.05), return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
                waker.cancel()
                continue
            batch = self._take_batch()
            self._inflight += 1
            try:
                await self._upload(batch)
                self._backoff = 0.0
            except QuotaExceededError as exc:
                self._requeue(batch)
                self._failed(f"{exc}", QUOTA_BACKOFF, "quota")
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self._requeue(batch)
                await self._disconnect()
                self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
                self._failed(f"server unreachable: {exc or type(exc).__name__}", self._backoff)
            except RemoteError as exc:
                if exc.transient:
                    self._requeue(batch)
                    self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
                    self._failed(str(exc), self._backoff)
                else:  # e.g. a corrupt local chunk the server refused: retrying cannot help
                    self._failed(f"{exc} (batch of {len(batch)} chunks dropped)", 0.0)
            except DitsError as exc:
                self._requeue(batch)
                await self._disconnect()
                self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
                self._failed(str(exc), self._backoff)
            finally:
                self._inflight -= 1

    def _failed(self, message: str, backoff: float, reason: str = "backoff") -> None:
        self.figures.failures += 1
        self.figures.last_error = message
        log.warning("upload failed: %s; retrying in %.0f s", message, backoff)
        if backoff > 0:
            self.hold(reason, backoff)

    def _take_batch(self) -> list[tuple[Any, int, ObjectId, int]]:
        batch: list[tuple[Any, int, ObjectId, int]] = []
        size = 0
        while self._heap and size < BATCH_BYTES:
            item = heapq.heappop(self._heap)
            self._queued.discard(item[2])
            batch.append(item)
            size += item[3]
        self.figures.chunks_queued -= len(batch)
        self.figures.bytes_queued -= size
        return batch

    def _requeue(self, batch: list[tuple[Any, int, ObjectId, int]]) -> None:
        for item in batch:
            if item[2] not in self._queued:
                self._queued.add(item[2])
                heapq.heappush(self._heap, item)
                self.figures.chunks_queued += 1
                self.figures.bytes_queued += item[3]

    async def _connect(self) -> Any:
        async with self._session_lock:
            if self._session is None:
                from dits.net.client import open_session

                assert self.spec is not None
                self._session = await open_session(self.spec, known_hosts=self.known_hosts)
            return self._session

    async def _disconnect(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                await session.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                log.debug("closing a broken session failed", exc_info=True)

    async def _upload(self, batch: list[tuple[Any, int, ObjectId, int]]) -> None:
        now = self.clock()
        sizes = {oid: size for _, _, oid, size in batch}
        ids = list(sizes)
        known = self.cache.on_server(self.scope, ids, now)
        todo = [oid for oid, on in zip(ids, known, strict=True) if not on]
        self._skipped(
            len(ids) - len(todo), sum(sizes[o] for o in ids) - sum(sizes[o] for o in todo)
        )
        if not todo:
            return
        session = await self._connect()
        present = await session.have(BlobKind.CHUNK, todo)
        if present:
            self.cache.mark_on_server(self.scope, present, now + self.chunk_ttl)
            self._skipped(len(present), sum(sizes[o] for o in present))
        send = [oid for oid in todo if oid not in present]
        if not send:
            return
        local = await asyncio.to_thread(self.repo.chunks.has_many, send)
        items = [(oid, sizes[oid]) for oid in send if oid in local]  # gc'd meanwhile: skip
        if not items:
            return
        engine = StagingEngine(
            self.staging_config,
            max_streams=1,
            monitor=self.monitor,
            transport_stats=session.conn.stats,
        )
        msgs: list[StagedChunk] = []

        async def put(batch: list[StagedChunk], pace: Any) -> None:
            chunks = [PutChunk(c.id, c.encoding, c.plain_size, c.payload) for c in batch]
            await session.put_speculative(chunks, pace=self.bucket.take)
            msgs.extend(batch)

        probed = self.repo.config.get("core.compression") is not False
        stager = StoredChunkStager(self.repo.chunks, raw_was_probed=probed)
        stats = await engine.run(items, stager, put)
        self._add_staging(stats)
        sent = [m.id for m in msgs]
        self.cache.mark_on_server(self.scope, sent, self.clock() + self.chunk_ttl)
        nbytes = sum(sizes[o] for o in sent)
        self._acked.append((time.monotonic(), nbytes))
        self.figures.chunks_uploaded += len(sent)
        self.figures.bytes_uploaded += nbytes
        self.cache.add_counters(chunks_uploaded=len(sent), bytes_uploaded=nbytes)
        if self.on_uploaded is not None:
            self.on_uploaded(len(sent), nbytes)

    def _add_staging(self, stats: StagingStats) -> None:
        """Fold one batch's staging figures into the agent's running totals."""
        total = self.figures.staging
        doc = stats.to_json()
        for key, value in doc.items():
            if key in ("buffer_peak_bytes", "lookahead_max", "streams_max", "staging_threads"):
                total[key] = max(total.get(key, 0), value)
            elif key in ("chunks_by_class", "levels"):
                merged = total.setdefault(key, {})
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
            elif (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and (
                    key.endswith(("seconds", "bytes", "hits", "misses", "events"))
                    or key
                    in (
                        "chunks",
                        "chunks_compressed",
                        "mispredictions",
                        "buffer_allocations",
                        "buffer_reuses",
                    )
                )
            ):
                total[key] = total.get(key, 0) + value
            else:
                total[key] = value  # latest: ratios, the network estimate, limits, mode
        hits = total.get("stage_ahead_hits", 0)
        asked = hits + total.get("stage_ahead_misses", 0)
        total["stage_ahead_hit_rate"] = hits / asked if asked else None
        limit = total.get("buffer_limit_bytes", 0)
        total["buffer_utilization"] = total.get("buffer_peak_bytes", 0) / limit if limit else 0.0
        cpu = total.get("cpu_seconds", 0)
        total["decision_cpu_share"] = total.get("decision_seconds", 0) / cpu if cpu else None
        total["buffer_limit_bytes"] = doc["buffer_limit_bytes"]

    def _skipped(self, chunks: int, nbytes: int) -> None:
        if chunks:
            self.figures.chunks_skipped += chunks
            self.figures.bytes_skipped += nbytes
            if self.on_uploaded is not None:
                self.on_uploaded(0, nbytes)

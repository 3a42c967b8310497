"""The staging engine: chunks N+1..N+k are read and encoded while chunk N is on the wire.

Theory of operation
-------------------
A push (or the agent) hands the engine the chunks to send, in order, and two callables: one
that stages a chunk (read its stored form, analyse it, compress it when that pays; CPU and
disk work, run in ``max_concurrent_staging`` threads) and one that sends a batch of staged
chunks (one put request, awaited on the event loop). In between sits a bounded lookahead:

    items --> [producer] --stage in threads--> ready queue --> [sender x streams] --> wire
                 ^  waits while `lookahead` chunks are staged or on the wire, and while
                 |  the buffer pool is full (backpressure)
                 +-- lookahead and stream count follow the measurements below

Memory. Every staged byte lives in a buffer of a ``BufferPool`` whose bound is
``[staging] max_buffer_size_mb``; a buffer returns to the pool when the server has acknowledged
the put that carried it. When the machine's memory use passes
``memory_pressure_threshold`` the lookahead is halved (down to one chunk per stream).

Determinism. The engine never decides *what* the chunks are: ids and boundaries come from the
store (``dits add`` or the agent's Ingestor made them). Timing only changes the wire encoding
of a chunk (raw or zstd at some level), and the server checks every chunk against its id.

Adaptation (``enable_adaptive_sizing``), from real measurements only:

- lookahead = chunks the wire consumes while one staging round runs (predicted bandwidth x
  measured staging latency / mean wire size), plus a batch per stream, within
  [streams, staging_queue_depth];
- streams = how many puts must be in flight to keep the link busy while the server works on a
  batch: ceil(measured put latency x bandwidth / batch bytes) + 1 (one more than measured, so
  an under-driven link does not confirm its own low estimate), within [3, max streams]: with
  two, a capped 20 MB/s link carried ~17 MB/s (one put writing, one waiting on the server's
  fsync, and the estimate confirming itself), with three ~19 MB/s;
- batch bytes = a quarter second of the predicted bandwidth, within [1 MiB, 8 MiB].

What a person sees (``StagingStats``): stage-ahead hits (a sender wanted a chunk and one was
ready), seconds CPU-bound (senders waited for staging) and network-bound (staging waited for
the wire), buffer utilization, bytes saved by compression, prediction accuracy and the network
estimate.

``sequential=True`` is the classical stage-then-send path under the same memory bound (stage
until the pool is full, send it all, repeat); the benchmark compares it with the overlap.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import zstandard

from dits.core.ids import ObjectId
from dits.protocol import Encoding
from dits.staging.analysis import ContentAnalysis, ContentClass, analyze
from dits.staging.bucket import TokenBucket
from dits.staging.compression import (
    CompressionModel,
    LevelProfile,
    WireChoice,
    accuracy,
    choose,
    machine_model,
)
from dits.staging.config import StagingConfig
from dits.staging.network import NetworkEstimate, NetworkMonitor
from dits.staging.pool import BufferPool, size_class

__all__ = [
    "ChunkStager",
    "StagedChunk",
    "StagingEngine",
    "StagingStats",
    "StoredChunkStager",
]

MiB = 1 << 20
MIN_BATCH = 1 * MiB
MIN_STREAMS = 3  # puts in flight at least (module docstring, "streams")
MAX_BATCH = 8 * MiB
BATCH_SECONDS = 0.25
"""A put carries about this much time of the predicted bandwidth (fewer round trips on a fast
link, sooner acknowledgements on a slow one)."""
ENTROPY_EVERY = 64
"""Shannon entropy is measured on one chunk in this many (its numpy histogram costs more than
the zstd probe that makes the decision); the figure is reported, never used to decide."""
AT_REST_LEVEL = 3
"""The zstd level ``dits add`` stores compressible chunks at (``dits.store``)."""
KEEP_MAX_RATIO = 0.95
ADAPT_INTERVAL = 0.02
"""Seconds between two refreshes of the bandwidth-driven sizes (lookahead, streams, batch)."""
MEMORY_INTERVAL = 0.25
"""Seconds between two reads of the machine's memory use."""
RECORD_OVERHEAD = 64
"""Pack record header bytes read along with a chunk's stored form."""
MAX_RECORD = 2 * MiB
"""Room kept per staging thread for the chunk it is encoding (media chunks are at most 1 MiB)."""


@dataclass
class StagedChunk:
    """One chunk ready for the wire: its id, wire encoding and bytes (in a pool buffer)."""

    id: ObjectId
    encoding: Encoding
    plain_size: int
    payload: memoryview
    buffers: list[bytearray] = field(default_factory=list)
    analysis: ContentAnalysis | None = None
    choice: WireChoice | None = None
    actual_ratio: float | None = None
    fallback: bool = False
    stage_seconds: float = 0.0
    decision_seconds: float = 0.0

    @property
    def wire_size(self) -> int:
        return self.payload.nbytes


class ChunkStager(Protocol):
    """Stages one chunk: runs in a staging thread (``StagingContext`` gives pool and policy)."""

    def __call__(self, ctx: StagingContext, oid: ObjectId, plain_size: int) -> StagedChunk: ...


Sender = Callable[[list[StagedChunk], Callable[[int], Awaitable[None]] | None], Awaitable[Any]]
"""Sends a batch as one put request; the second argument paces it (``--limit-rate``)."""


@dataclass
class StagingStats:
    """Figures of one staged upload (``push --stats``, ``--json``)."""

    mode: str = "pipelined"
    chunks: int = 0
    plain_bytes: int = 0
    wire_bytes: int = 0
    bytes_saved_by_compression: int = 0
    chunks_compressed: int = 0
    chunks_by_class: dict[str, int] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)
    mispredictions: int = 0
    prediction_accuracy: float | None = None
    mean_entropy: float | None = None
    stage_ahead_hits: int = 0
    stage_ahead_misses: int = 0
    cpu_bound_seconds: float = 0.0
    network_bound_seconds: float = 0.0
    seconds: float = 0.0
    staging_seconds: float = 0.0
    decision_seconds: float = 0.0
    cpu_seconds: float = 0.0
    buffer_limit_bytes: int = 0
    buffer_peak_bytes: int = 0
    buffer_allocations: int = 0
    buffer_reuses: int = 0
    lookahead_min: int = 0
    lookahead_max: int = 0
    streams_max: int = 0
    staging_threads: int = 0
    memory_pressure_events: int = 0
    process_peak_rss: int | None = None  # this process's VmHWM when the run ended (Linux)
    network: dict[str, Any] = field(default_factory=dict)
    _accuracy_sum: float = 0.0
    _accuracy_n: int = 0
    _entropy_sum: float = 0.0
    _entropy_n: int = 0

    @property
    def stage_ahead_hit_rate(self) -> float | None:
        asked = self.stage_ahead_hits + self.stage_ahead_misses
        return self.stage_ahead_hits / asked if asked else None

    @property
    def buffer_utilization(self) -> float:
        return self.buffer_peak_bytes / self.buffer_limit_bytes if self.buffer_limit_bytes else 0.0

    @property
    def decision_cpu_share(self) -> float | None:
        """Fraction of this process's CPU time spent deciding how to encode chunks."""
        return self.decision_seconds / self.cpu_seconds if self.cpu_seconds > 0 else None

    def count(self, chunk: StagedChunk) -> None:
        self.chunks += 1
        self.plain_bytes += chunk.plain_size
        self.wire_bytes += chunk.wire_size
        self.staging_seconds += chunk.stage_seconds
        self.decision_seconds += chunk.decision_seconds
        if chunk.encoding is Encoding.ZSTD:
            self.chunks_compressed += 1
            self.bytes_saved_by_compression += chunk.plain_size - chunk.wire_size
        if chunk.fallback:
            self.mispredictions += 1
        a = chunk.analysis
        if a is not None:
            key = a.content_class.value
            self.chunks_by_class[key] = self.chunks_by_class.get(key, 0) + 1
            if a.entropy is not None:
                self._entropy_sum += a.entropy
                self._entropy_n += 1
                self.mean_entropy = self._entropy_sum / self._entropy_n
        c = chunk.choice
        if c is not None:
            level = "as stored" if c.level is None and chunk.encoding is Encoding.ZSTD else None
            name = level or ("raw" if c.level is None else f"zstd-{c.level}")
            self.levels[name] = self.levels.get(name, 0) + 1
            if chunk.actual_ratio is not None and c.level is not None:
                self._accuracy_sum += accuracy(c.predicted_ratio, chunk.actual_ratio)
                self._accuracy_n += 1
                self.prediction_accuracy = self._accuracy_sum / self._accuracy_n

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        out["stage_ahead_hit_rate"] = self.stage_ahead_hit_rate
        out["buffer_utilization"] = self.buffer_utilization
        out["decision_cpu_share"] = self.decision_cpu_share
        return out


class StagingContext:
    """What a staging thread needs: the pool, the policy and this machine's codecs."""

    def __init__(
        self,
        config: StagingConfig,
        pool: BufferPool,
        model: CompressionModel | Callable[[], CompressionModel],
        bandwidth: Callable[[], float | None],
        workers: int,
    ) -> None:
        self.config = config
        self.pool = pool
        self._model = model
        self._bandwidth = bandwidth
        self.workers = workers
        self.overlap = True  # the pipelined engine; sequential staging sets False
        self._local = threading.local()
        self._counter = 0
        self._lock = threading.Lock()
        self._observed: dict[int, float] = {}  # level -> measured plain bytes/s per thread
        self._effective: CompressionModel | None = None

    @property
    def model(self) -> CompressionModel:
        """This machine's compression speeds, measured on first need (never for a push of
        incompressible video, whose chunks the 512-byte probe settles)."""
        if not isinstance(self._model, CompressionModel):
            self._model = self._model()
        return self._model

    def codecs(self) -> tuple[dict[int, zstandard.ZstdCompressor], zstandard.ZstdDecompressor]:
        """This thread's compressors (by level) and decompressor: zstd objects are not
        thread-safe, and making one per chunk would cost more than the decision."""
        local = self._local
        if not hasattr(local, "compressors"):
            local.compressors = {}
            local.decompressor = zstandard.ZstdDecompressor()
        return local.compressors, local.decompressor

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        compressors, _ = self.codecs()
        found = compressors.get(level)
        if found is None:
            found = zstandard.ZstdCompressor(
                level=level, write_checksum=False, write_content_size=True
            )
            compressors[level] = found
        return found

    def record_speed(self, level: int, nbytes: int, seconds: float) -> None:
        """What compressing ``nbytes`` at ``level`` just cost, measured around the call.

        Wall time, on purpose: it includes the other threads and processes competing for
        the cores (the server hashing on the same machine, the event loop sending), which the
        calibration on an idle machine does not see."""
        if seconds <= 0 or nbytes < 4096:
            return
        speed = nbytes / seconds
        with self._lock:
            old = self._observed.get(level)
            self._observed[level] = speed if old is None else 0.8 * old + 0.2 * speed
            self._effective = None

    def effective_model(self) -> CompressionModel:
        """The calibrated model with measured speeds where levels were used; unused levels are
        scaled by how much slower the used ones run here and now than on calibration."""
        model = self._effective
        if model is not None:
            return model
        base = self.model
        with self._lock:
            observed = dict(self._observed)
        known = [observed[p.level] / p.speed for p in base.levels if p.level in observed]
        factor = sorted(known)[len(known) // 2] if known else 1.0
        levels = tuple(
            LevelProfile(p.level, observed.get(p.level, p.speed * factor), p.ratio_scale)
            for p in base.levels
        )
        model = CompressionModel(levels, base.decompress_speed)
        self._effective = model
        return model

    def measure_entropy(self) -> bool:
        self._counter += 1  # a racy counter only thins the sample; it decides nothing
        return self._counter % ENTROPY_EVERY == 1

    def decide(self, analysis: ContentAnalysis, stored_ratio: float | None) -> WireChoice:
        return choose(
            self.effective_model(),
            analysis,
            bandwidth=self._bandwidth(),
            workers=self.workers,
            stored_ratio=stored_ratio,
            overlap=self.overlap,
        )


class StoredChunkStager:
    """Stages chunks from the local store: the at-rest form, re-encoded when that pays.

    Reads each record straight into a pool buffer (one ``preadv`` for pack stores). A RAW
    chunk is probed (``analyze``) and compressed when the measured link makes it pay; a zstd
    chunk is sent as stored, or recompressed at a higher level when the link is slow enough.

    ``raw_was_probed``: the store compresses at rest (``core.compression``), so a chunk stored
    RAW already failed the same 512-byte zstd probe, or compressed by less than 5 % as a whole,
    when it was added. It goes as it is without being analysed again: compressed video, most
    of what a push moves, then costs no decision at all.
    """

    def __init__(self, store: Any, *, raw_was_probed: bool = False) -> None:
        self._store = store
        self._raw_was_probed = raw_was_probed
        self._read_into = getattr(store, "read_record_into", None)
        self._read_ahead = getattr(store, "read_ahead", None)
        self._get_stored = getattr(store, "get_stored", None)

    def __call__(self, ctx: StagingContext, oid: ObjectId, plain_size: int) -> StagedChunk:
        started = time.perf_counter()
        buf, stored = self._read(ctx.pool, oid)
        chunk = StagedChunk(oid, Encoding(stored[0]), plain_size, stored[1:], [buf])
        if not ctx.config.enable_content_analysis:
            pass
        elif self._raw_was_probed and chunk.encoding is Encoding.RAW:
            chunk.analysis, chunk.choice = _PROBED_AT_REST, _INCOMPRESSIBLE
        else:
            _encode_for_wire(ctx, chunk)
        chunk.stage_seconds = time.perf_counter() - started
        return chunk

    def _read(self, pool: BufferPool, oid: ObjectId) -> tuple[bytearray, memoryview]:
        if self._read_into is not None:
            where = self._store.locate(oid)
            if self._read_ahead is not None:
                self._read_ahead(where)  # packs written by direct I/O are not in the cache
            buf = pool.acquire(where.data_offset - where.record_offset + where.stored_size)
            try:
                record, stored, _ = self._read_into(oid, memoryview(buf), where)
            except BaseException:
                pool.release(buf)
                raise
            return buf, memoryview(buf)[record - stored : record]
        if self._get_stored is not None:
            data, _ = self._get_stored(oid, verify=False)
        else:
            plain = self._store.get(oid)
            data = b"\x00" + plain
        buf = pool.acquire(len(data))
        buf[: len(data)] = data
        return buf, memoryview(buf)[: len(data)]


_INCOMPRESSIBLE = WireChoice(None, 1.0, 0.0, 0.0, "incompressible")
_PROBED_AT_REST = ContentAnalysis(ContentClass.RANDOM, 1.0, None, 0)


def _encode_for_wire(ctx: StagingContext, chunk: StagedChunk) -> None:
    """Pick the chunk's wire encoding (see ``dits.staging.compression.choose``) and apply it."""
    t0 = time.thread_time()  # CPU time: a wall clock would also count waiting for the GIL
    if chunk.encoding is Encoding.RAW:
        analysis = analyze(
            chunk.payload,
            window=ctx.config.content_analysis_window,
            measure_entropy=ctx.measure_entropy(),
        )
        # Compressed video, most of what dits moves: no model, no bandwidth, one shared answer.
        random = analysis.content_class is ContentClass.RANDOM
        choice = _INCOMPRESSIBLE if random else ctx.decide(analysis, None)
    else:
        stored_ratio = chunk.payload.nbytes / max(chunk.plain_size, 1)
        # The plain bytes are not at hand: predict level 1 from the at-rest level's ratio.
        scale = ctx.model.ratio_scale(AT_REST_LEVEL)
        predicted = min(1.0, stored_ratio / scale) if scale > 0 else stored_ratio
        analysis = ContentAnalysis(ContentClass.STRUCTURED, predicted, None, 0)
        choice = ctx.decide(analysis, stored_ratio)
    chunk.analysis, chunk.choice = analysis, choice
    chunk.decision_seconds = time.thread_time() - t0
    if choice.level is None:
        return
    plain = chunk.payload
    if chunk.encoding is Encoding.ZSTD:
        _, decompressor = ctx.codecs()
        plain = memoryview(decompressor.decompress(plain, max_output_size=chunk.plain_size))
    bound = chunk.plain_size + (chunk.plain_size >> 7) + 4096  # above ZSTD_compressBound
    out = ctx.pool.acquire(bound)
    started = time.perf_counter()
    try:
        frame = ctx.compressor(choice.level).compress(plain)
    except BaseException:
        ctx.pool.release(out)
        raise
    ctx.record_speed(choice.level, chunk.plain_size, time.perf_counter() - started)
    ratio = len(frame) / max(chunk.plain_size, 1)
    chunk.actual_ratio = ratio
    wire_now = chunk.payload.nbytes / max(chunk.plain_size, 1)
    if ratio > KEEP_MAX_RATIO * wire_now:
        # The prediction was wrong (the sample compressed, the chunk does not): keep what we
        # had. Counted, so "prediction accuracy" shows it.
        ctx.pool.release(out)
        chunk.fallback = True
        return
    out[: len(frame)] = frame
    for b in chunk.buffers:
        ctx.pool.release(b)
    chunk.buffers = [out]
    chunk.encoding = Encoding.ZSTD
    chunk.payload = memoryview(out)[: len(frame)]


MODEL_MAX_AGE = 30 * 86400.0


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dits"


def cached_machine_model(cache_dir: Path | None = None) -> CompressionModel:
    """``machine_model()``, kept for 30 days in ``~/.cache/dits/zstd-model.json``.

    Calibration costs ~0.3-1 s (level 16 is slow), too much to pay on every push; the speeds
    of one machine with one zstd build do not change. A missing, stale, foreign (other zstd
    version, CPU or core count) or unreadable file is simply measured again."""
    path = (cache_dir or _cache_dir()) / "zstd-model.json"
    key = f"zstd {zstandard.__version__} {platform.machine()} {os.cpu_count()}"
    try:
        doc = json.loads(path.read_text())
        if doc["key"] == key and 0 <= time.time() - doc["measured_at"] < MODEL_MAX_AGE:
            levels = tuple(LevelProfile(**p) for p in doc["levels"])
            return CompressionModel(levels, float(doc["decompress_speed"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    model = machine_model()
    doc = {
        "key": key,
        "measured_at": time.time(),
        "levels": [p.__dict__ for p in model.levels],
        "decompress_speed": model.decompress_speed,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time
    return model


def peak_rss() -> int | None:
    """This process's peak resident set (VmHWM) in bytes; None where /proc is not Linux's.

    Not ``ru_maxrss``: for a process started by fork + exec that also counts the parent's pages
    before the exec."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_in_use() -> float:
    """The fraction of this machine's memory in use (psutil)."""
    return float(psutil.virtual_memory().percent) / 100.0


class StagingEngine:
    """Runs one staged upload; see the module docstring.

    Args:
        config: the ``[staging]`` settings.
        max_streams: the most puts in flight at once (the server's stream limit).
        model: this machine's compression speeds (default: measured once per process).
        monitor: the network estimate (shared with whoever reads ``status``).
        limit_rate: bytes/s the upload may use (0 = unlimited): ``push --limit-rate``.
        transport_stats: the connection's figures (RTT, packets sent and lost) when known.
        memory_probe: fraction of memory in use (default psutil); injectable for tests.
        sequential: stage-then-send instead of overlapping (for comparison).
        fixed_bandwidth: decide as if the link ran at this many bytes/s, whatever is measured
            (the benchmark's staging-only run).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        config: StagingConfig,
        *,
        max_streams: int = 4,
        model: CompressionModel | None = None,
        monitor: NetworkMonitor | None = None,
        limit_rate: int = 0,
        transport_stats: Callable[[], dict[str, Any]] | None = None,
        memory_probe: Callable[[], float] = memory_in_use,
        sequential: bool = False,
        fixed_bandwidth: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.max_streams = max(1, max_streams)
        self._model: CompressionModel | None = model
        self.monitor = monitor or NetworkMonitor(
            window=config.network_prediction_window, predict=config.enable_network_prediction
        )
        self.bucket = (
            TokenBucket(limit_rate, burst=min(256 << 10, limit_rate)) if limit_rate else None
        )
        self._transport_stats = transport_stats
        self._memory_probe = memory_probe
        self.sequential = sequential
        self._fixed_bandwidth = fixed_bandwidth
        self._clock = clock
        self._bandwidth_now: float | None = None
        # Default: one core is left to the event loop, whose QUIC packets (encryption,
        # pacing) must never wait behind compression; the rest stage.
        threads = config.max_concurrent_staging or (psutil.cpu_count() or 2) - 1
        self.threads = max(1, threads)
        self.stats = StagingStats(
            mode="sequential" if sequential else "pipelined",
            buffer_limit_bytes=config.max_buffer_bytes,
            staging_threads=self.threads,
        )
        self.pool = BufferPool(config.max_buffer_bytes)
        self._stage_latency: float | None = None
        self._put_latency: float | None = None
        self._mean_wire = 256 << 10
        self._pressure = False
        self._adapted_at = -math.inf
        self._memory_at = -math.inf
        self._in_flight = 0
        self._streams = min(MIN_STREAMS, self.max_streams)
        self._lookahead = min(config.staging_queue_depth, max(2 * self._streams, 2))
        self.stats.lookahead_min = self.stats.lookahead_max = self._lookahead
        self._bandwidth_now = self._measure_bandwidth()

    # -- measurements and adaptation --------------------------------------------------------

    def estimate(self) -> NetworkEstimate:
        return self.monitor.estimate(self._clock())

    def _bandwidth(self) -> float | None:
        """The rate decisions use: refreshed on the event loop (``_adapt``), read by staging
        threads as a plain attribute (the monitor is not thread-safe, and its trend fit costs
        more than a decision should)."""
        return self._bandwidth_now

    def _measure_bandwidth(self) -> float | None:
        if self._fixed_bandwidth is not None:
            return self._fixed_bandwidth
        est = self.estimate()
        rate = est.predicted if est.predicted is not None else est.throughput
        if self.bucket is not None and self.bucket.rate:
            rate = min(rate, float(self.bucket.rate)) if rate else float(self.bucket.rate)
        return rate

    def _batch_bytes(self) -> int:
        if not self.config.enable_adaptive_sizing:
            return MAX_BATCH
        bw = self._bandwidth()
        if not bw:
            return MIN_BATCH  # small first puts: the first acknowledgements measure the link
        # At most a slice of the network monitor's window: an acknowledgement per slice keeps
        # the estimate fed (a put in flight for longer reads as a stall).
        seconds = min(BATCH_SECONDS, self.config.network_prediction_window / 8)
        return int(min(MAX_BATCH, max(MIN_BATCH, bw * seconds)))

    def _adapt(self) -> None:
        # Runs on the event loop before each chunk is staged; the estimate (~10 µs) and the
        # memory probe (/proc/meminfo, ~45 µs) are refreshed at most every ADAPT_INTERVAL and
        # MEMORY_INTERVAL, not per chunk (thousands per second on a fast link).
        now = self._clock()
        if now - self._adapted_at < ADAPT_INTERVAL:
            return
        self._adapted_at = now
        self._bandwidth_now = self._measure_bandwidth()
        cfg = self.config
        if now - self._memory_at >= MEMORY_INTERVAL:
            self._memory_at = now
            if self._memory_probe() > cfg.memory_pressure_threshold:
                if not self._pressure:
                    self.stats.memory_pressure_events += 1
                self._pressure = True
            else:
                self._pressure = False
        if not cfg.enable_adaptive_sizing:
            self._streams = self.max_streams
            depth = cfg.staging_queue_depth
        else:
            bw = self._bandwidth()
            batch = self._batch_bytes()
            if bw and self._put_latency:
                # Puts in flight needed so that one is always writing while the others wait
                # for the server's answer, plus one: the estimate is our own throughput, and
                # an under-driven link would otherwise confirm itself.
                streams = math.ceil(self._put_latency * bw / batch) + 1
                self._streams = max(
                    min(MIN_STREAMS, self.max_streams), min(self.max_streams, streams)
                )
            per_batch = max(1, batch // max(self._mean_wire, 1))
            depth = self._streams * per_batch
            if bw and self._stage_latency:
                depth += math.ceil(bw * self._stage_latency / max(self._mean_wire, 1))
            depth = max(self._streams, min(cfg.staging_queue_depth, depth))
        if self._pressure:
            depth = max(self._streams, depth // 2)
        self._lookahead = depth
        self.stats.lookahead_min = min(self.stats.lookahead_min, depth)
        self.stats.lookahead_max = max(self.stats.lookahead_max, depth)
        self.stats.streams_max = max(self.stats.streams_max, self._streams)

    def _record_transport(self, now: float) -> None:
        if self._transport_stats is None:
            return
        try:
            figures = self._transport_stats()
        except Exception:  # figures are best effort; a closed connection has none
            return
        rtt = figures.get("smoothed_rtt", figures.get("rtt"))  # QUIC's name, TCP_INFO's
        self.monitor.record_transport(
            now,
            rtt=float(rtt) if rtt is not None else None,
            packets_sent=figures.get("packets_sent"),
            packets_lost=figures.get("lost_packets"),
        )

    # -- the run ------------------------------------------------------------------------------

    async def run(
        self, items: Sequence[tuple[ObjectId, int]], stage: ChunkStager, send: Sender
    ) -> StagingStats:
        """Stage and send ``items`` (chunk id, plain size); return the figures.

        Cancellation (Ctrl-C, a dropped connection) stops the staging threads after the chunk
        they are on and returns every buffer; nothing was committed on the server, which only
        acts on the ref update that follows a complete upload.
        """
        started = self._clock()
        cpu0 = time.process_time()
        self._bandwidth_now = self._measure_bandwidth()
        ctx = StagingContext(
            self.config,
            self.pool,
            self._model or cached_machine_model,
            self._bandwidth,
            self.threads,
        )
        ctx.overlap = not self.sequential
        executor = ThreadPoolExecutor(self.threads, thread_name_prefix="dits-staging")
        try:
            if self.sequential:
                await self._run_sequential(items, stage, send, ctx, executor)
            else:
                await self._run_pipelined(items, stage, send, ctx, executor)
        finally:
            self.pool.close()
            executor.shutdown(wait=True, cancel_futures=True)
            self.stats.seconds = self._clock() - started
            self.stats.cpu_seconds = time.process_time() - cpu0
            self.stats.buffer_peak_bytes = self.pool.peak_bytes
            self.stats.buffer_allocations = self.pool.allocations
            self.stats.buffer_reuses = self.pool.reuses
            self.stats.network = self.estimate().to_json()
            self.stats.process_peak_rss = peak_rss()
        return self.stats

    async def _stage_one(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        stage: ChunkStager,
        ctx: StagingContext,
        oid: ObjectId,
        size: int,
    ) -> StagedChunk:
        chunk: StagedChunk = await loop.run_in_executor(executor, stage, ctx, oid, size)
        lat = chunk.stage_seconds
        self._stage_latency = (
            lat if self._stage_latency is None else 0.8 * self._stage_latency + 0.2 * lat
        )
        self._mean_wire = int(0.9 * self._mean_wire + 0.1 * max(chunk.wire_size, 1))
        return chunk

    async def _run_pipelined(
        self,
        items: Sequence[tuple[ObjectId, int]],
        stage: ChunkStager,
        send: Sender,
        ctx: StagingContext,
        executor: ThreadPoolExecutor,
    ) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[StagedChunk | None] = asyncio.Queue()
        outstanding = 0  # staged or being staged, not yet acknowledged by the server
        sizes: dict[ObjectId, int] = {}
        changed = asyncio.Event()
        producer_done = False
        staging: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []

        async def stage_into_queue(oid: ObjectId, size: int) -> None:
            try:
                ready.put_nowait(await self._stage_one(loop, executor, stage, ctx, oid, size))
            except BaseException as exc:
                failure.append(exc)
                ready.put_nowait(None)

        # Bytes the staged chunks may take, leaving room for a compressed copy in flight per
        # staging thread: the producer waits here (measured) rather than the threads in the pool.
        byte_budget = max(self.pool.limit - self.threads * 2 * MAX_RECORD, MAX_RECORD)
        outstanding_bytes = 0

        def full(size: int) -> bool:
            if outstanding == 0:
                return False
            return outstanding >= self._lookahead or outstanding_bytes + size > byte_budget

        async def produce() -> None:
            nonlocal outstanding, outstanding_bytes, producer_done
            for oid, size in items:
                self._adapt()
                need = size_class(size + RECORD_OVERHEAD)
                if full(need):
                    t0 = self._clock()
                    while full(need) and not failure:
                        changed.clear()
                        await changed.wait()
                        self._adapt()
                    self.stats.network_bound_seconds += self._clock() - t0
                if failure:
                    break
                outstanding += 1
                outstanding_bytes += need
                sizes[oid] = need
                task = asyncio.ensure_future(stage_into_queue(oid, size))
                staging.add(task)
                task.add_done_callback(staging.discard)
            if staging:  # the stop signals go after the last staged chunk, never before it
                await asyncio.gather(*list(staging), return_exceptions=True)
            producer_done = True
            changed.set()
            for _ in range(self.max_streams):
                ready.put_nowait(None)

        async def sender(index: int) -> None:
            nonlocal outstanding, outstanding_bytes
            while True:
                while index >= self._streams and not producer_done and not failure:
                    changed.clear()  # parked: the measurements want fewer streams
                    await changed.wait()
                if ready.empty():
                    self.stats.stage_ahead_misses += 1
                    now = self._clock()
                    first = await ready.get()
                    self.stats.cpu_bound_seconds += self._clock() - now
                else:
                    self.stats.stage_ahead_hits += 1
                    first = ready.get_nowait()
                if first is None:
                    if failure:
                        raise failure[0]
                    return
                batch, size, limit = [first], first.wire_size, self._batch_bytes()
                while size < limit and not ready.empty():
                    nxt = ready.get_nowait()
                    if nxt is None:
                        ready.put_nowait(None)  # another sender's stop signal
                        break
                    batch.append(nxt)
                    size += nxt.wire_size
                await self._send_batch(batch, send)
                outstanding -= len(batch)
                outstanding_bytes -= sum(sizes.pop(c.id, 0) for c in batch)
                changed.set()

        producer = asyncio.ensure_future(produce())
        senders = [asyncio.ensure_future(sender(i)) for i in range(self.max_streams)]
        try:
            await asyncio.gather(producer, *senders)
        except BaseException:
            for task in (producer, *senders, *staging):
                task.cancel()
            await asyncio.gather(producer, *senders, *staging, return_exceptions=True)
            raise
        finally:
            while not ready.empty():
                left = ready.get_nowait()
                if left is not None:
                    self._release(left)

    async def _run_sequential(
        self,
        items: Sequence[tuple[ObjectId, int]],
        stage: ChunkStager,
        send: Sender,
        ctx: StagingContext,
        executor: ThreadPoolExecutor,
    ) -> None:
        loop = asyncio.get_running_loop()
        i = 0
        while i < len(items):
            # Stage a round: as many chunks as the memory bound holds (half of it, so the
            # round never blocks on its own buffers), then send the round.
            budget = self.config.max_buffer_bytes // 2
            round_items: list[tuple[ObjectId, int]] = []
            while i < len(items) and (budget > 0 or not round_items):
                round_items.append(items[i])
                budget -= items[i][1] + 1024
                i += 1
            t0 = self._clock()
            staged: list[StagedChunk] = []
            for start in range(0, len(round_items), self.threads * 4):
                part = round_items[start : start + self.threads * 4]
                staged += await asyncio.gather(
                    *(self._stage_one(loop, executor, stage, ctx, o, n) for o, n in part)
                )
            self.stats.cpu_bound_seconds += self._clock() - t0
            t1 = self._clock()
            batch: list[StagedChunk] = []
            size = 0
            for chunk in staged:
                batch.append(chunk)
                size += chunk.wire_size
                if size >= self._batch_bytes():
                    await self._send_batch(batch, send)
                    batch, size = [], 0
            if batch:
                await self._send_batch(batch, send)
            self.stats.network_bound_seconds += self._clock() - t1

    async def _send_batch(self, batch: list[StagedChunk], send: Sender) -> None:
        pace = self._pace if self.bucket is not None else None
        now = self._clock()
        if self._in_flight == 0:
            self.monitor.mark_busy(now)  # only time with something on the wire counts
        self._in_flight += 1
        try:
            await send(batch, pace)
        finally:
            self._in_flight -= 1
            for chunk in batch:
                self._release(chunk)
        done = self._clock()
        if self._in_flight == 0:
            self.monitor.mark_idle(done)
        lat = done - now
        self._put_latency = (
            lat if self._put_latency is None else 0.7 * self._put_latency + 0.3 * lat
        )
        self.monitor.record_acked(done, sum(c.wire_size for c in batch))
        self._record_transport(done)
        self._bandwidth_now = self._measure_bandwidth()
        for chunk in batch:
            self.stats.count(chunk)

    async def _pace(self, nbytes: int) -> None:
        assert self.bucket is not None
        await self.bucket.take(nbytes)

    def _release(self, chunk: StagedChunk) -> None:
        for buf in chunk.buffers:
            self.pool.release(buf)
        chunk.buffers = []

"""What ``speculative sync`` and ``speculative coverage`` do, in the foreground.

Both work with or without the agent: they share its persistent cache (LMDB allows several
processes), so a sync's uploads count for the agent and the agent's for coverage.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dits.core.chunking import choose_profile
from dits.core.ids import ObjectId
from dits.core.objects import Manifest
from dits.errors import DitsError
from dits.ops.ingest import Ingestor
from dits.protocol import BlobKind
from dits.remotes import KnownHosts, RemoteSpec, get_remote
from dits.repository import Repository
from dits.speculative.config import SpeculativeConfig
from dits.speculative.control import AgentPaths
from dits.speculative.stager import Stager
from dits.speculative.uploader import Uploader
from dits.store.speculative import SpeculativeCache, server_scope

__all__ = ["CoverageReport", "FileCoverage", "SyncResult", "coverage", "sync_folder"]

Progress = Callable[[int], None]


@dataclass
class SyncResult:
    """Figures of one ``speculative sync`` (``--json``)."""

    folder: str
    files: int = 0
    bytes: int = 0
    chunks: int = 0
    chunks_uploaded: int = 0
    bytes_uploaded: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def remote_spec(repo: Repository, remote: str | None) -> RemoteSpec:
    name = remote or repo.config.get("speculative.remote") or None
    return get_remote(repo.config, name)


def _files_under(folder: Path, cfg: SpeculativeConfig) -> Iterator[Path]:
    ignored = set(cfg.ignore_dirs)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in ignored)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def sync_folder(
    repo: Repository,
    folder: Path,
    remote: str | None,
    *,
    max_bandwidth: int = 0,
    on_total: Progress | None = None,
    on_bytes: Progress | None = None,
    known_hosts: KnownHosts | None = None,
) -> SyncResult:
    """Stage every file under ``folder`` into the local store and pre-upload its chunks.

    Files that cannot be read are listed in ``errors`` and skipped. Raises the remote's errors
    (unreachable server, bad token, quota) after staging: staged chunks stay in the store.
    """
    started = time.perf_counter()
    cfg = SpeculativeConfig.from_config(repo.config)
    spec = remote_spec(repo, remote)
    paths = AgentPaths(repo.dits_dir)
    paths.ensure()
    result = SyncResult(str(folder))
    files = list(_files_under(folder, cfg))
    total = sum(p.stat().st_size for p in files)
    if on_total is not None:
        on_total(2 * total)  # staging, then uploading (skipped chunks count as uploaded)
    cache = SpeculativeCache(paths.cache)
    try:
        stager = Stager(repo, cache)
        uploader = Uploader(
            repo,
            cache,
            spec,
            max_bandwidth=max_bandwidth,
            workers=cfg.workers,
            chunk_ttl=cfg.chunk_ttl,
            known_hosts=known_hosts,
        )
        if on_bytes is not None:
            uploader.on_uploaded = lambda _chunks, nbytes: on_bytes(nbytes)
        for rank, path in enumerate(files):
            try:
                staged = stager.stage_file(path)
            except DitsError as exc:
                result.errors.append(f"{path}: {exc}")
                continue
            result.files += 1
            result.bytes += staged.size
            result.chunks += len(staged.manifest.chunks)
            uploader.enqueue(((c.id, c.size) for c in staged.manifest.chunks), (rank,))
            if on_bytes is not None:
                on_bytes(staged.size)
        asyncio.run(_drain(uploader))
        figures = uploader.figures
        result.chunks_uploaded = figures.chunks_uploaded
        result.bytes_uploaded = figures.bytes_uploaded
        result.chunks_skipped = figures.chunks_skipped
    finally:
        cache.close()
    result.seconds = time.perf_counter() - started
    return result


async def _drain(uploader: Uploader) -> None:
    try:
        await uploader.drain()
    finally:
        await uploader.close()


@dataclass
class FileCoverage:
    path: str
    chunks: int
    chunks_on_server: int
    bytes: int
    bytes_remaining: int

    @property
    def percent(self) -> float:
        return 100.0 * self.chunks_on_server / self.chunks if self.chunks else 100.0


@dataclass
class CoverageReport:
    """``speculative coverage`` (``--json``)."""

    files: list[FileCoverage]
    source: str  # "server" (asked it) or "cache" (server unreachable: the agent's knowledge)
    upload_rate: float | None  # bytes/s measured by the agent, None if never measured

    @property
    def chunks(self) -> int:
        return sum(f.chunks for f in self.files)

    @property
    def chunks_on_server(self) -> int:
        return sum(f.chunks_on_server for f in self.files)

    @property
    def bytes_remaining(self) -> int:
        return sum(f.bytes_remaining for f in self.files)

    @property
    def percent(self) -> float:
        return 100.0 * self.chunks_on_server / self.chunks if self.chunks else 100.0

    @property
    def estimated_push_seconds(self) -> float | None:
        if not self.bytes_remaining:
            return 0.0
        if not self.upload_rate:
            return None
        return self.bytes_remaining / self.upload_rate

    def to_json(self) -> dict[str, object]:
        return {
            "files": [{**f.__dict__, "percent": round(f.percent, 1)} for f in self.files],
            "total_chunks": self.chunks,
            "chunks_on_server": self.chunks_on_server,
            "percent": round(self.percent, 1),
            "bytes_remaining": self.bytes_remaining,
            "upload_rate": self.upload_rate,
            "estimated_push_seconds": self.estimated_push_seconds,
            "source": self.source,
        }


def coverage(repo: Repository, files: list[Path], remote: str | None) -> CoverageReport:
    """Per file: chunks, how many the server holds for us, bytes left to send.

    A file the agent already chunked (same size, mtime and inode) is not read again; others
    are chunked without storing anything. The server is asked (Have); when it cannot be
    reached, the agent's cache answers instead and ``source`` says so.
    """
    paths = AgentPaths(repo.dits_dir)
    paths.ensure()
    cache = SpeculativeCache(paths.cache)
    try:
        manifests = [_manifest(cache, path) for path in files]
        ids = list(dict.fromkeys(c.id for m in manifests for c in m.chunks))
        source = "server"
        spec = remote_spec(repo, remote)
        try:
            present = asyncio.run(_ask_server(spec, ids))
        except (OSError, ConnectionError, asyncio.IncompleteReadError, DitsError):
            source = "cache"
            flags = cache.on_server(server_scope(str(spec.url), spec.token), ids, time.time())
            present = {oid for oid, on in zip(ids, flags, strict=True) if on}
        rate = cache.get_value("upload_rate")
    finally:
        cache.close()
    out = []
    for path, manifest in zip(files, manifests, strict=True):
        on = [c for c in manifest.chunks if c.id in present]
        out.append(
            FileCoverage(
                str(path),
                len(manifest.chunks),
                len(on),
                manifest.size,
                manifest.size - sum(c.size for c in on),
            )
        )
    return CoverageReport(out, source, rate or None)


def _manifest(cache: SpeculativeCache, path: Path) -> Manifest:
    st = path.stat()
    known = cache.manifest_for(str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if known is not None:
        return known
    with Ingestor(None, profile_for=choose_profile) as ingestor:
        manifest, _ = ingestor.ingest_file(path, path.name, st.st_size)
    return manifest


async def _ask_server(spec: RemoteSpec, ids: list[ObjectId]) -> set[ObjectId]:
    from dits.net.client import open_session

    session = await open_session(spec)
    try:
        return await session.have(BlobKind.CHUNK, ids) if ids else set()
    finally:
        await session.close()

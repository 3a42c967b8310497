"""Chunk files into the repository's local store exactly as ``dits add`` would, ahead of it.

``Stager.stage_file`` runs the same ``Ingestor`` with the same profile choice as
``dits.ops.add.stage_files``, so chunk ids and manifests are identical to what ``add`` makes
of the same bytes. It never touches the index, refs or objects and takes no repository lock
(pack appends are safe across processes), so ``dits add`` and ``commit`` run undisturbed.
Before it records the manifest in the ``SpeculativeCache`` (which lets a later ``add`` skip
reading the file: "instant add"), the chunks are made durable: a recorded manifest must never
name chunks a power loss could take back.

``GrowingFile`` chunks a file while it is still being written (a render, a capture): each
``advance`` reads what was appended since the last call and stores the chunks that are
decided, never the tail. See its docstring for what happens when the file is rewritten.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dits.core.chunking import Chunker, ChunkingProfile, choose_profile
from dits.core.ids import hash_bytes
from dits.core.objects import ChunkRef, Manifest
from dits.ops.ingest import WINDOW_SIZE, Ingestor, UnreadableFileError
from dits.repository import Repository
from dits.store.lmdb import LmdbEnvironment
from dits.store.speculative import SpeculativeCache

__all__ = ["GrowingFile", "StagedFile", "Stager", "make_chunks_durable"]

RACY_WINDOW: Final = 2.0
"""Seconds: a file modified this recently is staged but its manifest is not recorded. Within
one file-system timestamp tick a second write of the same size would keep size, mtime and
inode, and the recorded manifest would describe bytes that are gone (git's "racy clean").
This is the window for file systems that keep whole seconds (FAT keeps two); see
``racy_window_for``."""

FINE_RACY_WINDOW: Final = 0.05
"""Seconds, for file systems with sub-second timestamps: Linux stamps mtimes from its coarse
clock, one scheduler tick (1-10 ms) behind; 50 ms is several ticks."""


def racy_window_for(st: os.stat_result) -> float:
    """How old ``st``'s mtime must be before a manifest of the file can be trusted later.

    An mtime with a non-zero sub-second part comes from a file system with fine timestamps;
    a whole-second one is treated as coarse (rarely, a fine one lands exactly on a second:
    then we only wait longer than needed)."""
    return FINE_RACY_WINDOW if st.st_mtime_ns % 1_000_000_000 else RACY_WINDOW


_UNBOUNDED_SIZE: Final = 1 << 62  # "the final size, whatever it is" for profile probing


@dataclass(frozen=True)
class StagedFile:
    """What ``stage_file`` did.

    Attributes:
        path: the file's absolute path (the cache key).
        manifest: its manifest, identical to the one ``dits add`` would make.
        size: bytes read.
        new_chunks: chunks that were not in the local store before.
        new_bytes: their plain size.
        recorded: whether the manifest was recorded for instant add (False when the file was
            modified within ``RACY_WINDOW`` seconds of being read).
    """

    path: Path
    manifest: Manifest
    size: int
    new_chunks: int
    new_bytes: int
    recorded: bool = True


def _locate(repo: Repository, path: str | os.PathLike[str]) -> tuple[Path, str]:
    """The absolute path and the name ``add`` would give the Ingestor (its repository path)."""
    given = Path(path)
    if not given.is_absolute():
        return repo.root / given, given.as_posix()
    try:
        return given, given.relative_to(repo.root).as_posix()
    except ValueError:
        return given, os.fspath(given)


def make_chunks_durable(repo: Repository) -> None:
    """fsync the packs appended to and the repository's LMDB environment.

    Uses a second handle on the process's one open environment, whose ``durable()`` runs the
    packs' flush hook first (docs/store.md, "Pack files first"). In-memory repositories have
    nothing to flush.
    """
    flush = getattr(repo.chunks, "flush", None)
    if callable(flush):
        flush()
    store_dir = repo.dits_dir / "store"
    if not (store_dir / "data.mdb").exists():
        return
    env = LmdbEnvironment(store_dir)
    try:
        env.durable()
    finally:
        env.close()


class Stager:
    """Stages whole files into ``repo``'s chunk store and records them in ``cache``.

    Args:
        repo: the repository whose local store receives the chunks.
        cache: where manifests are recorded for instant add.
        racy_window: a fixed window for every file (tests); default: ``racy_window_for``.
        clock: wall-clock seconds (compared with file mtimes).
    """

    def __init__(
        self,
        repo: Repository,
        cache: SpeculativeCache,
        *,
        racy_window: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.cache = cache
        self.racy_window = racy_window
        self.clock = clock

    def racy_wait(self, st: os.stat_result) -> float:
        """Seconds until a manifest of the file as ``st`` describes it may be recorded."""
        window = self.racy_window if self.racy_window is not None else racy_window_for(st)
        return window - (self.clock() - st.st_mtime_ns / 1e9)

    def stage_file(self, path: str | os.PathLike[str]) -> StagedFile:
        """Chunk and store one complete regular file; record its manifest.

        Args:
            path: absolute, or relative to the repository root; may lie outside the
                working tree (a watched folder).

        Raises:
            UnreadableFileError: the file is missing, not a regular file, or unreadable.
            FileChangedError: it kept changing while being read (``core.max_file_reads``).
            StorageFullError: the local store ran out of space.
        """
        abs_path, name = _locate(self.repo, path)
        try:
            before = os.lstat(abs_path)
        except FileNotFoundError:
            raise UnreadableFileError(f"{name}: vanished before it was staged") from None
        except OSError as exc:
            raise UnreadableFileError(f"{name}: cannot read ({exc.strerror})") from None
        if not stat.S_ISREG(before.st_mode):
            raise UnreadableFileError(f"{name}: not a regular file")
        max_reads = int(self.repo.config.get("core.max_file_reads", 3))
        # The construction of ops/add.py's stage_files: same store, same profile choice.
        with Ingestor(self.repo.chunks, max_reads=max_reads) as ingestor:
            manifest, st = ingestor.ingest_file(abs_path, name, before.st_size)
            ingestor.flush()
            stats = ingestor.stats
        make_chunks_durable(self.repo)
        recorded = self.racy_wait(st) <= 0
        if recorded:
            self.cache.record_file(
                os.fspath(abs_path), st.st_size, st.st_mtime_ns, st.st_ino, manifest
            )
        return StagedFile(
            abs_path, manifest, manifest.size, stats.new_chunks, stats.new_bytes, recorded
        )


class GrowingFile:
    """Chunks a file that is still being appended to, as far as its cuts are decided.

    Each ``advance`` reads the bytes from the end of the last decided chunk to the current
    end of file in windows of ``window_size`` (plus the chunker's lookahead), feeds them to
    the same ``Chunker`` ``dits add`` uses, stores the decided chunks in the local store and
    returns them. The undecided tail (less than ``Chunker.lookahead`` bytes) waits for more
    data or for the final ``Stager.stage_file``. For a file that only grows, the chunks
    returned are exactly the leading chunks of the manifest ``dits add`` makes of the finished
    file (the chunker's streaming rule: cuts depend only on bytes before them plus bounded
    lookahead).

    **Profile.** ``add`` picks the profile from the name and the *final* size
    (``choose_profile``: media extensions, or 4 MiB and more, get ``media-v2``). While the
    profile could still change as the file grows (no media extension and under 4 MiB so far),
    nothing is chunked (``deferred``): such files are small and staged whole when final. A
    file crossing the threshold is chunked from offset 0 with the final profile from then on,
    so nothing chunked is ever void because of growth. Only a ``profile_for`` that is not
    monotonic in size can make a profile uncertain again after chunking began: the chunks so
    far are dropped (``restarts`` counts it) and chunking waits until the profile is certain.

    **Rewrites.** A file that shrank or was replaced (another inode) restarts from 0 too.
    Bytes rewritten in place behind the decided position (a muxer patching a header at the
    end of a recording) are not noticed: the chunks returned for them are stale, which costs
    an unneeded upload only; the final ``stage_file`` computes the true manifest.

    Chunks stored here are not made durable: nothing refers to them yet.

    Args:
        repo: the repository whose chunk store receives the chunks.
        path: absolute, or relative to the repository root.
        profile_for: the profile rule (``dits add``'s by default).
        window_size: bytes read per chunking pass.
    """

    def __init__(
        self,
        repo: Repository,
        path: str | os.PathLike[str],
        *,
        profile_for: Callable[[str, int], ChunkingProfile] = choose_profile,
        window_size: int = WINDOW_SIZE,
    ) -> None:
        self.repo = repo
        self.path, self.name = _locate(repo, path)
        self.profile_for = profile_for
        self.window_size = window_size
        self.restarts = 0
        self.deferred = False
        self._chunker: Chunker | None = None
        self._inode: int | None = None
        self._chunks: list[ChunkRef] = []

    @property
    def position(self) -> int:
        """End of the last decided chunk: every byte before it is chunked and stored."""
        return self._chunker.position if self._chunker is not None else 0

    @property
    def chunks(self) -> tuple[ChunkRef, ...]:
        """Every chunk decided since the last restart, in file order."""
        return tuple(self._chunks)

    @property
    def profile(self) -> ChunkingProfile | None:
        """The profile chunked with, None before the first chunk pass."""
        return self._chunker.profile if self._chunker is not None else None

    def advance(self) -> list[ChunkRef]:
        """Chunk and store what was appended since the last call; return the new chunks.

        Raises:
            UnreadableFileError: the file vanished, is not a regular file, or cannot be read.
            StorageFullError: the local store ran out of space.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise UnreadableFileError(f"{self.name}: vanished while being written") from None
        except OSError as exc:
            raise UnreadableFileError(f"{self.name}: cannot read ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableFileError(f"{self.name}: not a regular file")
            chunker = self._chunker_for(st)
            if chunker is None:
                return []
            return self._chunk(fd, chunker, st.st_size)
        finally:
            os.close(fd)

    def _chunker_for(self, st: os.stat_result) -> Chunker | None:
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.position):
            self._restart()
        self._inode = st.st_ino
        profile = self.profile_for(self.name, st.st_size)
        self.deferred = profile != self.profile_for(self.name, _UNBOUNDED_SIZE)
        if self.deferred:
            if self._chunker is not None:
                self._restart()  # chunked with a profile add may not pick after all
            return None
        if self._chunker is None:
            # profile == the one for any larger size: add will pick it, however large it gets.
            self._chunker = Chunker(profile)
        return self._chunker

    def _restart(self) -> None:
        self._chunker = None
        self._chunks.clear()
        self.restarts += 1

    def _chunk(self, fd: int, chunker: Chunker, size: int) -> list[ChunkRef]:
        out: list[ChunkRef] = []
        pos = chunker.position
        while pos < size:
            data = os.pread(fd, min(size - pos, self.window_size + chunker.lookahead), pos)
            if not data:
                break  # truncated since fstat; the next call restarts
            view = memoryview(data)
            cuts = chunker.cuts(view, pos, False)
            if not cuts:
                break  # fewer than lookahead bytes past pos: wait for more
            starts = [pos, *cuts[:-1]]
            views = [view[s - pos : e - pos] for s, e in zip(starts, cuts, strict=True)]
            ids = [hash_bytes(v) for v in views]
            self.repo.chunks.put_many(zip(ids, views, strict=True))
            refs = [ChunkRef(oid, len(v)) for oid, v in zip(ids, views, strict=True)]
            out.extend(refs)
            self._chunks.extend(refs)
            pos = cuts[-1]
        return out

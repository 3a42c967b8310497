"""The agent of one repository: watch, decide, stage, pre-upload.

Theory of operation
-------------------
Watchdog threads report paths that changed (``watcher.TreeWatcher``); the event loop collects
them and, four times a second, stats each one and feeds the observation to the pure
``policy.FileTracker``, which answers what to do:

* ``Grow``: the file is being written (a render in progress). Its chunks behind the last
  content-defined cut are staged now (``stager.GrowingFile``) and queued for upload; the tail
  waits.
* ``Finalize``: size and mtime have been stable for ``debounce`` seconds. The whole file is staged
  as ``dits add`` would (``stager.Stager``): already-stored chunks are not written again, the
  manifest is recorded for instant add, and any chunk not yet queued (the tail, a header the
  writer patched at the end) is queued.
* ``Restart`` (truncated or replaced) and ``Forget`` (deleted) drop what was known of the path.

Staging runs on one worker thread in priority order (working tree before watched folders before
editor caches, small project files first); uploading is ``uploader.Uploader``. The agent backs
off while files are written faster than ``active_edit_rate`` or running editors write that fast
(psutil), and resumes after ``resume_after_idle`` calm seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from dits.errors import DitsError, UsageError
from dits.repository import Repository
from dits.speculative import nle, policy
from dits.speculative.config import SpeculativeConfig
from dits.speculative.control import AgentPaths
from dits.speculative.oneshot import remote_spec
from dits.speculative.stager import GrowingFile, Stager
from dits.speculative.uploader import Uploader
from dits.speculative.watcher import TreeWatcher, WatchRoot, scan
from dits.store.lock import holder_purpose
from dits.store.speculative import SpeculativeCache

__all__ = ["Agent", "stopped_status"]

log = logging.getLogger("dits.speculative")

TICK = 0.25  # seconds between passes over the changed paths
EDITOR_SCAN = 10.0  # seconds between looks for running editors
RATE_SAVE = 5.0  # seconds between saving the measured upload rate (for coverage estimates)
COMMAND_POLL = 0.1  # seconds between looks at the repository lock while a command holds it

WORKTREE, WATCH_DIR, EDITOR_CACHE = 0, 1, 2


class Agent:
    """Everything the daemon runs for one repository."""

    def __init__(self, root: Path) -> None:
        self.repo = Repository.open(root)
        self.cfg = SpeculativeConfig.from_config(self.repo.config)
        self.paths = AgentPaths(self.repo.dits_dir)
        self.cache = SpeculativeCache(self.paths.cache)
        self.stager = Stager(self.repo, self.cache)
        try:
            spec = remote_spec(self.repo, None)
        except UsageError:
            spec = None  # no remote yet: stage locally (add gets faster), upload nothing
        self.remote = str(spec.url) if spec is not None else None
        self.uploader = Uploader(
            self.repo,
            self.cache,
            spec,
            max_bandwidth=self.cfg.max_bandwidth,
            workers=self.cfg.workers,
            chunk_ttl=self.cfg.chunk_ttl,
        )
        self.tracker = policy.FileTracker(self.cfg.debounce, self.cfg.max_tracked_files)
        self.activity = policy.ActivityMonitor(
            self.cfg.active_edit_rate, self.cfg.resume_after_idle
        )
        self.editor_meter = nle.WriteRateMeter()
        self.started = time.time()
        self.user_paused = False
        self.files_processed = 0
        self.files_failed = 0
        self.editors: list[str] = []
        self._roots: dict[Path, int] = {}
        self._changed: dict[Path, str] = {}
        self._changed_lock = threading.Lock()
        self._jobs: list[tuple[Any, int, Path, str]] = []
        self._job_kind: dict[Path, str] = {}
        self._seq = itertools.count()
        self._growing: dict[Path, GrowingFile] = {}
        self._sizes: dict[Path, int] = {}
        self._wake = asyncio.Event()
        self.command: str | None = None  # a user's dits command holding the repository lock
        self._watcher: TreeWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self.cache.close()
        self.repo.close()

    # -- control commands -------------------------------------------------------------------

    def pause(self) -> None:
        self.user_paused = True
        self.uploader.hold("paused")

    def resume(self) -> None:
        self.user_paused = False
        self.uploader.release("paused")
        self._wake.set()

    def clear(self) -> int:
        dropped = self.uploader.clear() + len(self._jobs)
        self._jobs.clear()
        self._job_kind.clear()
        return dropped

    def push_begin(self) -> None:
        from dits.speculative.uploader import PUSH_HOLD_LIMIT

        self.uploader.hold("push", PUSH_HOLD_LIMIT)

    def push_end(self) -> None:
        self.uploader.release("push")

    def status(self) -> dict[str, Any]:
        f = self.uploader.snapshot()
        reasons = list(f.holds)
        if self.user_paused and "paused" not in reasons:
            reasons.append("paused")
        return {
            "state": "PAUSED" if self.user_paused else "ACTIVE",
            "reasons": sorted(reasons),
            "yielding_to": self.command,
            "pid": os.getpid(),
            "started_at": self.started,
            "remote": self.remote,
            "max_bandwidth": self.cfg.max_bandwidth,
            "files_processed": self.files_processed,
            "files_failed": self.files_failed,
            "queue_depth": len(self._jobs),
            "tracked_files": len(self._sizes),
            "growing_files": len(self._growing),
            "chunks_queued": f.chunks_queued,
            "bytes_queued": f.bytes_queued,
            "chunks_uploaded": f.chunks_uploaded,
            "bytes_uploaded": f.bytes_uploaded,
            "chunks_skipped": f.chunks_skipped,
            "bytes_skipped": f.bytes_skipped,
            "upload_rate": f.upload_rate,
            "failures": f.failures + self.files_failed,
            "last_error": f.last_error,
            "watching": [str(p) for p in self._roots],
            "editors": self.editors,
            "staging": f.staging,
            "network": self.uploader.monitor.estimate(time.monotonic()).to_json(),
        }

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        roots = [WatchRoot(self.repo.root, WORKTREE, True)]
        roots += [WatchRoot(Path(d), WATCH_DIR, False) for d in self.cfg.watch_dirs]
        roots = [r for r in roots if r.path.is_dir()]
        self._roots = {r.path: r.priority_class for r in roots}
        self._watcher = TreeWatcher(roots, self.cfg, self._on_change)
        self._watcher.start()
        await asyncio.to_thread(self._initial_scan, roots)
        await asyncio.gather(
            self.uploader.run(stop),
            self._observe_loop(stop),
            self._stage_loop(stop),
            self._editor_loop(stop),
        )

    def _on_change(self, path: Path, kind: str) -> None:
        """Called on watchdog's thread."""
        with self._changed_lock:
            self._changed[path] = kind

    def _initial_scan(self, roots: list[WatchRoot]) -> None:
        for root in roots:
            for path in scan(root, self.cfg):
                self._on_change(path, "changed")

    async def _observe_loop(self, stop: asyncio.Event) -> None:
        last_rate_save = 0.0
        while not stop.is_set():
            now = time.time()
            with self._changed_lock:
                changed, self._changed = self._changed, {}
            written = 0
            for path, kind in changed.items():
                written += self._observe(path, kind, now)
            for decision in self.tracker.poll(now):
                self._apply(decision)
            self.activity.record(written, now)
            self._yield_to_commands()
            if self.cfg.pause_on_active_edit and self.activity.paused(now):
                self.uploader.hold("active-edit")
            else:
                self.uploader.release("active-edit")
            if now - last_rate_save > RATE_SAVE:
                rate = self.uploader.current_rate()
                if rate > 0:
                    self.cache.set_value("upload_rate", rate)
                last_rate_save = now
            await _sleep_or_stop(stop, TICK)

    def _observe(self, path: Path, kind: str, now: float) -> int:
        """Feed one path to the tracker; return the bytes it grew by (activity measure)."""
        try:
            st = path.stat() if kind != "deleted" else None
        except OSError:
            st = None
        if st is None or not path.is_file():
            self._sizes.pop(path, None)
            for decision in self.tracker.forget(path):
                self._apply(decision)
            return 0
        if st.st_size < self.cfg.min_file_size:
            return 0
        grew = max(0, st.st_size - self._sizes.get(path, st.st_size))
        self._sizes[path] = st.st_size
        for decision in self.tracker.observe(path, st.st_size, st.st_mtime_ns, st.st_ino, now):
            self._apply(decision)
        return grew

    def _yield_to_commands(self) -> bool:
        """Hold staging and uploads while a user's command (add, commit, checkout ...) holds
        the repository lock: that command does in the foreground what the agent would do in
        the background (an `add` right after a render closes reads the very file the agent
        would finalize), and sharing the cores would only make the user wait longer."""
        self.command = holder_purpose(self.repo.dits_dir / "lock")
        if self.command is not None:
            self.uploader.hold("command")
        else:
            self.uploader.release("command")
        return self.command is not None

    def _apply(self, decision: Any) -> None:
        path = decision.path
        if isinstance(decision, policy.Grow):
            self._schedule(path, "grow")
        elif isinstance(decision, policy.Finalize):
            self._finalize_when_settled(path)
        elif isinstance(decision, policy.Restart):
            self._growing.pop(path, None)
            self._schedule(path, "grow")
        elif isinstance(decision, policy.Forget):
            self._growing.pop(path, None)
            self._job_kind.pop(path, None)  # a queued job for it is skipped when popped
            self.cache.forget_file(str(path))

    def _finalize_when_settled(self, path: Path) -> None:
        """Stage the whole file, but not within the stager's racy window of its mtime: a manifest
        made then could not be recorded for instant add (a write in the same timestamp tick
        would go unnoticed), so wait out the rest of the window first."""
        try:
            wait = self.stager.racy_wait(path.stat())
        except OSError:
            return  # gone: the watcher reports the deletion
        if wait > 0 and self._loop is not None:
            self._loop.call_later(wait + 0.01, self._schedule, path, "final")
        else:
            self._schedule(path, "final")

    def _schedule(self, path: Path, kind: str) -> None:
        current = self._job_kind.get(path)
        if current == kind or current == "final":
            return  # already queued; "final" covers a pending "grow"
        self._job_kind[path] = kind
        size = self._sizes.get(path, 0)
        prio = policy.priority(self._class_of(path), path, size)
        heapq.heappush(self._jobs, (prio, next(self._seq), path, kind))
        self._wake.set()

    def _class_of(self, path: Path) -> int:
        best = EDITOR_CACHE
        for root, cls in self._roots.items():
            if path.is_relative_to(root):
                best = min(best, cls)
        return best

    async def _stage_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self._jobs or self.user_paused or "active-edit" in self.uploader.holds():
                self._wake.clear()
                await _wait_either(stop, self._wake, 0.5)
                continue
            if self._yield_to_commands():
                await _sleep_or_stop(stop, COMMAND_POLL)
                continue
            prio, _, path, kind = heapq.heappop(self._jobs)
            if self._job_kind.get(path) != kind:
                continue  # forgotten, or superseded by a later decision
            del self._job_kind[path]
            try:
                chunks = await asyncio.to_thread(self._stage, path, kind)
            except DitsError as exc:
                self.files_failed += 1
                log.warning("cannot stage %s: %s", path, exc)
                continue
            except OSError as exc:
                self.files_failed += 1
                log.warning("cannot stage %s: %s", path, exc.strerror or exc)
                continue
            if chunks:
                self.uploader.enqueue(chunks, prio)

    def _stage(self, path: Path, kind: str) -> list[tuple[Any, int]]:
        if kind == "grow":
            growing = self._growing.get(path)
            if growing is None:
                # [staging] chunk_boundary_lookahead: how far past its last cut a render in
                # progress is read per pass.
                lookahead = self.uploader.staging_config.chunk_boundary_lookahead
                growing = GrowingFile(self.repo, path, window_size=lookahead)
                self._growing[path] = growing
            return [(c.id, c.size) for c in growing.advance()]
        self._growing.pop(path, None)
        if self._already_added(path):
            return []
        st = path.stat()
        known = self.cache.manifest_for(str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if known is None:
            staged = self.stager.stage_file(path)
            known = staged.manifest
            self.files_processed += 1
            self.cache.add_counters(files_processed=1)
            log.info("staged %s: %d chunks, %d new", path, len(known.chunks), staged.new_chunks)
        return [(c.id, c.size) for c in known.chunks]

    def _already_added(self, path: Path) -> bool:
        """A working-tree file whose index entry matches: `dits add` has it; push sends it."""
        if not path.is_relative_to(self.repo.root):
            return False
        rel = path.relative_to(self.repo.root).as_posix()
        entry = self.repo.index.get(rel)
        if entry is None:
            return False
        st = path.stat()
        return bool(entry.same_stat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))

    async def _editor_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.time()
            try:
                running = await asyncio.to_thread(nle.running_editors)
                self.editors = sorted({e.name for e in running})
                rate = self.editor_meter.sample(now)
                self.activity.record_rate(rate, now)
                if self.cfg.watch_editors and running and self._watcher is not None:
                    for folder in nle.editor_folders(
                        running, include_derived=self.cfg.include_derived_caches
                    ):
                        if folder.path not in self._roots:
                            root = WatchRoot(folder.path, EDITOR_CACHE, False)
                            self._roots[folder.path] = EDITOR_CACHE
                            self._watcher.add_root(root)
                            log.info("watching %s for %s", folder.path, folder.editor)
            except Exception:  # psutil races with exiting processes; never let it stop us
                log.debug("editor scan failed", exc_info=True)
            await _sleep_or_stop(stop, EDITOR_SCAN)


def stopped_status(paths: AgentPaths) -> dict[str, Any]:
    """What ``status`` shows with no agent running: STOPPED and the persistent counters."""
    counters: dict[str, Any] = {}
    rate = None
    if paths.cache.exists():
        cache = SpeculativeCache(paths.cache)
        try:
            counters = dict(cache.counters())
            rate = cache.get_value("upload_rate")
        finally:
            cache.close()
    return {
        "state": "STOPPED",
        "reasons": [],
        "yielding_to": None,
        "pid": None,
        "remote": None,
        "files_processed": counters.get("files_processed", 0),
        "files_failed": 0,
        "queue_depth": 0,
        "chunks_queued": 0,
        "bytes_queued": 0,
        "chunks_uploaded": counters.get("chunks_uploaded", 0),
        "bytes_uploaded": counters.get("bytes_uploaded", 0),
        "chunks_skipped": 0,
        "bytes_skipped": 0,
        "upload_rate": 0.0,
        "last_measured_upload_rate": rate,
        "failures": 0,
        "last_error": "",
        "staging": {},
        "network": {},
    }


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def _wait_either(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()

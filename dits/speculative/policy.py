"""Pure decisions of the agent: what to chunk when, in which order, and when to hold back.

Nothing here does I/O or reads the clock: observations and ``now`` come in as values, decisions
go out as values, so every rule is tested with explicit times (``tests/speculative``).

Theory of operation (``FileTracker``)
-------------------------------------
Each tracked path has the last observed ``(size, mtime_ns, inode)``, the time it last changed,
the size up to which a ``Grow`` was already asked for, and whether it was finalized.

* First sight, or a change after being final: tracked as changing; nothing to do yet.
* Size grew while the file is changing: ``Grow(path, stable_upto=size)``, at most once per
  ``debounce`` seconds unless another ``grow_step`` bytes arrived, so a render writing
  thousands of times a second yields a few decisions, not thousands.
* Size shrank or the inode differs (truncated, or replaced by a rename): ``Restart(path)``;
  what was chunked of the old bytes is void. Tracking restarts from this observation.
* Same size and mtime as last time: nothing; ``poll(now)`` emits ``Finalize(path)`` once the
  file has not changed for ``debounce`` seconds, and again only after it changes again.
* ``forget(path)`` (deleted; the path may be a folder): ``Forget`` for it and everything
  tracked under it.
* Past ``max_tracked_files`` the least recently changed finalized paths are dropped
  (``Forget``), then, if none is final, the least recently changed ones.

``priority`` orders work: working tree, then ``watch_dirs``, then editor folders; within a
class small project files (non-media, under 16 MiB) first, then by size. ``ActivityMonitor``
turns observed write volume into "the user is actively rendering or copying: hold back".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from pathlib import PurePath
from typing import Final

from dits.core.chunking import PROJECT_PROFILE, choose_profile

__all__ = [
    "SMALL_PROJECT_FILE",
    "ActivityMonitor",
    "Decision",
    "FileTracker",
    "Finalize",
    "Forget",
    "Grow",
    "Priority",
    "PriorityClass",
    "Restart",
    "priority",
]

SMALL_PROJECT_FILE: Final = 16 << 20
DEFAULT_GROW_STEP: Final = 16 << 20  # one Ingestor window: less is not worth a pass


class PriorityClass(IntEnum):
    """Where a file was found; lower values are staged and uploaded first."""

    WORKTREE = 0
    WATCH_DIR = 1
    EDITOR = 2


@dataclass(frozen=True)
class Grow:
    """The file is being written: chunk what lies behind its last decided cut."""

    path: PurePath
    stable_upto: int


@dataclass(frozen=True)
class Finalize:
    """The file has been stable for ``debounce`` seconds: stage it whole, as ``dits add`` would."""

    path: PurePath


@dataclass(frozen=True)
class Restart:
    """The file shrank or was replaced: anything chunked from its old bytes is void."""

    path: PurePath


@dataclass(frozen=True)
class Forget:
    """The file is gone (or no longer tracked): drop what is known about it."""

    path: PurePath


Decision = Grow | Finalize | Restart | Forget


@dataclass
class _Entry:
    size: int
    mtime_ns: int
    inode: int
    changed_at: float
    grown_upto: int
    grown_at: float
    final: bool = False


class FileTracker:
    """Per-path state machine from observations to decisions (see the module docstring).

    Args:
        debounce: seconds without change before a file is final.
        max_tracked_files: the most paths kept; older idle ones are forgotten first.
        grow_step: bytes of growth that justify a ``Grow`` before ``debounce`` elapsed.
    """

    def __init__(
        self, debounce: float, max_tracked_files: int, *, grow_step: int = DEFAULT_GROW_STEP
    ) -> None:
        if debounce < 0 or max_tracked_files < 1 or grow_step < 1:
            raise ValueError("debounce >= 0, max_tracked_files >= 1 and grow_step >= 1 required")
        self.debounce = debounce
        self.max_tracked_files = max_tracked_files
        self.grow_step = grow_step
        self._entries: dict[PurePath, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def observe(
        self, path: PurePath, size: int, mtime_ns: int, inode: int, now: float
    ) -> list[Decision]:
        """Feed one stat of ``path``; return what to do now (often nothing).

        Returns:
            At most one of ``Grow``/``Restart`` for ``path``, preceded by ``Forget`` for paths
            evicted to stay within ``max_tracked_files``.
        """
        entry = self._entries.get(path)
        if entry is None:
            out = self._make_room(now)
            self._entries[path] = _Entry(size, mtime_ns, inode, now, size, now)
            return out
        if inode != entry.inode or size < entry.size:
            self._entries[path] = _Entry(size, mtime_ns, inode, now, 0, now)
            return [Restart(path)]
        if size == entry.size and mtime_ns == entry.mtime_ns:
            return []
        grew = size > entry.size
        entry.size, entry.mtime_ns, entry.changed_at = size, mtime_ns, now
        if entry.final:
            # Changed after being final: a fresh round. Growth of a finished file (an append
            # after a pause) counts from the finished size.
            entry.final = False
            entry.grown_at = now
            if not grew:
                return []
        if grew and (
            size - entry.grown_upto >= self.grow_step or now - entry.grown_at >= self.debounce
        ):
            entry.grown_upto, entry.grown_at = size, now
            return [Grow(path, size)]
        return []

    def poll(self, now: float) -> list[Decision]:
        """``Finalize`` every path unchanged for ``debounce`` seconds and not yet final."""
        out: list[Decision] = []
        for path, entry in self._entries.items():
            if not entry.final and now - entry.changed_at >= self.debounce:
                entry.final = True
                entry.grown_upto = entry.size
                out.append(Finalize(path))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time ``poll`` will have something to say, or None."""
        pending = [e.changed_at for e in self._entries.values() if not e.final]
        return min(pending) + self.debounce if pending else None

    def forget(self, path: PurePath) -> list[Decision]:
        """``path`` was deleted (it may have been a folder): forget it and everything under it."""
        gone = [p for p in self._entries if p == path or p.is_relative_to(path)]
        for p in gone:
            del self._entries[p]
        return [Forget(p) for p in gone]

    def _make_room(self, now: float) -> list[Decision]:
        excess = len(self._entries) + 1 - self.max_tracked_files
        if excess <= 0:
            return []
        # Finalized paths first (their work is done), least recently changed first.
        order = sorted(self._entries.items(), key=lambda kv: (not kv[1].final, kv[1].changed_at))
        out: list[Decision] = [Forget(p) for p, _ in order[:excess]]
        for decision in out:
            del self._entries[decision.path]
        return out


@dataclass(frozen=True, order=True)
class Priority:
    """Sort key of a file's work; smaller sorts first (usable in ``heapq`` tuples)."""

    klass: int
    bulk: bool  # False for small project files, which go first
    size: int
    path: str


def priority(priority_class: int, path: PurePath | str, size: int) -> Priority:
    """Where ``path`` goes in the staging and upload order.

    Args:
        priority_class: a ``PriorityClass`` (or its int value): working tree, watched folder,
            editor folder.
        path: the file; only its extension matters besides tie-breaking.
        size: its current size in bytes.

    Returns:
        A key that sorts the working tree before watched folders before editor folders, and
        within a class small project files (no media extension, under 16 MiB) first, then
        everything by size ascending.
    """
    text = str(path)
    small_project = size < SMALL_PROJECT_FILE and choose_profile(text, 0) is PROJECT_PROFILE
    return Priority(int(priority_class), not small_project, size, text)


class ActivityMonitor:
    """Is someone writing heavily (rendering, copying media)? Then the agent holds back.

    The write rate is the bytes recorded during the last ``window`` seconds divided by
    ``window``, or the latest rate given to ``record_rate`` (valid for ``window`` seconds) if
    that is higher: the two sources overlap, an editor rendering into a watched folder shows
    up in both. Uploads are paused while the rate is above ``active_edit_rate`` and for
    ``resume_after_idle`` seconds after it fell below.

    Between two records the rate can only fall (samples leave the window), so each record
    works out when it will have fallen below the threshold (``active_until``); ``paused``
    needs no polling to be exact.

    Args:
        active_edit_rate: bytes/s above which writing counts as active editing.
        resume_after_idle: calm seconds needed before resuming.
        window: seconds over which recorded bytes are averaged; at least as long as the
            longest interval between two ``record`` calls of one source.
    """

    def __init__(
        self, active_edit_rate: float, resume_after_idle: float, *, window: float = 10.0
    ) -> None:
        if active_edit_rate <= 0 or resume_after_idle < 0 or window <= 0:
            raise ValueError("active_edit_rate > 0, resume_after_idle >= 0, window > 0 required")
        self.active_edit_rate = active_edit_rate
        self.resume_after_idle = resume_after_idle
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._meter: tuple[float, float] | None = None  # (time, bytes/s)
        self.active_until: float | None = None

    def record(self, nbytes: int, now: float) -> None:
        """``nbytes`` were written (observed growth, or a meter's bytes since its last sample)."""
        if nbytes > 0:
            self._samples.append((now, nbytes))
            self._in_window += nbytes
        self._update(now)

    def record_rate(self, rate: float, now: float) -> None:
        """A meter measured ``rate`` bytes/s just now (e.g. ``nle.WriteRateMeter``)."""
        self._meter = (now, max(rate, 0.0))
        self._update(now)

    def rate(self, now: float) -> float:
        """The current write rate estimate in bytes/s."""
        self._prune(now)
        recorded = self._in_window / self.window
        if self._meter is not None and now - self._meter[0] < self.window:
            return max(recorded, self._meter[1])
        return recorded

    def paused(self, now: float) -> bool:
        """Whether uploads should be held at ``now``."""
        if self.active_until is None:
            return False
        return now < self.active_until + self.resume_after_idle

    def _prune(self, now: float) -> None:
        while self._samples and self._samples[0][0] <= now - self.window:
            self._in_window -= self._samples.popleft()[1]

    def _update(self, now: float) -> None:
        self._prune(now)
        limit = self.active_edit_rate * self.window
        until: float | None = None
        total = self._in_window
        for when, nbytes in self._samples:  # oldest first: the order they leave the window
            if total <= limit:
                break
            total -= nbytes
            until = when + self.window
        if self._meter is not None and self._meter[1] > self.active_edit_rate:
            meter_until = self._meter[0] + self.window
            until = meter_until if until is None else max(until, meter_until)
        if until is not None and until > now:
            # Never move backwards: samples may arrive slightly out of order between sources.
            self.active_until = (
                until if self.active_until is None else max(self.active_until, until)
            )

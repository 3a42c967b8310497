"""Thin glue between watchdog and the agent: file events in, ``(path, kind)`` calls out.

What it decides is only *which* paths are reported, with the same rules for live events and
the initial ``scan``:

* never anything under a folder named in ``cfg.ignore_dirs`` (``.dits``, ``.git``,
  ``node_modules`` by default; names or globs, at any depth);
* in a root with ``respect_ditsignore`` (the working tree): nothing ``.ditsignore`` excludes,
  with the semantics of ``dits.worktree`` (dulwich's gitignore matcher, nested files applying
  to their folder, an ignored folder hiding everything below it), and no name a repository
  cannot hold;
* in a root of another class (watched folders, editor folders): only files that
  ``nle.matches`` accepts (media and project patterns, derived caches when enabled).

Kinds are ``"changed"`` (created, written, closed after writing, moved here) and ``"deleted"``
(removed, moved away). A deleted *folder* is reported once with its own path: the receiver
forgets everything under it (``policy.FileTracker.forget`` does). A folder created or moved
into a root is scanned and each file in it reported as changed. Symlinks are not followed.

``on_change`` runs on watchdog's observer thread; it must be quick and thread-safe (hand the
path to the event loop and return).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dulwich.ignore import IgnoreFilter, read_ignore_patterns
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from dits.core.objects import validate_entry_name
from dits.speculative import nle
from dits.speculative.config import SpeculativeConfig
from dits.speculative.policy import PriorityClass
from dits.worktree import IGNORE_FILE

__all__ = ["ChangeCallback", "TreeWatcher", "WatchRoot", "scan"]

ChangeCallback = Callable[[Path, str], None]
CHANGED: Final = "changed"
DELETED: Final = "deleted"


@dataclass(frozen=True)
class WatchRoot:
    """A folder to watch recursively.

    Attributes:
        path: the folder.
        priority_class: a ``policy.PriorityClass`` value; ``WORKTREE`` reports every file,
            the others only files matching the media and project patterns.
        respect_ditsignore: apply ``.ditsignore`` files (the working tree).
    """

    path: Path
    priority_class: int
    respect_ditsignore: bool


class _IgnoreFiles:
    """``.ditsignore`` filters of a tree, parsed once per file version (size and mtime)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[tuple[int, int], IgnoreFilter | None]] = {}
        self._lock = threading.Lock()

    def _filter(self, rel_dir: str) -> IgnoreFilter | None:
        path = self.root / rel_dir / IGNORE_FILE if rel_dir else self.root / IGNORE_FILE
        try:
            st = os.stat(path)
        except OSError:
            with self._lock:
                self._cache.pop(rel_dir, None)
            return None
        version = (st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(rel_dir)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            with open(path, "rb") as fh:
                filt: IgnoreFilter | None = IgnoreFilter(list(read_ignore_patterns(fh)))
        except OSError:
            filt = None
        with self._lock:
            self._cache[rel_dir] = (version, filt)
        return filt

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether ``rel`` (POSIX, relative to the root) or a folder above it is ignored."""
        parts = rel.split("/")
        filters: list[tuple[str, IgnoreFilter]] = []
        for depth in range(len(parts)):
            base = "/".join(parts[:depth])
            filt = self._filter(base)
            if filt is not None:
                filters.append((base, filt))
            target = "/".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if _verdict(filters, target, is_dir or not last):
                return True
        return False


def _verdict(filters: list[tuple[str, IgnoreFilter]], rel: str, is_dir: bool) -> bool:
    # The deepest .ditsignore with an opinion wins, as in dits.worktree._IgnoreStack.
    for base, filt in reversed(filters):
        sub = rel[len(base) + 1 :] if base else rel
        verdict = filt.is_ignored(sub + "/" if is_dir else sub)
        if verdict is not None:
            return bool(verdict)
    return False


class _Filter:
    """The reporting rules of one root (see the module docstring)."""

    def __init__(self, root: WatchRoot, cfg: SpeculativeConfig) -> None:
        self.root = root
        self.cfg = cfg
        self.ignore_dirs = tuple(cfg.ignore_dirs)
        self.ignores = _IgnoreFiles(root.path) if root.respect_ditsignore else None
        self.all_files = root.priority_class == PriorityClass.WORKTREE

    def relative(self, path: Path) -> str | None:
        try:
            rel = path.relative_to(self.root.path).as_posix()
        except ValueError:
            return None
        return None if rel in ("", ".") else rel

    def folder_ok(self, rel: str) -> bool:
        """Whether a folder (and so anything in it) may be reported."""
        return not any(self._bad_name(p) for p in rel.split("/")) and not (
            self.ignores is not None and self.ignores.ignored(rel, True)
        )

    def file_ok(self, rel: str) -> bool:
        """Whether a file may be reported (its folders included)."""
        parts = rel.split("/")
        if any(self._bad_name(p) for p in parts):
            return False
        if self.ignores is not None and self.ignores.ignored(rel, False):
            return False
        # The absolute path, so that a root which is itself a cache folder counts as derived.
        return self.all_files or nle.matches(self.root.path / rel, self.cfg)

    def _bad_name(self, name: str) -> bool:
        if name == ".dits" or any(fnmatch.fnmatchcase(name, d) for d in self.ignore_dirs):
            return True
        if self.root.respect_ditsignore:
            try:
                validate_entry_name(name)  # names a repository cannot hold are never added
            except ValueError:
                return True
        return False


def scan(root: WatchRoot, cfg: SpeculativeConfig) -> Iterator[Path]:
    """Every regular file under ``root`` the watcher would report, sorted by path.

    Ignored folders are not descended into; symlinks are not followed or reported.
    """
    yield from _scan_dir(_Filter(root, cfg), root.path, "")


def _scan_dir(rules: _Filter, path: Path, rel_dir: str) -> Iterator[Path]:
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # unreadable or vanished: events will tell if it comes back
    for entry in entries:
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if rules.folder_ok(rel):
                yield from _scan_dir(rules, Path(entry.path), rel)
        elif stat.S_ISREG(st.st_mode) and rules.file_ok(rel):
            yield Path(entry.path)


class _Handler(FileSystemEventHandler):
    def __init__(self, root: WatchRoot, cfg: SpeculativeConfig, on_change: ChangeCallback) -> None:
        self.rules = _Filter(root, cfg)
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = Path(os.fsdecode(event.src_path))
        if kind == EVENT_TYPE_MOVED:
            self._gone(src, event.is_directory)
            self._arrived(Path(os.fsdecode(event.dest_path)), event.is_directory)
        elif kind == EVENT_TYPE_DELETED:
            self._gone(src, event.is_directory)
        elif kind == EVENT_TYPE_CREATED:
            self._arrived(src, event.is_directory)
        elif kind in (EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED) and not event.is_directory:
            self._file(src, CHANGED)

    def _file(self, path: Path, kind: str) -> None:
        rel = self.rules.relative(path)
        if rel is not None and self.rules.file_ok(rel):
            self.on_change(path, kind)

    def _gone(self, path: Path, is_dir: bool) -> None:
        if not is_dir:
            self._file(path, DELETED)
            return
        rel = self.rules.relative(path)
        if rel is not None and self.rules.folder_ok(rel):
            self.on_change(path, DELETED)

    def _arrived(self, path: Path, is_dir: bool) -> None:
        if not is_dir:
            self._file(path, CHANGED)
            return
        rel = self.rules.relative(path)
        if rel is None or not self.rules.folder_ok(rel):
            return
        for found in _scan_dir(self.rules, path, rel):
            self.on_change(found, CHANGED)


class TreeWatcher:
    """Watches roots recursively with watchdog (inotify on Linux) and reports file changes.

    Args:
        roots: the folders to watch; more can be added with ``add_root``.
        cfg: ignore and pattern settings.
        on_change: called as ``on_change(path, "changed" | "deleted")`` on the observer
            thread.
    """

    def __init__(
        self, roots: Iterable[WatchRoot], cfg: SpeculativeConfig, on_change: ChangeCallback
    ) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self._observer: BaseObserver = Observer()
        self._watches: dict[Path, ObservedWatch] = {}
        self._roots: list[WatchRoot] = []
        self._started = False
        self._lock = threading.Lock()
        for root in roots:
            self.add_root(root)

    @property
    def roots(self) -> list[WatchRoot]:
        """The roots being watched."""
        with self._lock:
            return list(self._roots)

    def add_root(self, root: WatchRoot) -> bool:
        """Watch one more folder (now, if already started). Return False if already watched.

        Raises:
            OSError: the folder does not exist or cannot be watched (inotify limits).
        """
        with self._lock:
            if root.path in self._watches:
                return False
            handler = _Handler(root, self.cfg, self.on_change)
            watch = self._observer.schedule(handler, str(root.path), recursive=True)
            self._watches[root.path] = watch
            self._roots.append(root)
            return True

    def remove_root(self, path: Path) -> None:
        """Stop watching ``path`` (unknown paths are ignored)."""
        with self._lock:
            watch = self._watches.pop(path, None)
            self._roots = [r for r in self._roots if r.path != path]
        if watch is not None:
            self._observer.unschedule(watch)

    def start(self) -> None:
        """Start the observer thread."""
        with self._lock:
            if not self._started:
                self._observer.start()
                self._started = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observer thread and wait for it (at most ``timeout`` seconds)."""
        with self._lock:
            started, self._started = self._started, False
        if started:
            self._observer.stop()
            self._observer.join(timeout)

    def scan(self, root: WatchRoot) -> Iterator[Path]:
        """``scan(root, self.cfg)``: the files ``root`` holds now, with the same filters."""
        return scan(root, self.cfg)

"""TreeWatcher with real watchdog (inotify) events on real files, and the initial scan."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dits.speculative.config import SpeculativeConfig
from dits.speculative.policy import PriorityClass
from dits.speculative.watcher import TreeWatcher, WatchRoot, scan
from dits.worktree import Worktree

CFG = SpeculativeConfig()


class Events:
    """Thread-safe record of ``on_change`` calls."""

    def __init__(self) -> None:
        self.items: list[tuple[Path, str]] = []
        self.lock = threading.Lock()

    def __call__(self, path: Path, kind: str) -> None:
        with self.lock:
            self.items.append((path, kind))

    def snapshot(self) -> list[tuple[Path, str]]:
        with self.lock:
            return list(self.items)

    def wait(
        self, predicate: Callable[[list[tuple[Path, str]]], bool], timeout: float = 5.0
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.02)
        return predicate(self.snapshot())

    def saw(self, path: Path, kind: str, timeout: float = 5.0) -> bool:
        return self.wait(lambda items: (path, kind) in items, timeout)

    def paths(self) -> set[Path]:
        return {p for p, _ in self.snapshot()}


def settle(events: Events, marker: Path) -> None:
    """Write a marker file and wait for its event: earlier events have been delivered."""
    marker.write_bytes(b"m")
    assert events.saw(marker, "changed")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    root.mkdir()
    return root


@pytest.fixture
def watch(tree: Path) -> Iterator[tuple[TreeWatcher, Events]]:
    events = Events()
    watcher = TreeWatcher([WatchRoot(tree, PriorityClass.WORKTREE, True)], CFG, events)
    watcher.start()
    try:
        yield watcher, events
    finally:
        watcher.stop()


def test_create_append_rename_delete_are_reported(
    tree: Path, watch: tuple[TreeWatcher, Events]
) -> None:
    _, events = watch
    a = tree / "a.bin"
    a.write_bytes(b"1" * 100)
    assert events.saw(a, "changed")
    events.items.clear()
    with open(a, "ab") as fh:
        fh.write(b"2" * 100)
    assert events.saw(a, "changed")
    b = tree / "b.bin"
    os.rename(a, b)
    assert events.saw(a, "deleted")
    assert events.saw(b, "changed")
    b.unlink()
    assert events.saw(b, "deleted")


def test_files_in_new_subfolders_are_reported(
    tree: Path, watch: tuple[TreeWatcher, Events]
) -> None:
    _, events = watch
    deep = tree / "shots" / "sh010"
    deep.mkdir(parents=True)
    clip = deep / "take1.mov"
    clip.write_bytes(b"x")
    assert events.saw(clip, "changed")


def test_a_folder_moved_in_is_scanned_and_a_folder_moved_out_is_deleted(
    tree: Path, tmp_path: Path, watch: tuple[TreeWatcher, Events]
) -> None:
    _, events = watch
    outside = tmp_path / "card"
    (outside / "CLIPS").mkdir(parents=True)
    (outside / "CLIPS" / "A001.mov").write_bytes(b"x")
    os.rename(outside, tree / "card")
    assert events.saw(tree / "card" / "CLIPS" / "A001.mov", "changed")
    os.rename(tree / "card", tmp_path / "gone")
    assert events.saw(tree / "card", "deleted")


def test_ignored_dirs_and_dits_are_silent(tree: Path, watch: tuple[TreeWatcher, Events]) -> None:
    _, events = watch
    for folder in (".dits/store", ".git", "node_modules/pkg", "sub/.git"):
        (tree / folder).mkdir(parents=True)
        (tree / folder / "f").write_bytes(b"x")
    settle(events, tree / "marker")
    assert events.paths() == {tree / "marker"}


def test_ditsignored_files_are_silent(tree: Path, watch: tuple[TreeWatcher, Events]) -> None:
    _, events = watch
    (tree / ".ditsignore").write_text("*.tmp\nrenders/\n")
    (tree / "sub").mkdir()
    (tree / "sub" / ".ditsignore").write_text("!keep.tmp\n")
    assert events.saw(tree / "sub" / ".ditsignore", "changed")
    (tree / "x.tmp").write_bytes(b"x")
    (tree / "renders").mkdir()
    (tree / "renders" / "out.mov").write_bytes(b"x")
    (tree / "sub" / "drop.tmp").write_bytes(b"x")
    (tree / "sub" / "keep.tmp").write_bytes(b"x")
    settle(events, tree / "marker")
    seen = events.paths()
    assert tree / "sub" / "keep.tmp" in seen  # the nested file re-includes it
    assert not seen & {tree / "x.tmp", tree / "renders" / "out.mov", tree / "sub" / "drop.tmp"}


def test_an_edited_ditsignore_takes_effect(tree: Path, watch: tuple[TreeWatcher, Events]) -> None:
    _, events = watch
    (tree / "a.log").write_bytes(b"x")
    assert events.saw(tree / "a.log", "changed")
    (tree / ".ditsignore").write_text("*.log\n")
    assert events.saw(tree / ".ditsignore", "changed")
    events.items.clear()
    (tree / "b.log").write_bytes(b"x")
    settle(events, tree / "marker")
    assert tree / "b.log" not in events.paths()


def test_non_worktree_roots_report_only_matching_files(tmp_path: Path) -> None:
    renders = tmp_path / "renders"
    renders.mkdir()
    events = Events()
    watcher = TreeWatcher([WatchRoot(renders, PriorityClass.WATCH_DIR, False)], CFG, events)
    watcher.start()
    try:
        (renders / "notes.txt").write_text("x")
        (renders / "CacheClip").mkdir()
        (renders / "CacheClip" / "r.mov").write_bytes(b"x")  # derived: not by default
        (renders / "final.MOV").write_bytes(b"x")
        assert events.saw(renders / "final.MOV", "changed")
        settle(events, renders / "marker.mp4")
        assert events.paths() == {renders / "final.MOV", renders / "marker.mp4"}
    finally:
        watcher.stop()


def test_add_root_while_running(tmp_path: Path, tree: Path) -> None:
    events = Events()
    watcher = TreeWatcher([WatchRoot(tree, PriorityClass.WORKTREE, True)], CFG, events)
    watcher.start()
    try:
        extra = tmp_path / "autosave"
        extra.mkdir()
        assert watcher.add_root(WatchRoot(extra, PriorityClass.EDITOR, False))
        assert not watcher.add_root(WatchRoot(extra, PriorityClass.EDITOR, False))
        (extra / "Edit.prproj").write_bytes(b"x")
        assert events.saw(extra / "Edit.prproj", "changed")
        assert [r.path for r in watcher.roots] == [tree, extra]
        watcher.remove_root(extra)
        assert [r.path for r in watcher.roots] == [tree]
    finally:
        watcher.stop()


def test_stop_is_idempotent_and_silences_events(tree: Path) -> None:
    events = Events()
    watcher = TreeWatcher([WatchRoot(tree, PriorityClass.WORKTREE, True)], CFG, events)
    watcher.start()
    watcher.stop()
    watcher.stop()
    (tree / "late.bin").write_bytes(b"x")
    time.sleep(0.3)
    assert events.snapshot() == []


# --------------------------------------------------------------------------- scan


def build_tree(root: Path) -> None:
    files = {
        ".ditsignore": "*.tmp\nbuild/\n",
        "a.mov": "x",
        "b.tmp": "x",
        "build/out.bin": "x",
        "shots/.ditsignore": "!keep.tmp\nlocal/\n",
        "shots/keep.tmp": "x",
        "shots/drop.log": "x",
        "shots/local/cache.bin": "x",
        "shots/sh010/take.mov": "x",
        "node_modules/pkg/index.js": "x",
        ".git/config": "x",
        ".dits/config": "x",
        "notes.txt": "x",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    os.symlink(root / "a.mov", root / "link.mov")


def test_scan_of_the_worktree_equals_the_add_walk(tree: Path) -> None:
    build_tree(tree)
    scanned = [p.relative_to(tree).as_posix() for p in scan(WatchRoot(tree, 0, True), CFG)]
    walked = [
        wf.path
        for wf in Worktree(tree).walk()
        if not wf.is_symlink and wf.path.split("/")[0] not in ("node_modules", ".git")
    ]
    assert scanned == walked
    assert "shots/keep.tmp" in scanned and "b.tmp" not in scanned


def test_scan_of_a_watched_folder_applies_patterns(tmp_path: Path) -> None:
    build_tree(tmp_path)
    root = WatchRoot(tmp_path, PriorityClass.WATCH_DIR, False)
    found = {p.relative_to(tmp_path).as_posix() for p in scan(root, CFG)}
    # No .ditsignore outside the working tree: build/ and local/ count; patterns decide.
    assert found == {"a.mov", "shots/sh010/take.mov"}
    cfg = SpeculativeConfig(patterns=("*.bin",))
    found = {p.relative_to(tmp_path).as_posix() for p in scan(root, cfg)}
    assert found == {"a.mov", "shots/sh010/take.mov", "build/out.bin", "shots/local/cache.bin"}


def test_a_root_that_is_a_cache_folder_counts_as_derived(tmp_path: Path) -> None:
    cache = tmp_path / "Common" / "Media Cache Files"
    cache.mkdir(parents=True)
    (cache / "conformed.mov").write_bytes(b"x")
    root = WatchRoot(cache, PriorityClass.EDITOR, False)
    assert list(scan(root, CFG)) == []
    assert list(scan(root, SpeculativeConfig(include_derived_caches=True))) == [
        cache / "conformed.mov"
    ]


def test_scan_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert list(scan(WatchRoot(tmp_path / "absent", 1, False), CFG)) == []

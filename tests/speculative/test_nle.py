"""Editor knowledge: real process detection with psutil, folders under a fake home, patterns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dits.speculative.config import SpeculativeConfig
from dits.speculative.nle import (
    EDITORS,
    WatchFolder,
    WriteRateMeter,
    editor_folders,
    is_derived_cache,
    matches,
    platform_key,
    running_editors,
)
from dits.speculative.policy import PriorityClass

BY_NAME = {e.name: e for e in EDITORS}


def wait_for(predicate, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def fake_unreal(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process named UnrealEditor (a copy of sleep)."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    exe = tmp_path / "UnrealEditor"
    shutil.copy(sleep, exe)
    proc = subprocess.Popen([str(exe), "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_running_editors_finds_a_real_process_by_name(
    fake_unreal: subprocess.Popen[bytes],
) -> None:
    found = wait_for(lambda: [e for e in running_editors() if e.pid == fake_unreal.pid])
    assert len(found) == 1
    assert found[0].name == "Unreal Editor"
    assert found[0].process_name == "UnrealEditor"
    assert found[0].editor is BY_NAME["Unreal Editor"]


def test_running_editors_ignores_ordinary_processes() -> None:
    mine = [e for e in running_editors() if e.pid == os.getpid()]
    assert mine == []


def test_running_editors_matches_windows_and_mac_process_names() -> None:
    class Fake:
        def __init__(self, pid: int, name: str, exe: str | None = None) -> None:
            self.pid = pid
            self.info = {"pid": pid, "name": name, "exe": exe}

    procs = [
        Fake(1, "Adobe Premiere Pro.exe"),
        Fake(2, "Adobe Premiere Pro 2024"),
        Fake(3, "AfterFX.exe"),
        Fake(4, "Resolve.exe"),
        Fake(5, "resolve", "/opt/resolve/bin/resolve"),
        Fake(6, "Final Cut Pro"),
        Fake(7, "UE4Editor.exe"),
        Fake(8, "python3"),
        Fake(9, "bash", None),
    ]
    found = {e.pid: e.name for e in running_editors(lambda attrs: procs)}
    assert found == {
        1: "Adobe Premiere Pro",
        2: "Adobe Premiere Pro",
        3: "Adobe After Effects",
        4: "DaVinci Resolve",
        5: "DaVinci Resolve",
        6: "Final Cut Pro",
        7: "Unreal Editor",
    }


def test_running_editors_skips_processes_without_names() -> None:
    class Fake:
        pid = 1
        info = {"pid": 1, "name": None, "exe": None}

    assert running_editors(lambda attrs: [Fake()]) == []


# --------------------------------------------------------------------------- folders


def make(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_premiere_folders_on_macos(tmp_path: Path) -> None:
    home = tmp_path / "home"
    autosave = make(home / "Documents/Adobe/Premiere Pro/24.0/Adobe Premiere Pro Auto-Save")
    cache = make(home / "Library/Application Support/Adobe/Common/Media Cache Files")
    premiere = BY_NAME["Adobe Premiere Pro"]
    assert editor_folders([premiere], "darwin", home, {}) == [
        WatchFolder(autosave, PriorityClass.EDITOR, "Adobe Premiere Pro", False)
    ]
    folders = editor_folders([premiere], "darwin", home, {}, include_derived=True)
    assert [(f.path, f.derived) for f in folders] == [(autosave, False), (cache, True)]
    # Nothing of it exists on Linux, where Premiere does not run.
    assert editor_folders([premiere], "linux", home, {}, include_derived=True) == []


def test_premiere_folders_on_windows_use_appdata(tmp_path: Path) -> None:
    home = tmp_path / "home"
    appdata = tmp_path / "AppData" / "Roaming"
    cache = make(appdata / "Adobe/Common/Media Cache Files")
    env = {"APPDATA": str(appdata)}
    premiere = BY_NAME["Adobe Premiere Pro"]
    folders = editor_folders([premiere], "win32", home, env, include_derived=True)
    assert [f.path for f in folders] == [cache]
    # Without the variable the template cannot resolve: no folder, no error.
    assert editor_folders([premiere], "win32", home, {}, include_derived=True) == []


def test_resolve_folders_per_platform(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mac = make(home / "Library/Application Support/Blackmagic Design/DaVinci Resolve")
    linux = make(home / ".local/share/DaVinciResolve")
    programdata = tmp_path / "ProgramData"
    disk_db = make(programdata / "Blackmagic Design/DaVinci Resolve/Support/Resolve Disk Database")
    resolve = BY_NAME["DaVinci Resolve"]
    assert [f.path for f in editor_folders([resolve], "darwin", home, {})] == [mac]
    assert [f.path for f in editor_folders([resolve], "linux", home, {})] == [linux]
    env = {"PROGRAMDATA": str(programdata)}
    assert [f.path for f in editor_folders([resolve], "win32", home, env)] == [disk_db]


def test_final_cut_libraries_are_found_by_glob(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = make(home / "Movies/Trailer.fcpbundle")
    b = make(home / "Movies/Untitled.fcpbundle")
    (home / "Movies/notes.txt").write_text("x")
    folders = editor_folders([BY_NAME["Final Cut Pro"]], "darwin", home, {})
    assert [f.path for f in folders] == [a, b]


def test_unreal_folders_on_linux_and_running_editors_input(
    tmp_path: Path, fake_unreal: subprocess.Popen[bytes]
) -> None:
    home = tmp_path / "home"
    epic = make(home / ".config/Epic")
    ddc = make(home / ".config/Epic/UnrealEngine/Common/DerivedDataCache")
    running = wait_for(lambda: [e for e in running_editors() if e.pid == fake_unreal.pid])
    assert [f.path for f in editor_folders(running, "linux", home, {})] == [epic]
    derived = editor_folders(running, "linux", home, {}, include_derived=True)
    assert [(f.path, f.derived) for f in derived] == [(epic, False), (ddc, True)]


def test_each_folder_is_reported_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make(home / "Library/Application Support/Adobe/Common/Media Cache Files")
    editors = [BY_NAME["Adobe Premiere Pro"], BY_NAME["Adobe After Effects"]]
    folders = editor_folders(editors, "darwin", home, {}, include_derived=True)
    assert len(folders) == 1 and folders[0].editor == "Adobe Premiere Pro"


def test_platform_key() -> None:
    assert platform_key("linux") == "linux"
    assert platform_key("darwin") == "darwin"
    assert platform_key("win32") == "win32"
    assert platform_key(sys.platform) in ("linux", "darwin", "win32", sys.platform)


# --------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    "path",
    [
        "/r/A001_C002.MOV",
        "/r/export.mp4",
        "/r/cam/clip.braw",
        "/r/clip.R3D",
        "/p/Edit.prproj",
        "/p/Adobe Premiere Pro Auto-Save/Edit--12-03-2024_10-00-00.prproj",
        "/p/Comp auto-save 3.aep",
        "/p/Timeline.drp",
        "/p/Cut.fcpxml",
        "/u/Content/Hero.uasset",
        "/u/Content/Maps/Level.umap",
        "/u/Saved/Autosaves/anything.bin",
    ],
)
def test_media_and_project_files_match(path: str) -> None:
    assert matches(path, SpeculativeConfig())


@pytest.mark.parametrize("path", ["/r/notes.txt", "/r/.DS_Store", "/r/movie.mov.part", "/"])
def test_other_files_do_not_match(path: str) -> None:
    assert not matches(path, SpeculativeConfig())


def test_configured_patterns_add_to_the_defaults() -> None:
    cfg = SpeculativeConfig(patterns=("*.wav", "Stems/*.txt"))
    assert matches("/a/mix.WAV", cfg)
    assert matches("/a/Stems/lyrics.txt", cfg)
    assert not matches("/a/lyrics.txt", cfg)


@pytest.mark.parametrize(
    "path",
    [
        "/c/Media Cache Files/clip 48000.cfa",
        "/c/anywhere/clip.pek",
        "/v/CacheClip/render/abc.mov",
        "/v/cacheclip/x.dvcc",
        "/lib/Movie.fcpbundle/Event/Render Files/High Quality Media/x.mov",
        "/u/DerivedDataCache/Boot.ddc",
    ],
)
def test_derived_caches_match_only_when_included(path: str) -> None:
    assert is_derived_cache(path)
    assert not matches(path, SpeculativeConfig())
    assert matches(path, SpeculativeConfig(include_derived_caches=True))


def test_a_project_file_is_not_derived() -> None:
    assert not is_derived_cache("/p/Edit.prproj")
    assert not is_derived_cache("/p/CacheClip")  # a file named like the folder


# --------------------------------------------------------------------------- write rate


def test_write_rate_of_a_writing_process_is_positive(tmp_path: Path) -> None:
    script = (
        "import os, sys, time\n"
        f"fd = os.open({str(tmp_path / 'render.bin')!r}, os.O_WRONLY | os.O_CREAT)\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "block = b'x' * (1 << 20)\n"
        "for _ in range(200):\n"
        "    os.write(fd, block); time.sleep(0.01)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        meter = WriteRateMeter(pids=lambda: [proc.pid])
        assert meter.sample(time.monotonic()) == 0.0  # first sample: nothing to compare
        time.sleep(0.3)
        rate = meter.sample(time.monotonic())
        assert rate > 1 << 20  # about 100 MiB/s written; at least 1 MiB/s measured
    finally:
        proc.kill()
        proc.wait()


def test_write_rate_of_an_idle_process_is_zero(
    fake_unreal: subprocess.Popen[bytes],
) -> None:
    wait_for(lambda: [e for e in running_editors() if e.pid == fake_unreal.pid])
    meter = WriteRateMeter()  # the default: every running editor (our fake UnrealEditor)
    meter.sample(time.monotonic())
    time.sleep(0.1)
    assert meter.sample(time.monotonic()) == 0.0


def test_vanished_and_unknown_processes_are_skipped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    meter = WriteRateMeter(pids=lambda: [proc.pid, 0x7FFFFFFF])
    assert meter.sample(1.0) == 0.0
    assert meter.sample(2.0) == 0.0


def test_write_rate_with_injected_counters() -> None:
    class Counters:
        def __init__(self, written: int) -> None:
            self.write_bytes = written

    class Proc:
        written = 0

        def __init__(self, pid: int) -> None:
            self.pid = pid

        def io_counters(self) -> Counters:
            if self.pid == 2:
                raise psutil.AccessDenied(self.pid)
            return Counters(Proc.written)

        def create_time(self) -> float:
            return 1.0

    meter = WriteRateMeter(pids=lambda: [1, 2], process=Proc)
    assert meter.sample(10.0) == 0.0
    Proc.written = 5000
    assert meter.sample(12.0) == 2500.0
    assert meter.sample(12.0) == 0.0  # no time passed: no rate

"""RepoLock: one writer per repository, released by the kernel when the holder dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dits
from dits.errors import LockedError
from dits.store.lock import RepoLock, RepoLockedError, holder_purpose

ROOT = Path(dits.__file__).resolve().parents[1]

HOLDER = """
import sys, time
from pathlib import Path
from dits.store.lock import RepoLock
lock = RepoLock(Path(sys.argv[1])).acquire(purpose=sys.argv[2])
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
print("released", flush=True)
time.sleep(60)
"""


def start_holder(
    path: Path, purpose: str = "dits add", hold: float = 60.0
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), purpose, str(hold)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "lock"


@pytest.fixture
def holder(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = start_holder(lock_path)
    yield proc
    proc.kill()
    proc.wait()


def test_second_acquire_fails_naming_the_holder(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(RepoLockedError) as caught:
        RepoLock(lock_path).acquire()
    err = caught.value
    assert isinstance(err, LockedError)
    assert err.exit_code == LockedError.exit_code
    assert err.pid == holder.pid
    assert err.purpose == "dits add"
    message = str(err)
    assert message.startswith(f"repository is locked by pid {holder.pid} (dits add, since ")
    assert message.endswith("); wait for it to finish")
    assert time.strftime("%H:") in message or time.strftime("%Y-") in message


def test_lock_is_free_after_the_holder_is_killed(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockedError):
        RepoLock(lock_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = RepoLock(lock_path).acquire(purpose="dits commit")
    try:
        record = json.loads(lock_path.read_text())
        assert record["pid"] == os.getpid()
        assert record["purpose"] == "dits commit"
    finally:
        lock.release()


def test_timeout_waits_then_fails(lock_path: Path, holder: subprocess.Popen[str]) -> None:
    start = time.monotonic()
    with pytest.raises(LockedError):
        RepoLock(lock_path).acquire(timeout=0.3)
    assert time.monotonic() - start >= 0.3


def test_timeout_succeeds_when_the_holder_finishes(lock_path: Path) -> None:
    proc = start_holder(lock_path, hold=0.3)
    try:
        lock = RepoLock(lock_path).acquire(timeout=20)
        assert lock.held
        lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_double_acquire_through_one_object_is_an_error(lock_path: Path) -> None:
    lock = RepoLock(lock_path)
    lock.acquire()
    with pytest.raises(RuntimeError, match="already held"):
        lock.acquire()
    lock.release()
    lock.release()  # no-op
    lock.acquire()
    lock.release()


def test_two_objects_in_one_process_exclude_each_other(lock_path: Path) -> None:
    first = RepoLock(lock_path).acquire(purpose="gc")
    try:
        with pytest.raises(RepoLockedError, match=f"pid {os.getpid()} \\(gc, since "):
            RepoLock(lock_path).acquire()
    finally:
        first.release()
    RepoLock(lock_path).acquire().release()


def test_context_managers(lock_path: Path) -> None:
    with RepoLock(lock_path) as lock:
        assert lock.held
        with pytest.raises(LockedError):
            RepoLock(lock_path).acquire()
    assert not lock.held
    with RepoLock(lock_path).acquire(timeout=1, purpose="dits add") as again:
        assert again.held
    assert not again.held


def test_record_is_written_while_held_and_cleared_after(lock_path: Path) -> None:
    lock = RepoLock(lock_path, clock=lambda: 1_700_000_000.0).acquire(purpose="dits add")
    record = json.loads(lock_path.read_text())
    assert record["pid"] == os.getpid()
    assert record["purpose"] == "dits add"
    assert record["since"] == 1_700_000_000.0
    assert record["hostname"]
    lock.release()
    assert lock_path.read_bytes() == b""
    assert lock_path.exists()  # never deleted: see the module docstring


def test_unreadable_record_still_gives_a_clear_message(lock_path: Path) -> None:
    with RepoLock(lock_path):
        lock_path.write_bytes(b"{half a rec")
        with pytest.raises(RepoLockedError, match="locked by another process") as caught:
            RepoLock(lock_path).acquire()
        assert caught.value.pid is None


def test_old_start_time_shows_the_date(lock_path: Path) -> None:
    now = time.time()
    with (
        RepoLock(lock_path, clock=lambda: now - 3 * 86400),
        pytest.raises(RepoLockedError) as caught,
    ):
        RepoLock(lock_path).acquire()
    expected = time.strftime("%Y-%m-%d", time.localtime(now - 3 * 86400))
    assert f"since {expected} " in str(caught.value)


def test_missing_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        RepoLock(tmp_path / "no" / "such" / "lock").acquire()


def test_holder_purpose_names_a_live_holder_and_never_takes_the_lock(lock_path: Path) -> None:
    assert holder_purpose(lock_path) is None  # no file yet
    proc = start_holder(lock_path, purpose="dits add", hold=1.0)
    try:
        assert holder_purpose(lock_path) == "dits add"
        # Reading the record leaves the flock alone: the holder still has it.
        with pytest.raises(RepoLockedError):
            RepoLock(lock_path).acquire()
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "released"
        assert holder_purpose(lock_path) is None  # released: the record is emptied
    finally:
        proc.kill()
        proc.wait()


def test_holder_purpose_ignores_the_record_of_a_dead_holder(lock_path: Path) -> None:
    proc = start_holder(lock_path, purpose="dits commit")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(lock_path.read_text())["pid"] == proc.pid  # the record stays behind
    assert holder_purpose(lock_path) is None
    lock_path.write_text("not json")
    assert holder_purpose(lock_path) is None

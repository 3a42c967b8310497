"""The speculative agent end to end: a real daemon, real watchdog events, a real dits-remote.

Each test starts `dits speculative start` in a repository whose origin is the test server, then
writes files the way an editor does and watches what the agent reports and what the server
holds. Waits poll the agent's status with a deadline; nothing sleeps for a fixed long time.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from dits.net.local_server import remote_cli
from tests.conftest import DitsRunner, random_bytes
from tests.remote.helpers import Server, server_fsck, start_server, stop_server

MiB = 1 << 20


@pytest.fixture
def agent_repo(dits: DitsRunner, server: Server) -> Iterator[DitsRunner]:
    """A repository with origin = the test server, a fast debounce, and an agent cleaned up."""
    assert dits("init")[0] == 0
    assert dits("remote", "add", "origin", server.url(), "--token", server.write_token)[0] == 0
    assert dits("config", "speculative.debounce", "0.3")[0] == 0
    assert dits("config", "speculative.max_bandwidth", "0")[0] == 0
    yield dits
    dits("speculative", "stop")


def status(dits: DitsRunner) -> dict[str, Any]:
    code, out, err = dits("speculative", "status", "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def wait_for(
    dits: DitsRunner, check: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = status(dits)
        if check(doc):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"agent never got there; last status: {doc}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (a container's pid 1 may never reap it)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def start(dits: DitsRunner) -> int:
    code, _, err = dits("speculative", "start")
    assert code == 0, err
    return int(status(dits)["pid"])


def test_life_cycle_single_instance_and_owner_only_socket(agent_repo: DitsRunner) -> None:
    dits = agent_repo
    assert status(dits)["state"] == "STOPPED"
    pid = start(dits)
    assert alive(pid)
    doc = status(dits)
    assert doc["state"] == "ACTIVE" and doc["remote"].endswith("/proj")
    spec_dir = dits.cwd / ".dits" / "speculative"
    assert stat.S_IMODE(spec_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((spec_dir / "agent.sock").stat().st_mode) == 0o600
    assert int((spec_dir / "agent.pid").read_text()) == pid
    code, _, err = dits("speculative", "start")
    assert code == 2 and "already running" in err
    assert dits("speculative", "stop")[0] == 0
    assert status(dits)["state"] == "STOPPED"
    assert not alive(pid)
    code, _, err = dits("speculative", "pause")
    assert code != 0 and "not running" in err


def test_saved_file_is_presynced_then_add_and_push_are_instant(
    agent_repo: DitsRunner, server: Server
) -> None:
    dits = agent_repo
    start(dits)
    data = random_bytes(6 * MiB, seed=41)
    (dits.cwd / "cut.mov").write_bytes(data)
    (dits.cwd / "cut.prproj").write_bytes(b"<project/>" * 1000)
    project = 10_000  # plain bytes of cut.prproj, counted as such even if sent compressed
    doc = wait_for(
        dits,
        lambda d: d["bytes_uploaded"] >= len(data) + project and d["files_processed"] >= 2,
    )
    assert doc["failures"] == 0, doc
    # The uploads went through the staging engine push uses; status shows its figures.
    staged = doc["staging"]
    assert staged["plain_bytes"] >= len(data) and staged["chunks"] > 0
    assert 0 < staged["buffer_peak_bytes"] <= staged["buffer_limit_bytes"]
    code, out, err = dits("speculative", "status")
    assert code == 0 and "stage-ahead hits" in out, err

    code, out, err = dits("speculative", "coverage", "cut.mov", "--json")
    assert code == 0, err
    cover = json.loads(out)
    assert cover["percent"] == 100.0 and cover["bytes_remaining"] == 0
    assert cover["source"] == "server" and cover["estimated_push_seconds"] == 0.0

    code, out, err = dits("add", "--json", ".")
    assert code == 0, err
    assert json.loads(out)["files_from_agent"] == 2  # neither file was read again
    assert dits("commit", "-m", "cut")[0] == 0
    code, out, err = dits("push")
    assert code == 0, err
    assert "Instant push! All" in out, out
    assert server_fsck(server.root).returncode == 0

    # The pushed commit is complete on the server: a clone gets the same bytes.
    clone = dits.cwd.parent / "clone"
    code, _, err = dits("clone", server.url(), str(clone), "--token", server.read_token)
    assert code == 0, err
    assert (clone / "cut.mov").read_bytes() == data


def test_growing_render_is_uploaded_while_it_is_written(agent_repo: DitsRunner) -> None:
    dits = agent_repo
    assert dits("config", "speculative.debounce", "5")[0] == 0  # never "stable" mid-render
    start(dits)
    data = random_bytes(24 * MiB, seed=7)
    path = dits.cwd / "render.mov"
    piece = 2 * MiB
    with open(path, "wb") as fh:
        for i in range(0, len(data) - piece, piece):
            fh.write(data[i : i + piece])
            fh.flush()
            time.sleep(0.15)
        # Still open and unfinished, not stable for the 5 s debounce: only Grow can do this.
        mid = wait_for(dits, lambda d: d["bytes_uploaded"] >= 8 * MiB, timeout=4.0)
        assert mid["growing_files"] == 1 and mid["files_processed"] == 0
        fh.write(data[len(data) - piece :])
    wait_for(dits, lambda d: d["bytes_uploaded"] >= len(data) - 2 * MiB and d["files_processed"])
    code, out, err = dits("speculative", "coverage", "render.mov", "--json")
    assert code == 0, err
    assert json.loads(out)["percent"] == 100.0


def test_pause_resume_and_clear(agent_repo: DitsRunner) -> None:
    dits = agent_repo
    start(dits)
    assert dits("speculative", "pause")[0] == 0
    (dits.cwd / "a.mov").write_bytes(random_bytes(2 * MiB, seed=1))
    time.sleep(1.5)
    doc = status(dits)
    assert doc["state"] == "PAUSED" and doc["bytes_uploaded"] == 0
    code, out, _ = dits("speculative", "clear")
    assert code == 0 and "dropped" in out
    assert dits("speculative", "resume")[0] == 0
    assert status(dits)["state"] == "ACTIVE"
    (dits.cwd / "b.mov").write_bytes(random_bytes(2 * MiB, seed=2))
    wait_for(dits, lambda d: d["bytes_uploaded"] >= 2 * MiB)


def test_a_push_in_progress_gets_the_uplink(agent_repo: DitsRunner) -> None:
    from dits.speculative.control import AgentPaths, yielding_to_push

    dits = agent_repo
    start(dits)
    with yielding_to_push(dits.cwd / ".dits") as told:
        assert told
        assert "push" in status(dits)["reasons"]
    assert "push" not in status(dits)["reasons"]
    assert AgentPaths(dits.cwd / ".dits").sock.exists()


def test_fast_writes_hold_the_agent_back_until_idle(agent_repo: DitsRunner) -> None:
    """pause_on_active_edit: a render writing faster than active_edit_rate holds staging and
    uploads; resume_after_idle calm seconds after the rate falls, the agent catches up."""
    import threading

    dits = agent_repo
    assert dits("config", "speculative.active_edit_rate", "1MB/s")[0] == 0
    assert dits("config", "speculative.resume_after_idle", "1s")[0] == 0
    start(dits)
    render = dits.cwd / "render.mov"
    writing = threading.Event()
    writing.set()

    def write() -> None:  # ~5 MB/s for as long as the test wants, like a render
        with open(render, "wb") as fh:
            piece = 0
            while writing.is_set() and piece < 60:
                fh.write(random_bytes(MiB, seed=40 + piece))
                fh.flush()
                piece += 1
                time.sleep(0.2)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(dits, lambda d: "active-edit" in d["reasons"], timeout=15)
        time.sleep(0.5)  # a batch already on the wire when the hold began may still land
        held = status(dits)["bytes_uploaded"]
        time.sleep(1.5)
        doc = status(dits)
        assert "active-edit" in doc["reasons"] and doc["bytes_uploaded"] == held, doc
    finally:
        writing.clear()
        writer.join()
    size = render.stat().st_size
    # The 10 s window forgets the writes, then 1 s of calm: the agent uploads the whole file.
    doc = wait_for(dits, lambda d: d["bytes_uploaded"] >= size, timeout=40)
    assert "active-edit" not in doc["reasons"]


def test_the_agent_yields_while_a_dits_command_holds_the_repository(
    agent_repo: DitsRunner,
) -> None:
    """An `add` right after a save reads the file itself: the agent must not read it at the
    same time (two full passes over one render share two cores) nor upload meanwhile."""
    from tests.unit.test_lock import start_holder

    dits = agent_repo
    start(dits)
    holder = start_holder(dits.cwd / ".dits" / "lock", purpose="dits add")  # another process
    try:
        (dits.cwd / "a.mov").write_bytes(random_bytes(2 * MiB, seed=7))
        doc = wait_for(dits, lambda d: "command" in d["reasons"])
        assert doc["yielding_to"] == "dits add"
        time.sleep(1.5)  # several debounce periods: the file would be staged and uploaded by now
        doc = status(dits)
        assert doc["files_processed"] == 0 and doc["bytes_uploaded"] == 0, doc
    finally:
        holder.kill()
        holder.wait()
    doc = wait_for(dits, lambda d: d["bytes_uploaded"] >= 2 * MiB)
    assert "command" not in doc["reasons"] and doc["yielding_to"] is None


def test_killed_agent_restarted_uploads_nothing_twice(agent_repo: DitsRunner) -> None:
    dits = agent_repo
    pid = start(dits)
    data = random_bytes(4 * MiB, seed=3)
    (dits.cwd / "a.mov").write_bytes(data)
    wait_for(dits, lambda d: d["bytes_uploaded"] >= len(data))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while status(dits)["state"] != "STOPPED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    start(dits)  # the stale socket and pid file are taken over
    doc = wait_for(dits, lambda d: d["bytes_skipped"] >= len(data))
    assert doc["bytes_uploaded"] == 0, doc


def test_unreachable_server_backs_off_and_loses_nothing(
    agent_repo: DitsRunner, server: Server
) -> None:
    dits = agent_repo
    port = server.port
    stop_server(server.proc)
    start(dits)
    data = random_bytes(3 * MiB, seed=5)
    (dits.cwd / "a.mov").write_bytes(data)
    doc = wait_for(dits, lambda d: d["failures"] >= 1 and d["chunks_queued"] > 0)
    assert f"127.0.0.1:{port}" in doc["last_error"] and doc["state"] == "ACTIVE"
    server.proc, _ = start_server(server.root, "--listen", f"127.0.0.1:{port}")
    wait_for(dits, lambda d: d["bytes_uploaded"] >= len(data), timeout=60)


def test_file_deleted_or_truncated_while_queued(agent_repo: DitsRunner) -> None:
    dits = agent_repo
    start(dits)
    assert dits("speculative", "pause")[0] == 0
    doomed, shrunk = dits.cwd / "doomed.mov", dits.cwd / "shrunk.mov"
    doomed.write_bytes(random_bytes(2 * MiB, seed=8))
    shrunk.write_bytes(random_bytes(2 * MiB, seed=9))
    time.sleep(1.0)
    doomed.unlink()
    shrunk.write_bytes(random_bytes(MiB, seed=10))
    assert dits("speculative", "resume")[0] == 0
    doc = wait_for(dits, lambda d: d["bytes_uploaded"] >= MiB and d["queue_depth"] == 0)
    assert doc["state"] == "ACTIVE"
    code, out, _ = dits("speculative", "coverage", "shrunk.mov", "--json")
    assert code == 0 and json.loads(out)["percent"] == 100.0


def test_sync_without_the_agent_then_push_is_instant(dits: DitsRunner, server: Server) -> None:
    assert dits("init")[0] == 0
    assert dits("remote", "add", "origin", server.url(), "--token", server.write_token)[0] == 0
    media = dits.cwd / "media"
    media.mkdir()
    (media / "a.mov").write_bytes(random_bytes(3 * MiB, seed=11))
    (media / "b.mxf").write_bytes(random_bytes(2 * MiB, seed=12))
    code, out, err = dits("speculative", "sync", "media", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["files"] == 2 and doc["bytes_uploaded"] == 5 * MiB and not doc["errors"]
    code, out, _ = dits("speculative", "sync", "media", "--json")
    assert json.loads(out)["bytes_uploaded"] == 0  # the cache remembers
    assert dits("add", ".")[0] == 0
    assert dits("commit", "-m", "media")[0] == 0
    code, out, err = dits("push", "--json")
    assert code == 0, err
    pushed = json.loads(out)
    assert pushed["chunks_sent"] == 0 and pushed["percent_bytes_presynced"] == 100.0


def test_speculative_chunks_of_one_repo_do_not_leak_to_another(
    dits: DitsRunner, server: Server, tmp_path: Path
) -> None:
    assert dits("init")[0] == 0
    assert dits("remote", "add", "origin", server.url(), "--token", server.write_token)[0] == 0
    (dits.cwd / "a.mov").write_bytes(random_bytes(2 * MiB, seed=13))
    assert dits("speculative", "sync", ".")[0] == 0
    other = DitsRunner(tmp_path / "other")
    other.cwd.mkdir()
    assert other("init")[0] == 0
    url = server.url("other")
    assert other("remote", "add", "origin", url, "--token", server.other_token)[0] == 0
    (other.cwd / "a.mov").write_bytes(random_bytes(2 * MiB, seed=13))
    code, out, err = other("speculative", "coverage", "a.mov", "--json")
    assert code == 0, err
    assert json.loads(out)["percent"] == 0.0


def test_quota_full_is_reported_and_the_agent_backs_off(dits: DitsRunner, tmp_path: Path) -> None:
    root = tmp_path / "quota-srv"
    remote_cli("init", "--root", str(root), "proj")
    token = remote_cli("token", "create", "--root", str(root), "--repo", "proj", "--write")
    proc, port = start_server(root, "--speculative-quota", str(1 * MiB))
    try:
        assert dits("init")[0] == 0
        url = f"dits://127.0.0.1:{port}/proj"
        assert dits("remote", "add", "origin", url, "--token", token)[0] == 0
        assert dits("config", "speculative.debounce", "0.3")[0] == 0
        start(dits)
        (dits.cwd / "big.mov").write_bytes(random_bytes(6 * MiB, seed=14))
        doc = wait_for(dits, lambda d: "quota" in d["reasons"])
        assert "quota" in doc["last_error"] and doc["chunks_queued"] > 0
        # An explicit push is not limited by the speculative quota.
        assert dits("add", ".")[0] == 0
        assert dits("commit", "-m", "big")[0] == 0
        assert dits("push")[0] == 0
    finally:
        dits("speculative", "stop")
        stop_server(proc)

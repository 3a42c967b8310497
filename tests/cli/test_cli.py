"""The command line, in-process and as a subprocess: output, --json, exit codes."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from dits.cli._common import Ctx
from dits.cli.cmd_demo import resumed_once
from tests.conftest import DitsRunner, random_bytes


def test_full_flow(dits_any: DitsRunner) -> None:
    d = dits_any
    code, out, _ = d("init")
    assert code == 0 and "Initialized empty dits repository" in out
    (d.cwd / "media").mkdir()
    (d.cwd / "media" / "clip.mov").write_bytes(random_bytes(2 << 20, 1))
    (d.cwd / "notes.txt").write_text("hello\n")
    code, out, _ = d("status", "--json")
    assert code == 0
    assert json.loads(out)["untracked"] == ["media/clip.mov", "notes.txt"]
    code, out, _ = d("add", ".", "--json")
    report = json.loads(out)
    assert code == 0 and report["added"] == ["media/clip.mov", "notes.txt"]
    assert report["bytes_read"] == (2 << 20) + 6
    code, out, _ = d("commit", "-m", "first cut", "--json")
    assert code == 0
    first = json.loads(out)["commit"]
    code, out, _ = d("log", "--oneline")
    assert out.strip() == f"{first[:12]} first cut"
    code, out, _ = d("log", "--json")
    (entry,) = json.loads(out)
    assert entry["author"] == {"name": "Git Fallback", "email": "git@example.com"}
    code, out, _ = d("show", "--json")
    assert json.loads(out)["diff"]["files_changed"] == 2
    code, out, _ = d("status")
    assert "nothing to commit, working tree clean" in out


def test_not_a_repository_is_one_line_and_exit_3(dits_any: DitsRunner) -> None:
    code, _, err = dits_any("status")
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("dits: error: not a dits repository")
    assert "Traceback" not in err


def test_debug_shows_traceback(dits: DitsRunner) -> None:
    code, _, err = dits("--debug", "status")
    assert code == 3 and "Traceback" in err


def test_usage_errors_and_paths_outside(dits_any: DitsRunner, tmp_path: object) -> None:
    d = dits_any
    d("init")
    code, _, err = d("add", "../outside.mov")
    assert code == 2 and "outside the repository" in err
    code, _, err = d("add", ".dits/config")
    assert code == 2 and ".dits" in err
    code, _, err = d("add", "missing.mov")
    assert code == 2 and "did not match any files" in err
    code, _, err = d("commit", "-m", "x")
    assert code == 2 and "nothing to commit" in err
    code, _, err = d("switch", "nope")
    assert code == 2 and "no branch named 'nope'" in err


def test_diff_stat_reports_reuse(dits: DitsRunner) -> None:
    d = dits
    d("init")
    data = random_bytes(6 << 20, 4)
    (d.cwd / "v.mov").write_bytes(data)
    d("add", ".")
    d("commit", "-m", "v1")
    (d.cwd / "v.mov").write_bytes(data[:3_000_000] + b"edit" + data[3_000_000:])
    code, out, _ = d("diff", "--json")
    assert code == 0
    report = json.loads(out)
    (f,) = report["files"]
    assert f["path"] == "v.mov" and f["chunks"] - f["chunks_reused"] <= 2
    code, out, _ = d("diff", "--stat")
    assert "v.mov" in out and "chunks reused" in out
    d("add", ".")
    code, out, _ = d("diff", "--cached", "--json")
    assert json.loads(out)["files"][0]["status"] == "modified"


def test_config_get_set_list(dits_any: DitsRunner) -> None:
    d = dits_any
    d("init")
    assert d("config", "set", "user.name", "Ada")[0] == 0
    assert d("config", "user.email", "ada@example.com")[0] == 0
    assert d("config", "speculative.max_bandwidth", "20")[0] == 0
    assert d("config", "set", "remote.origin.url", "dits://127.0.0.1:4433/p")[0] == 0
    code, out, _ = d("config", "get", "user.name")
    assert out.strip() == "Ada"
    code, out, _ = d("config", "list", "--json")
    data = json.loads(out)["set"]
    assert data["speculative.max_bandwidth"] == 20
    assert data["remote.origin.url"] == "dits://127.0.0.1:4433/p"
    code, _, err = d("config", "get", "nosuch.key")
    assert code == 2
    code, _, err = d("config", "get", "nodot")
    assert code == 2 and "section.name" in err
    # The identity set in dits config wins over git's.
    (d.cwd / "f").write_text("x")
    d("add", "f")
    d("commit", "-m", "c")
    code, out, _ = d("log", "--json")
    assert json.loads(out)[0]["author"]["name"] == "Ada"


def test_missing_identity_is_a_clear_error(dits: DitsRunner) -> None:
    os.unlink(os.path.join(os.environ["HOME"], ".gitconfig"))
    dits("init")
    (dits.cwd / "f").write_text("x")
    dits("add", "f")
    code, _, err = dits("commit", "-m", "c")
    assert code == 2 and "user.name" in err


def test_branch_switch_checkout(dits_any: DitsRunner) -> None:
    d = dits_any
    d("init")
    (d.cwd / "a.txt").write_text("1")
    d("add", ".")
    d("commit", "-m", "c1")
    assert d("branch", "topic")[0] == 0
    code, out, _ = d("branch", "--json")
    assert set(json.loads(out)["branches"]) == {"main", "topic"}
    assert d("checkout", "topic")[0] == 0
    (d.cwd / "a.txt").write_text("2")
    d("add", ".")
    d("commit", "-m", "c2")
    assert d("switch", "main")[0] == 0
    assert (d.cwd / "a.txt").read_text() == "1"
    (d.cwd / "a.txt").write_text("dirty")
    code, _, err = d("switch", "topic")
    assert code == 4 and "would overwrite uncommitted changes in: a.txt" in err
    assert d("checkout", "--", "a.txt")[0] == 0
    assert (d.cwd / "a.txt").read_text() == "1"


def test_fsck_and_gc_commands(dits: DitsRunner) -> None:
    dits("init")
    (dits.cwd / "a.bin").write_bytes(random_bytes(200_000, 1))
    dits("add", ".")
    dits("commit", "-m", "c")
    code, out, _ = dits("fsck", "--json")
    assert code == 0 and json.loads(out)["clean"] is True
    code, out, _ = dits("gc", "--json")
    assert code == 0 and json.loads(out) == {
        "objects_removed": 0,
        "chunks_removed": 0,
        "packs_rewritten": 0,
        "packs_removed": 0,
        "bytes_freed": 0,
    }


def test_quiet_prints_nothing(dits: DitsRunner) -> None:
    dits("init")
    (dits.cwd / "a").write_text("x")
    code, out, _ = dits("-q", "add", "a")
    assert code == 0 and out == ""


def test_demo_pushes_to_a_local_server_and_clones(dits: DitsRunner) -> None:
    code, out, err = dits("demo", "d", "--size-mb", "8", "--json")
    log = dits.cwd / "d" / "server" / "server.log"
    assert code == 0, err + (log.read_text() if log.exists() else "")
    figures = json.loads(out)
    if figures["connection_resumes"]:  # tolerated (the step resumed), but made visible
        resumed = figures["connection_resumes"]
        warnings.warn(f"demo resumed: {resumed}\n{log.read_text()}", stacklevel=1)
    assert figures["fsck_clean"] is True
    assert figures["clone_identical"] is True
    assert figures["push1"]["chunks_sent"] == figures["push1"]["chunks_total"] > 0
    # The edit was pre-uploaded by the speculative sync: push 2 sends no chunk, and add took
    # the sync's manifests for the changed files instead of reading them again.
    sync = figures["speculative_sync"]
    assert sync["chunks_uploaded"] > 0 and sync["chunks_skipped"] > 0 and not sync["errors"]
    assert figures["second_add_files_from_agent"] == 3  # the video, the frame, the project
    push2 = figures["push2"]
    assert push2["chunks_sent"] == 0 < push2["chunks_total"]
    assert push2["chunks_already_on_server"] == push2["chunks_total"]
    assert push2["percent_bytes_presynced"] == 100.0


def test_demo_resumes_a_broken_step_once_and_names_the_server_log(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("QUIC connection closed: Idle timeout")
        return "done"

    resumes: list[str] = []
    assert resumed_once(Ctx(cwd=tmp_path), tmp_path, "push 1", flaky, resumes) == "done"
    assert len(calls) == 2 and "push 1" in resumes[0] and "server.log" in resumes[0]

    def broken() -> str:
        raise ConnectionResetError("still broken")

    with pytest.raises(ConnectionResetError):  # a second failure is reported, not retried
        resumed_once(Ctx(cwd=tmp_path), tmp_path, "push 2", broken, [])


def test_the_demo_re_render_keeps_every_frame_header(tmp_path: Path) -> None:
    # The edit re-renders frame payloads in place; a header it overwrote would turn the
    # frames after it into one stretch the chunker cannot snap to (and re-store far more).
    import struct

    from dits.cli.cmd_demo import edit_project, make_project

    make_project(tmp_path, 24)
    video = tmp_path / "media" / "timeline_export.mov"
    before = video.read_bytes()
    edit_project(tmp_path)
    after = video.read_bytes()
    frame = 256 << 10
    first = 8 + 12 + 8  # ftyp box, mdat header
    starts = range(first, len(after) - 4104 - frame + 1, frame)
    assert all(struct.unpack_from(">I4s", after, at) == (frame, b"icpf") for at in starts)
    changed = [at for at in starts if after[at : at + frame] != before[at : at + frame]]
    assert changed and len(changed) <= 72

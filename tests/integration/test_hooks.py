"""Repository hooks and the shipped sample hooks, run for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dits.errors import HookFailedError
from dits.ops.add import add_paths
from dits.ops.commit import commit
from dits.repository import Repository

SAMPLES = Path(__file__).resolve().parents[2] / "hooks"
ID = {"name": "T", "email": "t@x", "now": 1_700_000_000, "tz_offset_min": 0}


def install(repo: Repository, name: str, text: str | None = None) -> Path:
    dest = repo.hooks_dir() / name
    if text is None:
        shutil.copy(SAMPLES / name, dest)
    else:
        dest.write_text(text)
    dest.chmod(0o755)
    return dest


def test_pre_commit_hook_can_refuse_and_sees_environment(repo: Repository) -> None:
    install(
        repo,
        "pre-commit",
        '#!/bin/sh\ncat > "$DITS_DIR/seen"\necho "$DITS_HOOK $DITS_BRANCH" >> "$DITS_DIR/seen"\n'
        'pwd >> "$DITS_DIR/seen"\nexit 3\n',
    )
    (repo.root / "a.mov").write_bytes(b"x" * 10)
    add_paths(repo, [""])
    with pytest.raises(HookFailedError) as err:
        commit(repo, "m", **ID)  # type: ignore[arg-type]
    assert "exit 3" in str(err.value)
    assert repo.head_commit() is None  # nothing was committed
    seen = (repo.dits_dir / "seen").read_text().splitlines()
    assert seen[0] == "10 100644 a.mov"
    assert seen[1] == "pre-commit main"
    assert Path(seen[2]).resolve() == repo.root.resolve()
    # --no-verify equivalent skips it.
    commit(repo, "m", run_hooks=False, **ID)  # type: ignore[arg-type]
    assert repo.head_commit() is not None


def test_sample_pre_commit_refuses_big_files_and_unportable_names(repo: Repository) -> None:
    install(repo, "pre-commit")
    repo.config.set("hooks.max_file_size", "100")
    (repo.root / "big.mov").write_bytes(b"x" * 101)
    (repo.root / "con.txt").write_bytes(b"x")
    (repo.root / "what?.txt").write_bytes(b"x")
    add_paths(repo, [""])
    with pytest.raises(HookFailedError) as err:
        commit(repo, "m", **ID)  # type: ignore[arg-type]
    text = str(err.value)
    assert "big.mov: 101 bytes is over" in text
    assert "reserved name on Windows" in text
    assert "what?.txt" in text


def test_sample_pre_commit_accepts_good_files(repo: Repository) -> None:
    install(repo, "pre-commit")
    (repo.root / "clip_01.mov").write_bytes(b"x" * 50)
    add_paths(repo, [""])
    commit(repo, "ok", **ID)  # type: ignore[arg-type]
    assert repo.head_commit() is not None


def test_sample_post_commit_journals_and_cannot_abort(repo: Repository) -> None:
    install(repo, "post-commit")
    (repo.root / "a").write_bytes(b"1")
    add_paths(repo, [""])
    result = commit(repo, "m", **ID)  # type: ignore[arg-type]
    journal = (repo.dits_dir / "commit-journal.log").read_text()
    assert journal == f"{result.oid.hex()} main\n"
    install(repo, "post-commit", "#!/bin/sh\nexit 1\n")
    (repo.root / "a").write_bytes(b"2")
    add_paths(repo, [""])
    commit(repo, "m2", **ID)  # a failing post-commit does not undo the commit


def test_sample_pre_push_refuses_wip(repo: Repository, tmp_path: Path) -> None:
    # The push command arrives with the remote issue; the hook's contract is tested directly.
    (repo.root / "a").write_bytes(b"1")
    add_paths(repo, [""])
    first = commit(repo, "good", **ID)  # type: ignore[arg-type]
    (repo.root / "a").write_bytes(b"2")
    add_paths(repo, [""])
    second = commit(repo, "WIP do not push", **ID)  # type: ignore[arg-type]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dits").write_text(f'#!/bin/sh\nexec {sys.executable} -m dits.cli.main "$@"\n')
    (bindir / "dits").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PYTHONPATH": str(SAMPLES.parent),
        "DITS_DIR": str(repo.dits_dir),
    }
    zero = "0" * 64

    def run(local: str, remote: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SAMPLES / "pre-push"), "origin", "dits://127.0.0.1:1/r"],
            input=f"refs/heads/main {local} refs/heads/main {remote}\n",
            capture_output=True,
            text=True,
            cwd=repo.root,
            env=env,
            check=False,
        )

    refused = run(second.oid.hex(), zero)
    assert refused.returncode == 1 and "is marked WIP" in refused.stderr
    ok = run(first.oid.hex(), zero)
    assert ok.returncode == 0, ok.stderr
    assert (
        json.loads(
            subprocess.run(
                [sys.executable, "-m", "dits.cli.main", "log", "--json"],
                cwd=repo.root,
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )[0]["commit"]
        == second.oid.hex()
    )

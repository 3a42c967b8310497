"""Hermetic test environment: no DITS_* from the caller, HOME and git config in tmp."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dits.cli.main import main
from dits.repository import Repository


@pytest.fixture(autouse=True)
def clean_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    for key in list(os.environ):
        if key.startswith(("DITS_", "GIT_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    # One zstd speed model for the session (dits.staging measures it once per machine).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    # The commit identity falls back to the user's git config; give every test one.
    (home / ".gitconfig").write_text("[user]\n\tname = Git Fallback\n\temail = git@example.com\n")


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    """An initialised on-disk repository with an identity."""
    root = tmp_path / "work"
    root.mkdir()
    r = Repository.init(root)
    r.config.set("user.name", "Test Editor")
    r.config.set("user.email", "test@example.com")
    yield r
    r.close()


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


class DitsRunner:
    """Runs the CLI in-process (click) or as a subprocess, returning (code, stdout, stderr)."""

    def __init__(self, cwd: Path, subprocess_mode: bool = False) -> None:
        self.cwd = cwd
        self.subprocess_mode = subprocess_mode

    def __call__(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        if self.subprocess_mode:
            proc = subprocess.run(
                [sys.executable, "-m", "dits.cli.main", *args],
                cwd=self.cwd,
                capture_output=True,
                text=True,
                input=input,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                check=False,
            )
            return proc.returncode, proc.stdout, proc.stderr
        runner = CliRunner()
        result = runner.invoke(
            _main_wrapper, ["-C", str(self.cwd), *args], input=input, catch_exceptions=False
        )
        return result.exit_code, result.stdout, result.stderr


def _main_wrapper_impl(args: list[str]) -> int:
    return main(args)


import click  # noqa: E402


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def _main_wrapper(ctx: click.Context) -> None:
    ctx.exit(_main_wrapper_impl(list(ctx.args)))


@pytest.fixture(params=["inprocess", "subprocess"])
def dits_any(request: pytest.FixtureRequest, tmp_path: Path) -> DitsRunner:
    """The same CLI test, in-process and as a subprocess."""
    work = tmp_path / "cli"
    work.mkdir()
    return DitsRunner(work, subprocess_mode=request.param == "subprocess")


@pytest.fixture
def dits(tmp_path: Path) -> DitsRunner:
    """The CLI in-process, in a fresh folder."""
    work = tmp_path / "cli"
    work.mkdir()
    return DitsRunner(work)


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``8m``) at ``mount_point``, for disk-full tests; skips the
    test where mounting is not allowed (needs root and mount privileges)."""
    mount_point.mkdir(exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)

"""A dits-remote on loopback in a child process, for `dits demo`, the tests and the benchmarks.

It runs ``python -m remote.cli`` as a separate process, the way an administrator runs
``dits-remote``, so the client code never imports the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from dits.errors import DitsError

__all__ = ["LocalServer", "peak_rss", "remote_cli"]

_REPO_ROOT = str(Path(__file__).resolve().parents[2])


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    # Works from a source checkout as well as from an installed package.
    path = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def peak_rss(pid: int) -> int:
    """Peak resident set (VmHWM) of process ``pid`` in bytes; 0 if unknown (not Linux, gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def remote_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``dits-remote ARGS`` to completion and return its standard output, stripped.

    Raises:
        DitsError: it exited non-zero (its standard error is in the message).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "remote.cli", *args],
        capture_output=True,
        text=True,
        env=_env(env),
        check=False,
    )
    if proc.returncode != 0:
        raise DitsError(f"dits-remote {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


class LocalServer:
    """``dits-remote serve --root ROOT`` on 127.0.0.1; its log goes to ``ROOT/server.log``."""

    def __init__(self, root: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra = extra
        self.env = env
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, listen: str = "127.0.0.1:0") -> int:
        """Start serving and return the port once the server says it is listening."""
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "remote.cli",
                    "serve",
                    "--root",
                    str(self.root),
                    "--listen",
                    listen,
                    *self.extra,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=_env(self.env),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait()
            raise DitsError(f"dits-remote did not start; see {self.root / 'server.log'}")
        self.port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        return self.port

    def url(self, repo: str) -> str:
        return f"dits://127.0.0.1:{self.port}/{repo}"

    def peak_rss(self) -> int:
        """The server's peak resident set (VmHWM) in bytes, 0 if unknown."""
        return 0 if self.proc is None else peak_rss(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

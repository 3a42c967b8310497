"""The agent's control channel: a Unix socket only its owner can open, one JSON line each way.

Files under ``.dits/speculative/`` (the folder is created 0700):

* ``agent.sock``: the socket (0600). The daemon also checks the peer's uid (SO_PEERCRED) and
  refuses anyone else, so a shared machine's other users cannot steer or read the agent.
* ``agent.pid``: the daemon's pid, for people and for ``stop`` when the socket is wedged.
* ``agent.lock``: held (flock) by the running daemon for its whole life: at most one agent per
  repository, and a crashed agent's lock is released by the kernel.
* ``agent.log``: the daemon's log.

Requests are ``{"cmd": NAME, ...}``; answers ``{"ok": true, ...}`` or
``{"ok": false, "error": TEXT}``. Commands: status, pause, resume, clear, stop, push-begin,
push-end. The message format is local to one machine and one version of dits, not a protocol.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dits.errors import DitsError

__all__ = [
    "AgentNotRunningError",
    "AgentPaths",
    "agent_running",
    "request",
    "yielding_to_push",
]

_MAX_LINE = 1 << 20


class AgentNotRunningError(DitsError):
    """No agent answers on this repository's control socket."""


class AgentPaths:
    """Where one repository's agent keeps its files."""

    def __init__(self, dits_dir: Path) -> None:
        self.dir = dits_dir / "speculative"
        self.sock = self.dir / "agent.sock"
        self.pid = self.dir / "agent.pid"
        self.lock = self.dir / "agent.lock"
        self.log = self.dir / "agent.log"
        self.cache = self.dir / "cache"

    def ensure(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)  # mkdir's mode is masked by umask; this folder must not be

    def read_pid(self) -> int | None:
        try:
            return int(self.pid.read_text().strip())
        except (OSError, ValueError):
            return None


def agent_running(paths: AgentPaths) -> bool:
    """Whether a daemon holds this repository's agent lock (it may still be starting)."""
    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the flock if we just took it
    return False


def request(paths: AgentPaths, cmd: str, *, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one command to the agent and return its answer.

    Raises:
        AgentNotRunningError: nothing listens on the socket (or it is not ours).
        DitsError: the agent answered with an error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(paths.sock))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError):
            raise AgentNotRunningError(
                "the speculative agent is not running; start it with 'dits speculative start'"
            ) from None
        data = b""
        try:
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            while not data.endswith(b"\n"):
                part = sock.recv(65536)
                if not part:
                    break
                data += part
                if len(data) > _MAX_LINE:
                    raise DitsError("the speculative agent sent an oversized answer")
        except (ConnectionResetError, BrokenPipeError):
            data = b""  # it died while answering: as good as not running
    except TimeoutError:
        raise DitsError(
            f"the speculative agent did not answer {cmd!r} within {timeout:.0f} s"
        ) from None
    finally:
        sock.close()
    if not data:
        raise AgentNotRunningError("the speculative agent closed the connection without answering")
    answer: dict[str, Any] = json.loads(data)
    if not answer.get("ok"):
        raise DitsError(f"speculative agent: {answer.get('error', 'failed')}")
    return answer


@contextlib.contextmanager
def yielding_to_push(dits_dir: Path) -> Iterator[bool]:
    """Ask a running agent to leave the uplink to an explicit push while the block runs.

    Best effort: without an agent this does nothing. Yields whether an agent was told.
    """
    paths = AgentPaths(dits_dir)
    told = False
    if paths.sock.exists():
        try:
            request(paths, "push-begin", timeout=2.0)
            told = True
        except DitsError:
            told = False
    try:
        yield told
    finally:
        if told:
            with contextlib.suppress(DitsError):
                request(paths, "push-end", timeout=2.0)

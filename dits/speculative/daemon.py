"""The agent's process: detached start, single instance, control socket, clean stop.

``spawn`` starts ``python -m dits.speculative.daemon ROOT`` in a new session (it survives the
terminal that started it: no controlling tty, stdin from /dev/null, output to ``agent.log``) and
waits until the agent answers on its socket. The daemon holds ``agent.lock`` with flock for its
whole life, so a second start is refused and a crashed agent never blocks the next one. SIGTERM
and the ``stop`` command end it the same way: the watchers and uploads stop, the queue is
dropped (everything in it is in the local store and is found again by the next start's scan).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dits.errors import DitsError, UsageError
from dits.speculative.control import AgentNotRunningError, AgentPaths, agent_running, request

__all__ = ["spawn", "stop_agent"]

log = logging.getLogger("dits.speculative")

_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 15.0


def spawn(root: Path, dits_dir: Path) -> int:
    """Start the agent for the repository at ``root``; return its pid once it answers.

    Raises:
        UsageError: an agent already runs for this repository.
        DitsError: the agent exited or did not answer in time (its log's last line is shown).
    """
    paths = AgentPaths(dits_dir)
    paths.ensure()
    if agent_running(paths):
        raise UsageError(f"the speculative agent is already running (pid {paths.read_pid()})")
    # The child must import this very dits, installed or not.
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with open(paths.log, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dits.speculative.daemon", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # its own session: no SIGHUP when the terminal closes
            close_fds=True,
            cwd=root,
            env=env,
        )
    # The launched process forks the daemon and exits at once (the classic double fork), so
    # the daemon is nobody's child here and never lingers as a zombie of this process.
    if proc.wait(timeout=_START_TIMEOUT) != 0:
        raise DitsError(f"the speculative agent did not start: {_last_log_line(paths)}")
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return int(request(paths, "status", timeout=2.0)["pid"])
        except AgentNotRunningError:
            if not agent_running(paths) and time.monotonic() > deadline - _START_TIMEOUT + 2:
                raise DitsError(
                    f"the speculative agent exited at start: {_last_log_line(paths)}"
                ) from None
            time.sleep(0.05)
        except DitsError:
            time.sleep(0.05)
    raise DitsError(f"the speculative agent did not start in time: {_last_log_line(paths)}")


def stop_agent(dits_dir: Path) -> int | None:
    """Stop the running agent and wait for it to exit; return its pid (None: none ran)."""
    paths = AgentPaths(dits_dir)
    if not agent_running(paths):
        return None
    pid = paths.read_pid()
    try:
        request(paths, "stop", timeout=5.0)
    except DitsError:  # wedged or half-started: fall back to the signal
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while agent_running(paths):
        if time.monotonic() > deadline:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            break
        time.sleep(0.05)
    while pid is not None and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # the lock goes first; the interpreter takes a moment to exit
    return pid


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _last_log_line(paths: AgentPaths) -> str:
    try:
        lines = paths.log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


# -- the daemon process ---------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if os.fork() > 0:
        os._exit(0)  # the launcher returns; the daemon below is re-parented to init
    root = Path(argv[0]).resolve()
    paths = AgentPaths(root / ".dits")
    paths.ensure()
    lock_fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("dits-agent: another agent already runs for this repository", file=sys.stderr)
        return 1
    tmp = paths.pid.with_name("agent.pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, paths.pid)
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("DITS_DEBUG") == "1" else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    log.info("agent starting for %s (pid %d)", root, os.getpid())
    _lower_priority(root)
    try:
        asyncio.run(_serve(root, paths))
    except DitsError as exc:
        log.error("agent stopped: %s", exc)
        return 1
    except Exception:
        log.exception("agent crashed")
        return 70
    finally:
        with contextlib.suppress(OSError):
            paths.sock.unlink()
        with contextlib.suppress(OSError):
            paths.pid.unlink()
        os.close(lock_fd)
    log.info("agent stopped")
    return 0


def _lower_priority(root: Path) -> None:
    """``speculative.priority = low`` (the default): the agent yields CPU and disk to the
    editor and to explicit commands (nice 10, idle I/O class where the OS has one)."""
    from dits.config import Config
    from dits.speculative.config import SpeculativeConfig

    try:
        cfg = SpeculativeConfig.from_config(Config(root / ".dits" / "config"))
    except DitsError:
        return  # the agent itself reports the bad config
    if cfg.priority != "low":
        return
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(Exception):
        import psutil

        io_class = getattr(psutil, "IOPRIO_CLASS_IDLE", None)
        if io_class is not None:
            psutil.Process().ionice(io_class)


async def _serve(root: Path, paths: AgentPaths) -> None:
    from dits.speculative.engine import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(root)
    try:
        with contextlib.suppress(FileNotFoundError):
            paths.sock.unlink()  # a previous agent's, dead: we hold the lock
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            server = await asyncio.start_unix_server(
                lambda r, w: _client(agent, stop, r, w), path=str(paths.sock)
            )
        finally:
            os.umask(old_umask)
        os.chmod(paths.sock, 0o600)
        log.info("listening on %s", paths.sock)
        async with server:
            await agent.run(stop)
    finally:
        agent.close()


async def _client(
    agent: Any, stop: asyncio.Event, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        if not _same_user(writer):
            log.warning("refused a control connection from another user")
            return
        line = await asyncio.wait_for(reader.readline(), timeout=10.0)
        try:
            cmd = json.loads(line)
            answer = await _dispatch(agent, stop, cmd)
        except (ValueError, TypeError, KeyError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except DitsError as exc:
            answer = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True  # the 0600 socket in a 0700 folder is the guard there
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return bool(uid == os.getuid())


async def _dispatch(agent: Any, stop: asyncio.Event, cmd: dict[str, Any]) -> dict[str, Any]:
    name = cmd["cmd"]
    if name == "status":
        return {"ok": True, **agent.status()}
    if name == "pause":
        agent.pause()
    elif name == "resume":
        agent.resume()
    elif name == "clear":
        return {"ok": True, "dropped": agent.clear()}
    elif name == "push-begin":
        agent.push_begin()
    elif name == "push-end":
        agent.push_end()
    elif name == "stop":
        stop.set()
    else:
        return {"ok": False, "error": f"unknown command {name!r}"}
    return {"ok": True}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Shared pieces of the remote tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dits.core.codec import encode_object
from dits.core.ids import ObjectId, hash_bytes
from dits.core.objects import Tree, TreeEntry, TreeEntryKind
from dits.net.local_server import LocalServer, remote_cli
from dits.remotes import RemoteSpec, parse_url
from tests.conftest import DitsRunner


def hostile_tree(name: str) -> bytes:
    """A tree encoding naming ``name``, built below the Tree class, which would refuse it."""
    tree = object.__new__(Tree)
    entry = TreeEntry(name, TreeEntryKind.FILE, 0o100644, 0, ObjectId(bytes(32)))
    object.__setattr__(tree, "entries", (entry,))
    return encode_object(tree)


REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    root: Path
    port: int
    proc: LocalServer
    write_token: str
    read_token: str
    other_token: str

    def url(self, repo: str = "proj") -> str:
        return f"dits://127.0.0.1:{self.port}/{repo}"

    def spec(self, token: str, repo: str = "proj", transport: str = "auto") -> RemoteSpec:
        return RemoteSpec("origin", parse_url(self.url(repo)), token, transport)


def new_root(root: Path, repo: str = "proj") -> str:
    """A server root with repository ``repo``; returns a write token for it."""
    remote_cli("init", "--root", str(root), repo)
    return remote_cli("token", "create", "--root", str(root), "--repo", repo, "--write")


def start_server(root: Path, *extra: str) -> tuple[LocalServer, int]:
    listen = "127.0.0.1:0"
    if "--listen" in extra:
        i = extra.index("--listen")
        listen, extra = extra[i + 1], extra[:i] + extra[i + 2 :]
    server = LocalServer(root, *extra)
    return server, server.start(listen)


def stop_server(server: LocalServer) -> None:
    server.stop(15)


def server_fsck(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remote.cli", "fsck", "--root", str(root), *extra, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )


def make_repo(dits: DitsRunner, files: dict[str, bytes]) -> None:
    assert dits("init")[0] == 0
    for name, data in files.items():
        path = dits.cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert dits("add", ".")[0] == 0
    assert dits("commit", "-m", "first")[0] == 0


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hash_bytes(p.read_bytes()).hex()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".dits" not in p.parts
    }

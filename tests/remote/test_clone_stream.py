"""`dits clone` streams chunks straight into the working files and the store (real server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dits.core.ids import ObjectId
from dits.core.objects import Manifest
from dits.protocol import (
    Blob,
    Encoding,
    Get,
    Hello,
    Limits,
    ListRefs,
    Message,
    Permission,
    Refs,
    RequestAssembler,
    Welcome,
    encode_message,
)
from dits.repository import Repository
from dits.store.packs import PackBlobStore
from tests.conftest import DitsRunner, random_bytes
from tests.remote.helpers import REPO_ROOT, Server, make_repo, tree_digest
from tests.remote.test_rogue_server import RogueServer

BLOCK = random_bytes(2_000_000, 40)  # long enough that its inner chunks repeat wherever it goes


def _source_files() -> dict[str, bytes]:
    return {
        # BLOCK twice in one file, and again in another: chunks repeated within and across files.
        "shots/a.mov": random_bytes(700_000, 41) + BLOCK + random_bytes(300_000, 42) + BLOCK,
        "shots/b.mov": random_bytes(500_000, 43) + BLOCK,
        "project/edit/v1/timeline.prproj": b"<xml>" * 3000,
        "empty.txt": b"",
        "tools/render.sh": b"#!/bin/sh\necho render\n",
    }


def _pushed_repo(server: Server, work: Path, files: dict[str, bytes]) -> dict[str, object]:
    """Commit ``files`` (and whatever ``work`` already holds) and push; return the push report."""
    work.mkdir(exist_ok=True)
    dits = DitsRunner(work)
    make_repo(dits, files)
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    code, out, err = dits("push", "--json")
    assert code == 0, err
    report: dict[str, object] = json.loads(out)
    return report


def _manifests(root: Path) -> dict[str, Manifest]:
    from dits.ops.snapshot import commit_snapshot

    with Repository.open(root) as repo:
        snap = commit_snapshot(repo, repo.head_commit())
        return {
            p: repo.get_typed(e.oid, Manifest)
            for p, e in snap.items()
            if e.kind.name == "FILE" and e.size
        }


def _leftovers(clone_dir: Path) -> list[str]:
    """Temporary files of a checkout, in .dits/tmp or in the tree."""
    tmp = clone_dir / ".dits" / "tmp"
    found = [f".dits/tmp/{n}" for n in os.listdir(tmp)] if tmp.is_dir() else []
    found += [str(p) for p in clone_dir.rglob("*dits-tmp*")]
    return found


def test_clone_writes_files_links_modes_and_stores_every_chunk(
    server: Server, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    files = _source_files()
    work.mkdir()
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    (work / "tools" / "render.sh").chmod(0o755)
    (work / "latest.mov").symlink_to("shots/a.mov")
    report = _pushed_repo(server, work, {})
    # The fixture's premise: chunks repeat inside a.mov and between a.mov and b.mov.
    manifests = _manifests(tmp_path / "work")
    a_ids = [c.id for c in manifests["shots/a.mov"].chunks]
    b_ids = {c.id for c in manifests["shots/b.mov"].chunks}
    assert len(set(a_ids)) < len(a_ids) and b_ids & set(a_ids)

    clone_dir = tmp_path / "clone"
    code, out, err = DitsRunner(tmp_path)(
        "clone", server.url(), str(clone_dir), "--token", server.read_token, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["chunks_received"] == report["chunks_total"]  # each distinct chunk once
    assert tree_digest(clone_dir) == tree_digest(work)
    assert (clone_dir / "empty.txt").read_bytes() == b""
    assert os.readlink(clone_dir / "latest.mov") == "shots/a.mov"
    assert (clone_dir / "tools" / "render.sh").stat().st_mode & 0o777 == 0o755
    assert (clone_dir / "shots" / "a.mov").stat().st_mode & 0o777 == 0o644
    clone = DitsRunner(clone_dir)
    code, out, err = clone("status", "--json")
    assert code == 0 and json.loads(out)["clean"] is True, out + err
    code, out, err = clone("fsck", "--json")
    assert code == 0 and json.loads(out)["clean"] is True, out + err
    with Repository.open(clone_dir) as repo:
        wanted = {c.id for m in manifests.values() for c in m.chunks}
        assert repo.chunks.has_many(wanted) == wanted
        assert repo.current_branch() == "main"
        assert repo.refs.get_ref("refs/remotes/origin/main") == repo.head_commit()
    assert _leftovers(clone_dir) == []
    # A finished clone is never "resumed": that would overwrite the user's edits.
    (clone_dir / "empty.txt").write_bytes(b"an edit")
    code, _, err = DitsRunner(tmp_path)(
        "clone", server.url(), str(clone_dir), "--token", server.read_token
    )
    assert code != 0 and "already a dits repository" in err and "Traceback" not in err
    assert (clone_dir / "empty.txt").read_bytes() == b"an edit"


def test_fresh_chunks_go_to_the_files_without_a_store_read(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dits.ops.clone
    from dits.ops.checkout import PendingFile
    from dits.ops.sync import clone

    files = {f"reel/{i}.mov": random_bytes(2_500_000, 50 + i) for i in range(4)}
    _pushed_repo(server, tmp_path / "work", files)
    monkeypatch.setattr(dits.ops.clone, "BATCH_BYTES", 1 << 20)  # several batches per file
    events: list[str] = []
    reads: list[ObjectId] = []

    def spy(name: str) -> None:
        original = getattr(PackBlobStore, name)

        def read(self: PackBlobStore, oid: ObjectId, *args: object, **kw: object) -> object:
            reads.append(oid)
            return original(self, oid, *args, **kw)

        monkeypatch.setattr(PackBlobStore, name, read)

    for name in ("get", "get_stored", "read_record_into"):
        spy(name)
    put_many, commit = PackBlobStore.put_many, PendingFile.commit

    def put_spy(self: PackBlobStore, items: object) -> int:
        events.append("put")
        return put_many(self, items)  # type: ignore[arg-type]

    def commit_spy(self: PendingFile) -> os.stat_result:
        events.append(f"commit {self.path}")
        return commit(self)

    monkeypatch.setattr(PackBlobStore, "put_many", put_spy)
    monkeypatch.setattr(PendingFile, "commit", commit_spy)
    sizes: list[int] = []
    repo, result = clone(
        server.url(),
        tmp_path / "clone",
        token=server.read_token,
        on_total=sizes.append,
        on_checkout=sizes.append,
    )
    repo.close()
    assert tree_digest(tmp_path / "clone") == tree_digest(tmp_path / "work")
    assert reads == []  # every chunk went from the network into its file
    # Streaming: the first file is in place before the last chunks are stored.
    first = events.index("commit reel/0.mov")
    last_put = len(events) - 1 - events[::-1].index("put")
    assert first < last_put, events
    assert sizes == [sum(len(d) for d in files.values())] * 2
    assert result.chunks_received > 4


def test_files_stay_open_only_between_their_first_and_last_chunk(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import dits.ops.clone
    from dits.ops.checkout import PendingFile
    from dits.ops.sync import clone

    files = {f"stills/{i:03}.tif": random_bytes(400_000, 80 + i) for i in range(24)}
    _pushed_repo(server, tmp_path / "work", files)
    monkeypatch.setattr(dits.ops.clone, "BATCH_BYTES", 100_000)  # files span several batches
    lock = threading.Lock()
    now, peak = [0], [0]
    init, commit = PendingFile.__init__, PendingFile.commit

    def init_spy(self: PendingFile, *args: object) -> None:
        init(self, *args)  # type: ignore[arg-type]
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])

    def commit_spy(self: PendingFile) -> os.stat_result:
        with lock:
            now[0] -= 1
        return commit(self)

    monkeypatch.setattr(PendingFile, "__init__", init_spy)
    monkeypatch.setattr(PendingFile, "commit", commit_spy)
    repo, _ = clone(server.url(), tmp_path / "clone", token=server.read_token)
    repo.close()
    assert tree_digest(tmp_path / "clone") == tree_digest(tmp_path / "work")
    assert 1 <= peak[0] <= 2 * dits.ops.clone.STREAMS + 1 and now[0] == 0, peak


_SLOW_CLONE = """
import sys, time
import dits.ops.clone
from dits.store.packs import PackBlobStore
from dits.cli.main import main

dits.ops.clone.BATCH_BYTES = 1 << 20
put_many = PackBlobStore.put_many

def slow(self, items):
    time.sleep(0.1)
    return put_many(self, items)

PackBlobStore.put_many = slow
sys.exit(main(sys.argv[1:]))
"""


def test_clone_killed_after_some_files_resumes_to_an_identical_tree(
    server: Server, tmp_path: Path
) -> None:
    names = [f"day1/cam{i}.mov" for i in range(8)]
    files = {name: random_bytes(2_000_000, 60 + i) for i, name in enumerate(names)}
    report = _pushed_repo(server, tmp_path / "work", files)
    clone_dir = tmp_path / "clone"
    args = [server.url(), str(clone_dir), "--token", server.read_token]
    first = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLONE, "clone", *args],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    present: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None:
        present = [n for n in names if (clone_dir / n).exists()]
        if len(present) >= 2:
            break
        time.sleep(0.005)
    first.kill()
    first.wait()
    assert 2 <= len(present) < len(names), present  # killed after some files, before the end
    code, out, err = DitsRunner(tmp_path)("clone", *args, "--json")
    assert code == 0, err
    resumed = json.loads(out)
    assert 0 < resumed["chunks_received"] < report["chunks_total"]  # only what was missing
    assert tree_digest(clone_dir) == tree_digest(tmp_path / "work")
    assert _leftovers(clone_dir) == []
    code, out, err = DitsRunner(clone_dir)("status", "--json")
    assert code == 0 and json.loads(out)["clean"] is True, out + err
    assert DitsRunner(clone_dir)("fsck")[0] == 0


class CorruptingServer(RogueServer):
    """Serves a real repository's refs, objects and chunks, with one chunk's bytes altered."""

    def __init__(self, tmp: Path, source: Path, corrupt: ObjectId) -> None:
        super().__init__(tmp, "unused")
        with Repository.open(source) as repo:
            self.tip = repo.head_commit()
            self.objects = {oid: repo.objects.get(oid) for oid in repo.objects.iter_ids()}
            self.chunks = {oid: repo.chunks.get(oid) for oid in repo.chunks.iter_ids()}
        bad = bytearray(self.chunks[corrupt])
        bad[len(bad) // 2] ^= 0xFF
        self.chunks[corrupt] = bytes(bad)

    async def _handle(self, reader: object, writer: object, info: object) -> None:
        asm = RequestAssembler(Limits())
        msgs: list[Message] = []
        while not asm.complete:
            msgs += asm.feed(await reader.readexactly(asm.bytes_needed))  # type: ignore[attr-defined]
        msg = msgs[0]
        out: list[Message]
        if isinstance(msg, Hello):
            out = [Welcome(1, Permission.READ, "rogue", Limits())]
        elif isinstance(msg, ListRefs):
            assert self.tip is not None
            out = [Refs("refs/heads/main", (("refs/heads/main", self.tip),))]
        elif isinstance(msg, Get):
            store = self.chunks if msg.kind.name == "CHUNK" else self.objects
            out = [Blob(i, Encoding.RAW, len(store[i]), store[i]) for i in msg.ids]
        else:
            raise AssertionError(f"unexpected {msg}")
        for i, m in enumerate(out):
            for buf in encode_message(m, final=i == len(out) - 1, max_payload=1 << 20):
                writer.write(buf)  # type: ignore[attr-defined]
        await writer.drain()  # type: ignore[attr-defined]


def test_a_wrong_chunk_fails_the_clone_and_leaves_no_partial_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    files = {
        "a.mov": random_bytes(1_500_000, 70),
        "b.mov": random_bytes(3_000_000, 71),
        "c.mov": random_bytes(1_000_000, 72),
    }
    make_repo(DitsRunner(work), files)
    bad = _manifests(work)["b.mov"].chunks[3].id
    with CorruptingServer(tmp_path, work, bad) as rogue:
        target = tmp_path / "victim"
        code, _, err = DitsRunner(tmp_path)(
            "clone", f"dits://127.0.0.1:{rogue.port}/repo", str(target), "--token", ""
        )
    assert code == 5, err
    lines = [line for line in err.splitlines() if "pinned its certificate" not in line]
    assert len(lines) == 1 and bad.hex() in lines[0], err  # one clear line naming the chunk
    assert not (target / "b.mov").exists()
    if not target.exists():
        return  # nothing had been stored, so the clone removed the folder it made
    for name in ("a.mov", "c.mov"):  # whatever is in the tree is complete
        assert not (target / name).exists() or (target / name).read_bytes() == files[name]
    assert _leftovers(target) == []
    with Repository.open(target) as repo:
        assert repo.refs.list_refs() == {}  # nothing points at the incomplete commit
        assert repo.index.read_all() == {}

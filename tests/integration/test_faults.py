"""Bad input and faults: kill -9 loops, disk full, corrupt chunks, changing and unreadable files."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dits.errors import StorageFullError
from dits.ops.add import add_paths
from dits.ops.checkout import CheckoutIncompleteError, restore
from dits.ops.commit import commit
from dits.ops.ingest import FileChangedError, Ingestor
from dits.ops.maintenance import fsck
from dits.ops.status import status
from dits.repository import Repository
from dits.store.faulty import FaultyBlobStore
from dits.store.memory import MemoryBlobStore
from tests.conftest import random_bytes

ROOT = Path(__file__).resolve().parents[2]
ID = {"name": "T", "email": "t@x", "now": 1_700_000_000, "tz_offset_min": 0}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dits.cli.main", *args]


@pytest.mark.slow
def test_kill9_during_add_and_commit_loop(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    Repository.init(root).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(1234)
    acknowledged: list[str] = []
    for i in range(12):
        for j in range(rng.randint(1, 3)):
            (root / f"f{j}.mov").write_bytes(
                random_bytes(rng.randint(1, 12) << 20, rng.randint(0, 10**9))
            )
        cli = f"{sys.executable} -m dits.cli.main"
        script = f"{cli} add . && {cli} commit -m c{i}"
        proc = subprocess.Popen(
            ["sh", "-c", script],
            cwd=root,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 1.5))
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with Repository.open(root) as repo:
            result = fsck(repo)
            assert result.clean, (i, result.bad, result.missing)
            status(repo)  # works after every kill
            head = repo.head_commit()
            if finished and proc.returncode == 0:
                assert head is not None
                acknowledged.append(head.hex())
            if head is not None:
                log_ids = set()
                oid = head
                while True:
                    log_ids.add(oid.hex())
                    c = repo.get_object(oid)
                    if not c.parents:  # type: ignore[union-attr]
                        break
                    oid = c.parents[0]  # type: ignore[union-attr]
                # No acknowledged commit is ever lost.
                assert set(acknowledged) <= log_ids


def test_disk_full_during_add_leaves_index_untouched(repo: Repository) -> None:
    (repo.root / "a.mov").write_bytes(random_bytes(200_000, 1))
    add_paths(repo, [""])
    commit(repo, "c", **ID)  # type: ignore[arg-type]
    before = repo.index.read_all()
    (repo.root / "a.mov").write_bytes(random_bytes(6 << 20, 2))
    (repo.root / "b.mov").write_bytes(random_bytes(6 << 20, 3))
    repo.chunks = FaultyBlobStore(repo.chunks, fail_on_put_call=1)
    with pytest.raises(StorageFullError):
        add_paths(repo, [""])
    repo.chunks = repo.chunks.inner  # type: ignore[attr-defined]
    assert repo.index.read_all() == before
    assert fsck(repo).clean
    # Retrying after space is freed works.
    add_paths(repo, [""])
    commit(repo, "c2", **ID)  # type: ignore[arg-type]
    assert fsck(repo).clean


def _corrupt_one_chunk(repo: Repository, chunk_id: bytes) -> None:
    where = repo.chunks.locate(chunk_id)  # type: ignore[attr-defined]
    repo.close()
    with open(where.path, "r+b") as fh:  # flip one bit of the chunk's bytes in its pack
        fh.seek(where.data_offset + where.stored_size // 2)
        byte = fh.read(1)
        fh.seek(where.data_offset + where.stored_size // 2)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_corrupt_chunk_is_named_and_other_files_restore(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    repo = Repository.init(root)
    for name, seed in (("a.mov", 1), ("b.mov", 2), ("c.mov", 3)):
        (root / name).write_bytes(random_bytes(300_000, seed))
    add_paths(repo, [""])
    commit(repo, "c", **ID)  # type: ignore[arg-type]
    entry = repo.index.get("b.mov")
    assert entry is not None
    from dits.core.objects import Manifest

    bad = repo.get_typed(entry.oid, Manifest).chunks[0].id
    _corrupt_one_chunk(repo, bad)
    repo = Repository.open(root)
    result = fsck(repo)
    assert len(result.bad) == 1 and "b.mov" in result.bad[0] and bad.hex()[:12] in result.bad[0]
    for name in ("a.mov", "b.mov", "c.mov"):
        (root / name).unlink()
    with pytest.raises(CheckoutIncompleteError) as err:
        restore(repo, [""])
    assert "b.mov" in str(err.value)
    assert (root / "a.mov").read_bytes() == random_bytes(300_000, 1)
    assert (root / "c.mov").read_bytes() == random_bytes(300_000, 3)
    assert not (root / "b.mov").exists()  # never written with wrong bytes
    assert not any(p.name.startswith(".b.mov") for p in root.iterdir())  # no temp left
    repo.close()


def test_file_changed_once_is_reread_and_always_changing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "render.mov"
    path.write_bytes(random_bytes(5 << 20, 1))
    calls = {"n": 0}

    from dits.core.chunking import choose_profile

    def mutate_first_time(name: str, size: int):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            with open(path, "ab") as fh:
                fh.write(b"more frames")
        return choose_profile(name, size)

    store = MemoryBlobStore()
    with Ingestor(store, profile_for=mutate_first_time) as ing:
        manifest, _ = ing.ingest_file(path, "render.mov", 0)
        assert ing.stats.reread_files == ["render.mov"]
    assert manifest.size == (5 << 20) + len(b"more frames")

    def mutate_always(name: str, size: int):  # type: ignore[no-untyped-def]
        with open(path, "ab") as fh:
            fh.write(b"x")
        return choose_profile(name, size)

    with Ingestor(store, profile_for=mutate_always) as ing, pytest.raises(FileChangedError):
        ing.ingest_file(path, "render.mov", 0)


def test_unreadable_file_is_reported_and_the_rest_added(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    Repository.init(root).close()
    (root / "ok.mov").write_bytes(b"fine")
    (root / "secret.mov").write_bytes(b"locked")
    os.chmod(root / "secret.mov", 0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = _cli("add", ".")
    if os.geteuid() == 0:
        # root reads anything; drop the capabilities that let it (util-linux setpriv).
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 7, proc.stderr
    assert "secret.mov: permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr
    with Repository.open(root) as repo:
        assert set(repo.index.read_all()) == {"ok.mov"}


def test_second_writer_gets_locked_error_naming_the_holder(tmp_path: Path) -> None:
    from dits.store.lock import RepoLock

    root = tmp_path / "w"
    root.mkdir()
    Repository.init(root).close()
    (root / "a.mov").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with RepoLock(root / ".dits" / "lock").acquire(purpose="dits add"):
        proc = subprocess.run(
            _cli("add", "."), cwd=root, env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 6
        assert f"pid {os.getpid()}" in proc.stderr and "dits add" in proc.stderr
        # Readers are never blocked by the writer lock.
        st = subprocess.run(
            _cli("status", "--json"), cwd=root, env=env, capture_output=True, text=True, check=False
        )
        assert st.returncode == 0
    proc = subprocess.run(
        _cli("add", "."), cwd=root, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0

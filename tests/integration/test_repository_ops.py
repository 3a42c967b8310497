"""Porcelain on a real on-disk repository (LMDB): add, status, commit, log, diff, branches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dits.core.objects import Commit, Manifest
from dits.errors import ConflictError, UsageError
from dits.ops.add import PathspecError, add_paths
from dits.ops.branch import create_branch, delete_branch
from dits.ops.checkout import restore, switch
from dits.ops.commit import NothingToCommitError, commit
from dits.ops.diff import diff_snapshots
from dits.ops.history import walk_log
from dits.ops.maintenance import fsck, gc
from dits.ops.paths import move, remove
from dits.ops.status import status
from dits.repository import Repository
from tests.conftest import random_bytes

ID = {"name": "T", "email": "t@x", "tz_offset_min": 0}


def do_commit(repo: Repository, msg: str, now: int = 1_700_000_000) -> bytes:
    return commit(repo, msg, now=now, **ID).oid  # type: ignore[arg-type]


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_add_commit_and_status_round_trip(repo: Repository) -> None:
    write(repo.root, "media/a.mov", random_bytes(3 << 20, 1))
    write(repo.root, "project.prproj", b"<xml/>\n" * 100)
    st = status(repo)
    assert st.untracked == ["media/a.mov", "project.prproj"]
    result = add_paths(repo, [""])
    assert result.added == ["media/a.mov", "project.prproj"]
    assert result.stats.new_chunks == result.stats.chunks > 3
    st = status(repo)
    assert st.staged_added == ["media/a.mov", "project.prproj"]
    assert st.untracked == [] and st.modified == []
    oid = do_commit(repo, "first")
    assert status(repo).clean
    c = repo.get_typed(oid, Commit)
    assert c.parents == () and c.message == "first\n"
    assert fsck(repo).clean


def test_readd_of_unchanged_tree_reads_nothing(repo: Repository) -> None:
    for i in range(20):
        write(repo.root, f"f{i}.bin", random_bytes(1000, i))
    add_paths(repo, [""])
    again = add_paths(repo, [""])
    assert again.unchanged == 20 and again.stats.files == 0 and again.added == []


def test_modified_deleted_and_touched_files(repo: Repository) -> None:
    a = write(repo.root, "a.bin", random_bytes(100_000, 1))
    b = write(repo.root, "b.bin", random_bytes(100_000, 2))
    add_paths(repo, [""])
    do_commit(repo, "one")
    # Touch without changing content: stat differs, content does not -> not modified.
    os.utime(a, ns=(1, 1))
    b.unlink()
    write(repo.root, "c.bin", b"new")
    st = status(repo)
    assert st.modified == [] and st.deleted == ["b.bin"] and st.untracked == ["c.bin"]
    a.write_bytes(random_bytes(100_000, 3))
    assert status(repo).modified == ["a.bin"]
    res = add_paths(repo, [""])
    assert res.modified == ["a.bin"] and res.removed == ["b.bin"] and res.added == ["c.bin"]
    st = status(repo)
    assert st.staged_modified == ["a.bin"] and st.staged_deleted == ["b.bin"]


def test_edit_in_the_middle_reuses_chunks(repo: Repository) -> None:
    data = random_bytes(8 << 20, 5)
    f = write(repo.root, "clip.mov", data)
    add_paths(repo, ["clip.mov"])
    first = do_commit(repo, "v1")
    f.write_bytes(data[: 4 << 20] + b"X" * 100 + data[4 << 20 :])
    res = add_paths(repo, ["clip.mov"])
    assert res.stats.new_chunks <= 2
    second = do_commit(repo, "v2", now=1_700_000_100)
    d = diff_snapshots(repo, first.hex(), second.hex())
    (fd,) = d.files
    assert fd.status == "modified" and fd.chunks - fd.chunks_reused <= 2
    assert fd.bytes_changed < 3 << 20


def test_nothing_to_commit_and_empty_message(repo: Repository) -> None:
    with pytest.raises(NothingToCommitError):
        do_commit(repo, "x")
    with pytest.raises(UsageError):
        do_commit(repo, "   ")


def test_log_orders_newest_first(repo: Repository) -> None:
    for i in range(3):
        write(repo.root, "f.txt", f"v{i}".encode())
        add_paths(repo, [""])
        do_commit(repo, f"c{i}", now=1_700_000_000 + i)
    log = list(walk_log(repo, repo.resolve("HEAD")))
    assert [e.commit.message for e in log] == ["c2\n", "c1\n", "c0\n"]
    assert repo.resolve("HEAD~2") == log[2].oid
    assert repo.resolve(log[1].oid.hex()[:10]) == log[1].oid


def test_pathspec_that_matches_nothing(repo: Repository) -> None:
    with pytest.raises(PathspecError):
        add_paths(repo, ["nope.mov"])


def test_ditsignore(repo: Repository) -> None:
    write(repo.root, ".ditsignore", b"*.tmp\ncache/\n!keep.tmp\n")
    write(repo.root, "a.tmp", b"1")
    write(repo.root, "keep.tmp", b"2")
    write(repo.root, "cache/x.bin", b"3")
    write(repo.root, "sub/.ditsignore", b"local.txt\n")
    write(repo.root, "sub/local.txt", b"4")
    write(repo.root, "sub/other.txt", b"5")
    res = add_paths(repo, [""])
    assert res.added == [".ditsignore", "keep.tmp", "sub/.ditsignore", "sub/other.txt"]
    assert status(repo).untracked == []


def test_switch_branches_and_refuse_clobber(repo: Repository) -> None:
    write(repo.root, "a.txt", b"main\n")
    write(repo.root, "bin/tool.sh", b"#!/bin/sh\n")
    os.chmod(repo.root / "bin/tool.sh", 0o755)
    add_paths(repo, [""])
    do_commit(repo, "main")
    switch(repo, "feature", create=True)
    write(repo.root, "a.txt", b"feature\n")
    write(repo.root, "only-feature.txt", b"f\n")
    add_paths(repo, [""])
    do_commit(repo, "feature work")
    switch(repo, "main")
    assert (repo.root / "a.txt").read_bytes() == b"main\n"
    assert not (repo.root / "only-feature.txt").exists()
    assert os.stat(repo.root / "bin/tool.sh").st_mode & 0o111
    assert status(repo).clean
    # An uncommitted change to a file the switch would rewrite blocks it, and nothing moves.
    write(repo.root, "a.txt", b"unsaved edit\n")
    with pytest.raises(ConflictError):
        switch(repo, "feature")
    assert (repo.root / "a.txt").read_bytes() == b"unsaved edit\n"
    assert repo.current_branch() == "main"
    # An untracked file in the way blocks it too.
    restore(repo, ["a.txt"])
    write(repo.root, "only-feature.txt", b"mine\n")
    with pytest.raises(ConflictError):
        switch(repo, "feature")
    (repo.root / "only-feature.txt").unlink()
    switch(repo, "feature")
    assert (repo.root / "only-feature.txt").read_bytes() == b"f\n"
    assert status(repo).clean


def test_branch_create_delete(repo: Repository) -> None:
    write(repo.root, "a", b"1")
    add_paths(repo, [""])
    do_commit(repo, "c")
    create_branch(repo, "topic")
    with pytest.raises(UsageError):
        create_branch(repo, "topic")
    with pytest.raises(UsageError):
        create_branch(repo, "bad..name")
    with pytest.raises(UsageError):
        delete_branch(repo, "main")
    delete_branch(repo, "topic")
    assert "topic" not in repo.branches()


def test_restore_and_unstage(repo: Repository) -> None:
    write(repo.root, "a.txt", b"one\n")
    add_paths(repo, [""])
    do_commit(repo, "c")
    write(repo.root, "a.txt", b"two\n")
    add_paths(repo, ["a.txt"])
    restore(repo, ["a.txt"], staged=True, worktree=False)
    st = status(repo)
    assert st.staged_modified == [] and st.modified == ["a.txt"]
    restore(repo, ["a.txt"])
    assert (repo.root / "a.txt").read_bytes() == b"one\n"
    assert status(repo).clean


def test_restore_leaves_no_temp_files_and_sweeps_dead_ones(repo: Repository) -> None:
    import subprocess
    import sys

    write(repo.root, "media/a.mov", random_bytes(2 << 20, 3))
    add_paths(repo, [""])
    do_commit(repo, "c")
    # A checkout killed mid-write leaves its temporary file under .dits/tmp, named by its pid.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    temp_dir = repo.dits_dir / "tmp"
    temp_dir.mkdir(exist_ok=True)
    stale = temp_dir / f"checkout-{dead.pid}-0"
    stale.write_bytes(b"half a file")
    ours = temp_dir / f"checkout-{os.getpid()}-999"
    ours.write_bytes(b"in use by a live process")
    (repo.root / "media/a.mov").write_bytes(b"edited")
    restore(repo, ["media/a.mov"])
    assert sorted(os.listdir(repo.root / "media")) == ["a.mov"]
    assert not stale.exists() and ours.exists()
    assert status(repo).clean


def test_rm_and_mv(repo: Repository) -> None:
    write(repo.root, "dir/a.txt", b"a")
    write(repo.root, "b.txt", b"b")
    add_paths(repo, [""])
    do_commit(repo, "c")
    move(repo, "dir", "renamed")
    assert (repo.root / "renamed/a.txt").exists()
    st = status(repo)
    assert st.staged_added == ["renamed/a.txt"] and st.staged_deleted == ["dir/a.txt"]
    write(repo.root, "b.txt", b"changed")
    with pytest.raises(ConflictError):
        remove(repo, ["b.txt"])
    remove(repo, ["b.txt"], cached=True)
    assert (repo.root / "b.txt").exists()
    assert status(repo).untracked == ["b.txt"]


def test_gc_drops_unreachable_but_keeps_staged(repo: Repository) -> None:
    write(repo.root, "a.bin", random_bytes(300_000, 1))
    add_paths(repo, [""])
    do_commit(repo, "c")
    write(repo.root, "a.bin", random_bytes(300_000, 2))
    add_paths(repo, [""])  # staged, not committed: must survive gc
    write(repo.root, "a.bin", random_bytes(300_000, 3))
    add_paths(repo, [""])  # the previous staged version is now garbage
    result = gc(repo)
    assert result.chunks_removed >= 1 and result.objects_removed >= 1
    assert fsck(repo).clean
    do_commit(repo, "c2")
    assert fsck(repo).clean


def test_symlinks_are_stored_as_links(repo: Repository, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("do not read me")
    os.symlink(outside, repo.root / "link-out")
    os.symlink("target.txt", repo.root / "link-in")
    write(repo.root, "target.txt", b"t")
    add_paths(repo, [""])
    do_commit(repo, "links")
    stats = repo.chunks.stats()
    # The outside file's bytes were never read into the store.
    assert all(b"do not read me" not in repo.chunks.get(i) for i in repo.chunks.iter_ids())
    (repo.root / "link-out").unlink()
    (repo.root / "link-in").unlink()
    restore(repo, ["link-out", "link-in"])
    assert os.readlink(repo.root / "link-out") == str(outside)
    assert os.readlink(repo.root / "link-in") == "target.txt"
    assert stats.count >= 1


def test_odd_file_names(repo: Repository) -> None:
    names = ["spa ce.mov", "ünï✂.txt", "-dash", "#hash", "a'quote\"", "x" * 200]
    for n in names:
        write(repo.root, n, n.encode())
    add_paths(repo, [""])
    do_commit(repo, "odd")
    for n in names:
        (repo.root / n).unlink()
    restore(repo, [""])
    for n in names:
        assert (repo.root / n).read_bytes() == n.encode()


def test_manifest_records_profile_and_file_hash(repo: Repository) -> None:
    import blake3

    data = random_bytes(5 << 20, 9)
    write(repo.root, "big.mov", data)
    add_paths(repo, [""])
    entry = repo.index.get("big.mov")
    assert entry is not None
    m = repo.get_typed(entry.oid, Manifest)
    assert m.profile == "media-v1" or m.profile.startswith("media")
    assert m.file_hash == blake3.blake3(data).digest()
    assert b"".join(repo.chunks.get(c.id) for c in m.chunks) == data


def test_empty_file_round_trips(repo: Repository) -> None:
    write(repo.root, "empty.txt", b"")
    add_paths(repo, [""])
    do_commit(repo, "empty")
    (repo.root / "empty.txt").unlink()
    restore(repo, ["empty.txt"])
    assert (repo.root / "empty.txt").read_bytes() == b""
    assert fsck(repo).clean

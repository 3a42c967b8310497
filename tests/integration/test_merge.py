"""`integrate` (the local half of pull) and `merge_base` on real on-disk repositories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dits.core.ids import ObjectId, short_id
from dits.core.objects import Commit, Identity, Manifest, Tree
from dits.errors import ConflictError, ObjectNotFoundError
from dits.ops.add import add_paths
from dits.ops.checkout import switch
from dits.ops.commit import commit
from dits.ops.merge import (
    MergeResult,
    UnrelatedHistoriesError,
    integrate,
    merge_base,
    merge_bases,
)
from dits.ops.snapshot import build_tree, commit_snapshot
from dits.ops.status import status
from dits.repository import HEADS, Repository
from dits.store.base import RefUpdate
from tests.conftest import random_bytes

ID = {"name": "T", "email": "t@x", "tz_offset_min": 0}
NOW = 1_700_000_000


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def snap_commit(repo: Repository, msg: str, now: int = NOW) -> ObjectId:
    """Stage everything (additions, edits, deletions) and commit."""
    add_paths(repo, [""])
    return commit(repo, msg, now=now, **ID).oid  # type: ignore[arg-type]


def pull(repo: Repository, theirs: ObjectId, **kw: object) -> MergeResult:
    return integrate(repo, theirs, now=NOW + 1000, **ID, **kw)  # type: ignore[arg-type]


def diverge(repo: Repository, base_files: dict[str, bytes]) -> ObjectId:
    """Commit ``base_files`` on main, then branch "theirs" off it; leaves HEAD on theirs."""
    for rel, data in base_files.items():
        write(repo.root, rel, data)
    snap_commit(repo, "base")
    switch(repo, "theirs", create=True)
    return repo.resolve("HEAD")


def state(repo: Repository) -> tuple[object, ...]:
    """Everything a refused integrate must leave alone."""
    files: dict[str, object] = {}
    for path in sorted(repo.root.rglob("*")):
        if ".dits" in path.relative_to(repo.root).parts:
            continue
        if path.is_symlink():
            files[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            files[str(path)] = (path.read_bytes(), os.stat(path).st_mode)
    return repo.head_ref(), repo.head_commit(), repo.index.read_all(), files


def test_up_to_date_when_theirs_is_behind_or_equal(repo: Repository) -> None:
    write(repo.root, "a.txt", b"1")
    old = snap_commit(repo, "one")
    write(repo.root, "a.txt", b"2")
    head = snap_commit(repo, "two", NOW + 1)
    for theirs in (old, head):
        result = pull(repo, theirs)
        assert result.kind == "up-to-date" and result.commit == head
        assert result.updated == [] and result.conflicts == []
    assert repo.head_commit() == head
    assert (repo.root / "a.txt").read_bytes() == b"2"


def test_fast_forward_writes_files_modes_links_and_index(repo: Repository) -> None:
    write(repo.root, "a.txt", b"base\n")
    write(repo.root, "gone.txt", b"bye\n")
    start = snap_commit(repo, "base")
    switch(repo, "ahead", create=True)
    write(repo.root, "a.txt", b"newer\n")
    (repo.root / "gone.txt").unlink()
    tool = write(repo.root, "bin/tool.sh", b"#!/bin/sh\n")
    os.chmod(tool, 0o755)
    os.symlink("../a.txt", repo.root / "bin/a-link")
    write(repo.root, "media/clip.mov", random_bytes(300_000, 7))
    theirs = snap_commit(repo, "ahead", NOW + 1)
    switch(repo, "main")
    assert repo.head_commit() == start and not (repo.root / "bin").exists()

    result = pull(repo, theirs)

    assert result.kind == "fast-forward" and result.commit == theirs
    assert result.base == start
    assert result.updated == ["a.txt", "bin/a-link", "bin/tool.sh", "gone.txt", "media/clip.mov"]
    assert result.removed == ["gone.txt"]
    assert repo.current_branch() == "main" and repo.head_commit() == theirs
    assert (repo.root / "a.txt").read_bytes() == b"newer\n"
    assert not (repo.root / "gone.txt").exists()
    assert os.stat(repo.root / "bin/tool.sh").st_mode & 0o111
    assert os.readlink(repo.root / "bin/a-link") == "../a.txt"
    assert (repo.root / "media/clip.mov").read_bytes() == random_bytes(300_000, 7)
    assert set(repo.index.read_all()) == {"a.txt", "bin/a-link", "bin/tool.sh", "media/clip.mov"}
    assert status(repo).clean
    assert result.to_json()["kind"] == "fast-forward"
    assert result.to_json()["commit"] == theirs.hex()


def test_fast_forward_onto_an_unborn_branch(repo: Repository) -> None:
    write(repo.root, "a.txt", b"a\n")
    theirs = snap_commit(repo, "remote work")
    # Make main unborn again with an empty tree and index: like a fresh `dits init`.
    repo.refs.update_refs([RefUpdate(HEADS + "main", None, theirs)])
    repo.index.replace_all({})
    (repo.root / "a.txt").unlink()

    result = pull(repo, theirs)

    assert result.kind == "fast-forward" and result.base is None
    assert repo.head_commit() == theirs
    assert (repo.root / "a.txt").read_bytes() == b"a\n"
    assert status(repo).clean


def test_fast_forward_refuses_to_overwrite_local_work(repo: Repository) -> None:
    write(repo.root, "a.txt", b"base\n")
    snap_commit(repo, "base")
    switch(repo, "ahead", create=True)
    write(repo.root, "a.txt", b"theirs\n")
    write(repo.root, "new.txt", b"theirs\n")
    theirs = snap_commit(repo, "ahead", NOW + 1)
    switch(repo, "main")

    write(repo.root, "a.txt", b"unsaved edit\n")
    before = state(repo)
    with pytest.raises(ConflictError, match=r"a\.txt"):
        pull(repo, theirs)
    assert state(repo) == before

    # An untracked file where theirs adds one is local work too.
    write(repo.root, "a.txt", b"base\n")
    write(repo.root, "new.txt", b"mine\n")
    before = state(repo)
    with pytest.raises(ConflictError, match=r"new\.txt"):
        pull(repo, theirs)
    assert state(repo) == before

    # An unrelated local edit is fine and survives.
    (repo.root / "new.txt").unlink()
    write(repo.root, "notes.txt", b"untracked and elsewhere\n")
    assert pull(repo, theirs).kind == "fast-forward"
    assert (repo.root / "notes.txt").read_bytes() == b"untracked and elsewhere\n"


def test_diverged_disjoint_changes_make_a_merge_commit(repo: Repository) -> None:
    diverge(repo, {"a.txt": b"a\n", "b.txt": b"b\n", "c.txt": b"c\n", "tool.sh": b"#!\n"})
    write(repo.root, "b.txt", b"b from theirs\n")
    (repo.root / "c.txt").unlink()
    os.chmod(repo.root / "tool.sh", 0o755)
    os.symlink("b.txt", repo.root / "b-link")
    write(repo.root, "dir/theirs.bin", random_bytes(50_000, 3))
    theirs = snap_commit(repo, "their work", NOW + 1)
    switch(repo, "main")
    write(repo.root, "a.txt", b"a from ours\n")
    write(repo.root, "dir/ours.bin", random_bytes(40_000, 4))
    ours = snap_commit(repo, "our work", NOW + 2)

    result = pull(repo, theirs)

    assert result.kind == "merged" and result.conflicts == []
    head = repo.head_commit()
    assert head is not None and head == result.commit and repo.current_branch() == "main"
    merge = repo.get_typed(head, Commit)
    assert merge.parents == (ours, theirs)
    assert merge.message == f"Merge {short_id(theirs)} into main\n"
    assert merge.author.name == "T" and merge.committer.timestamp == NOW + 1000
    assert result.updated == ["b-link", "b.txt", "c.txt", "dir/theirs.bin", "tool.sh"]
    assert result.removed == ["c.txt"]
    assert (repo.root / "a.txt").read_bytes() == b"a from ours\n"
    assert (repo.root / "b.txt").read_bytes() == b"b from theirs\n"
    assert not (repo.root / "c.txt").exists()
    assert os.stat(repo.root / "tool.sh").st_mode & 0o111
    assert os.readlink(repo.root / "b-link") == "b.txt"
    assert (repo.root / "dir/ours.bin").read_bytes() == random_bytes(40_000, 4)
    assert (repo.root / "dir/theirs.bin").read_bytes() == random_bytes(50_000, 3)
    snap = commit_snapshot(repo, head)
    assert sorted(snap) == ["a.txt", "b-link", "b.txt", "dir/ours.bin", "dir/theirs.bin", "tool.sh"]
    assert snap["tool.sh"].mode == 0o100755 and snap["b-link"].mode == 0o120000
    assert status(repo).clean
    # Pulling the same commit again changes nothing; so does pulling an older one of theirs.
    assert pull(repo, theirs).kind == "up-to-date"
    assert pull(repo, ours).kind == "up-to-date"


def test_merge_message_can_be_given(repo: Repository) -> None:
    diverge(repo, {"a": b"1", "b": b"1"})
    write(repo.root, "a", b"2")
    theirs = snap_commit(repo, "t", NOW + 1)
    switch(repo, "main")
    write(repo.root, "b", b"2")
    snap_commit(repo, "o", NOW + 2)
    result = pull(repo, theirs, message="Pull from origin")
    assert repo.get_typed(result.commit, Commit).message == "Pull from origin\n"  # type: ignore[arg-type]


def test_the_same_change_on_both_sides_merges_cleanly(repo: Repository) -> None:
    diverge(repo, {"shared.txt": b"old\n", "x.txt": b"x\n", "y.txt": b"y\n"})
    write(repo.root, "shared.txt", b"same new\n")
    (repo.root / "x.txt").unlink()
    theirs = snap_commit(repo, "t", NOW + 1)
    switch(repo, "main")
    write(repo.root, "shared.txt", b"same new\n")
    (repo.root / "x.txt").unlink()
    write(repo.root, "y.txt", b"ours\n")
    snap_commit(repo, "o", NOW + 2)

    result = pull(repo, theirs)

    assert result.kind == "merged" and result.updated == []
    assert sorted(commit_snapshot(repo, result.commit)) == ["shared.txt", "y.txt"]
    assert (repo.root / "y.txt").read_bytes() == b"ours\n"
    assert status(repo).clean


def test_content_on_one_side_and_exec_bit_on_the_other_combine(repo: Repository) -> None:
    diverge(repo, {"run.sh": b"echo 1\n"})
    os.chmod(repo.root / "run.sh", 0o755)
    theirs = snap_commit(repo, "chmod", NOW + 1)
    switch(repo, "main")
    write(repo.root, "run.sh", b"echo 2\n")
    snap_commit(repo, "edit", NOW + 2)

    result = pull(repo, theirs)

    assert result.kind == "merged" and result.updated == ["run.sh"]
    assert (repo.root / "run.sh").read_bytes() == b"echo 2\n"
    assert os.stat(repo.root / "run.sh").st_mode & 0o111
    assert commit_snapshot(repo, result.commit)["run.sh"].mode == 0o100755
    assert status(repo).clean


def test_conflicts_change_nothing_and_are_listed(repo: Repository) -> None:
    diverge(
        repo,
        {"both.txt": b"base\n", "mod-del.txt": b"base\n", "del-mod.txt": b"base\n", "ok": b"1"},
    )
    write(repo.root, "both.txt", b"theirs\n")
    (repo.root / "mod-del.txt").unlink()
    write(repo.root, "del-mod.txt", b"theirs\n")
    write(repo.root, "added.txt", b"theirs\n")
    write(repo.root, "ok", b"theirs, no conflict\n")
    os.symlink("both.txt", repo.root / "link")
    theirs = snap_commit(repo, "t", NOW + 1)
    switch(repo, "main")
    write(repo.root, "both.txt", b"ours\n")
    write(repo.root, "mod-del.txt", b"ours\n")
    (repo.root / "del-mod.txt").unlink()
    write(repo.root, "added.txt", b"ours\n")
    os.symlink("ok", repo.root / "link")
    ours = snap_commit(repo, "o", NOW + 2)
    objects_before = set(repo.objects.iter_ids())
    before = state(repo)

    result = pull(repo, theirs)

    assert result.kind == "conflict" and result.commit is None
    assert result.conflicts == ["added.txt", "both.txt", "del-mod.txt", "link", "mod-del.txt"]
    assert result.updated == []
    assert state(repo) == before and repo.head_commit() == ours
    assert set(repo.objects.iter_ids()) == objects_before
    assert result.to_json()["conflicts"] == result.conflicts


def test_a_file_where_the_other_side_has_a_folder_conflicts(repo: Repository) -> None:
    diverge(repo, {"keep": b"k"})
    write(repo.root, "thing/inside.txt", b"theirs\n")
    theirs = snap_commit(repo, "t", NOW + 1)
    switch(repo, "main")
    write(repo.root, "thing", b"ours\n")
    snap_commit(repo, "o", NOW + 2)
    before = state(repo)
    result = pull(repo, theirs)
    assert result.kind == "conflict"
    assert result.conflicts == ["thing", "thing/inside.txt"]
    assert state(repo) == before


def test_merge_refuses_when_a_path_it_writes_is_dirty(repo: Repository) -> None:
    diverge(repo, {"a.txt": b"a\n", "b.txt": b"b\n", "c.txt": b"c\n"})
    write(repo.root, "a.txt", b"theirs\n")
    write(repo.root, "new/theirs.txt", b"theirs\n")
    theirs = snap_commit(repo, "t", NOW + 1)
    switch(repo, "main")
    write(repo.root, "b.txt", b"ours\n")
    snap_commit(repo, "o", NOW + 2)

    write(repo.root, "a.txt", b"unsaved\n")
    before = state(repo)
    with pytest.raises(ConflictError, match=r"a\.txt"):
        pull(repo, theirs)
    assert state(repo) == before

    # A staged (not committed) change counts as well.
    add_paths(repo, ["a.txt"])
    before = state(repo)
    with pytest.raises(ConflictError, match=r"a\.txt"):
        pull(repo, theirs)
    assert state(repo) == before

    # An untracked file sitting where theirs needs a folder.
    write(repo.root, "a.txt", b"a\n")
    add_paths(repo, ["a.txt"])
    write(repo.root, "new", b"untracked file\n")
    before = state(repo)
    with pytest.raises(ConflictError, match="new"):
        pull(repo, theirs)
    assert state(repo) == before
    (repo.root / "new").unlink()

    # Uncommitted work on a path the merge does not touch is kept.
    write(repo.root, "c.txt", b"work in progress\n")
    result = pull(repo, theirs)
    assert result.kind == "merged"
    assert (repo.root / "c.txt").read_bytes() == b"work in progress\n"
    assert (repo.root / "a.txt").read_bytes() == b"theirs\n"
    assert status(repo).modified == ["c.txt"]


def test_missing_chunks_are_refused_before_anything_changes(repo: Repository) -> None:
    diverge(repo, {"a": b"a"})
    write(repo.root, "big.bin", random_bytes(20_000, 9))
    theirs = snap_commit(repo, "t", NOW + 1)
    switch(repo, "main")
    manifest_id = commit_snapshot(repo, theirs)["big.bin"].oid
    chunk_ids = [c.id for c in repo.get_typed(manifest_id, Manifest).chunks]
    repo.chunks.delete_many(chunk_ids)  # as after an interrupted fetch
    before = state(repo)
    with pytest.raises(ObjectNotFoundError):
        pull(repo, theirs)
    assert state(repo) == before


def test_unrelated_histories_are_refused_unless_allowed(repo: Repository) -> None:
    write(repo.root, "mine.txt", b"m\n")
    snap_commit(repo, "mine")
    tree = repo.put_object(Tree.from_entries([]))
    who = Identity("R", "r@x", NOW, 0)
    theirs = repo.put_object(Commit(tree, (), who, who, "elsewhere\n"))
    assert merge_base(repo, repo.resolve("HEAD"), theirs) is None
    with pytest.raises(UnrelatedHistoriesError):
        pull(repo, theirs)
    result = pull(repo, theirs, allow_unrelated=True)
    assert result.kind == "merged" and result.base is None
    assert sorted(commit_snapshot(repo, result.commit)) == ["mine.txt"]


# -- merge_base ----------------------------------------------------------------------------


def _graph(repo: Repository, edges: dict[str, list[str]]) -> dict[str, ObjectId]:
    """Store commits named by ``edges`` (name -> parent names, parents first) with empty trees."""
    tree = repo.put_object(Tree.from_entries([]))
    ids: dict[str, ObjectId] = {}
    for i, (name, parents) in enumerate(edges.items()):
        who = Identity("G", "g@x", NOW + i, 0)
        ids[name] = repo.put_object(
            Commit(tree, tuple(ids[p] for p in parents), who, who, f"{name}\n")
        )
    return ids


def test_merge_base_linear_and_forked(repo: Repository) -> None:
    c = _graph(repo, {"r": [], "a1": ["r"], "a2": ["a1"], "b1": ["a1"], "b2": ["b1"]})
    assert merge_base(repo, c["a2"], c["b2"]) == c["a1"]
    assert merge_base(repo, c["b2"], c["a2"]) == c["a1"]
    assert merge_base(repo, c["a1"], c["b2"]) == c["a1"]  # an ancestor is its own answer
    assert merge_base(repo, c["b2"], c["r"]) == c["r"]
    assert merge_base(repo, c["a2"], c["a2"]) == c["a2"]


def test_merge_base_skips_ancestors_reached_by_a_second_path(repo: Repository) -> None:
    # m merges x1 with the root: r is common too, but it is behind x1.
    c = _graph(repo, {"r": [], "x1": ["r"], "x2": ["x1"], "m": ["r", "x1"]})
    assert merge_bases(repo, c["x2"], c["m"]) == [c["x1"]]


def test_merge_base_criss_cross(repo: Repository) -> None:
    c = _graph(
        repo,
        {
            "r": [],
            "a1": ["r"],
            "b1": ["r"],
            "a2": ["a1", "b1"],  # each side merged the other: two best common ancestors
            "b2": ["b1", "a1"],
            "a3": ["a2"],
            "b3": ["b2"],
            "m": ["a3", "b2"],
        },
    )
    bases = merge_bases(repo, c["a3"], c["b3"])
    assert set(bases) == {c["a1"], c["b1"]}
    assert bases == merge_bases(repo, c["b3"], c["a3"])  # deterministic, order-independent
    assert merge_base(repo, c["a3"], c["b3"]) == bases[0]
    # Once one side merges the other's tip, that tip is the single best base again.
    assert merge_bases(repo, c["m"], c["b3"]) == [c["b2"]]


def test_merge_base_prefers_the_longer_history_among_equals(repo: Repository) -> None:
    # Two best bases, one with a longer history behind it.
    c = _graph(
        repo,
        {
            "r": [],
            "p": ["r"],
            "q0": ["r"],
            "q": ["q0"],
            "x": ["p", "q"],
            "y": ["q", "p"],
        },
    )
    assert merge_bases(repo, c["x"], c["y"]) == [c["q"], c["p"]]


def test_criss_cross_merge_conflicts_only_where_the_bases_disagree(repo: Repository) -> None:
    # Build a criss-cross with real files: both sides merged each other's first change.
    diverge(repo, {"f": b"0", "g": b"0", "h": b"0"})
    write(repo.root, "f", b"theirs")
    t1 = snap_commit(repo, "t1", NOW + 1)
    switch(repo, "main")
    write(repo.root, "g", b"ours")
    o1 = snap_commit(repo, "o1", NOW + 2)
    # ours merges t1; theirs merges o1 (built as raw commits, as two peers would).
    o2 = pull(repo, t1).commit
    assert o2 is not None
    both = repo.get_typed(o2, Commit)
    who = Identity("P", "p@x", NOW + 3, 0)
    t2 = repo.put_object(Commit(both.tree, (t1, o1), who, who, "t2\n"))
    assert set(merge_bases(repo, o2, t2)) == {o1, t1}
    # theirs then changes h (to bytes already stored for f): clean against both bases.
    snap = commit_snapshot(repo, t2)
    snap["h"] = snap["f"]
    t3 = repo.put_object(Commit(build_tree(repo, snap), (t2,), who, who, "t3\n"))
    assert status(repo).clean
    result = pull(repo, t3)
    assert result.kind == "merged" and result.updated == ["h"]
    assert repo.get_typed(result.commit, Commit).parents == (o2, t3)  # type: ignore[arg-type]
    assert (repo.root / "h").read_bytes() == b"theirs"
    assert status(repo).clean


def test_criss_cross_bases_that_disagree_make_a_conflict(repo: Repository) -> None:
    # f differs between the two bases and both tips keep a different base's version of it:
    # against one base that is "theirs only", against the other "ours only"; refuse to guess.
    diverge(repo, {"f": b"0", "g": b"0"})
    write(repo.root, "f", b"theirs")
    t1 = snap_commit(repo, "t1", NOW + 1)
    switch(repo, "main")
    write(repo.root, "g", b"ours")
    o1 = snap_commit(repo, "o1", NOW + 2)
    s_o1, s_t1 = commit_snapshot(repo, o1), commit_snapshot(repo, t1)
    who = Identity("P", "p@x", NOW + 3, 0)
    # o2 merges t1 but keeps f (and so its whole tree) from o1; t2 merges o1, keeps f from t1.
    o2 = repo.put_object(Commit(repo.get_typed(o1, Commit).tree, (o1, t1), who, who, "o2\n"))
    t2 = repo.put_object(
        Commit(build_tree(repo, {**s_t1, "g": s_o1["g"]}), (t1, o1), who, who, "t2\n")
    )
    repo.refs.update_refs([RefUpdate(HEADS + "main", o2, o1)])
    assert status(repo).clean
    assert set(merge_bases(repo, o2, t2)) == {o1, t1}
    result = pull(repo, t2)
    assert result.kind == "conflict" and result.conflicts == ["f"]
    assert repo.head_commit() == o2

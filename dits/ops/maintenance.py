"""`dits fsck` (verify every object and chunk, and connectivity) and `dits gc` (drop unreachable).

Reachability roots are every ref plus the index (staged manifests must survive gc).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dits.core.codec import DecodeError, decode_object
from dits.core.ids import ObjectId
from dits.core.index import EntryKind
from dits.core.objects import Commit, Manifest, Object, Symlink, Tree
from dits.errors import CorruptObjectError, ObjectNotFoundError
from dits.repository import Repository

__all__ = ["FsckResult", "GcResult", "fsck", "gc", "reachable"]


@dataclass
class FsckResult:
    """Problems found: BAD (bytes do not match the id), MISSING (referenced but absent)."""

    objects_checked: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    bad: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No problem found."""
        return not self.bad and not self.missing

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return {**self.__dict__, "clean": self.clean}


def _roots(repo: Repository) -> list[tuple[str, ObjectId, type[Object]]]:
    roots: list[tuple[str, ObjectId, type[Object]]] = [
        (name, oid, Commit) for name, oid in repo.refs.list_refs("refs/").items()
    ]
    for path, entry in repo.index.read_all().items():
        kind: type[Object] = Manifest if entry.kind is EntryKind.FILE else Symlink
        roots.append((f"index:{path}", entry.oid, kind))
    return roots


def reachable(
    repo: Repository, on_problem: Callable[[str, str], None] | None = None
) -> tuple[set[ObjectId], set[ObjectId], dict[ObjectId, str]]:
    """Walk from every root; return (object ids, chunk ids, chunk id -> a path using it)."""
    objects: set[ObjectId] = set()
    chunks: set[ObjectId] = set()
    chunk_paths: dict[ObjectId, str] = {}
    stack: list[tuple[ObjectId, str]] = [(oid, name) for name, oid, _ in _roots(repo)]
    while stack:
        oid, where = stack.pop()
        if oid in objects:
            continue
        objects.add(oid)
        try:
            obj = decode_object(repo.objects.get(oid))
        except ObjectNotFoundError:
            if on_problem:
                on_problem("missing", f"object {oid.hex()[:12]} ({where})")
            continue
        except (CorruptObjectError, DecodeError) as exc:
            if on_problem:
                on_problem("bad", f"object {oid.hex()[:12]} ({where}): {exc}")
            continue
        if isinstance(obj, Commit):
            stack.append((obj.tree, f"{where}:tree"))
            stack.extend((p, f"{where}^") for p in obj.parents)
        elif isinstance(obj, Tree):
            for e in obj.entries:
                path = f"{where}/{e.name}" if ":" in where else e.name
                stack.append((e.id, path))
        elif isinstance(obj, Manifest):
            for c in obj.chunks:
                chunks.add(c.id)
                chunk_paths.setdefault(c.id, where.split(":tree", 1)[-1].lstrip("/"))
    return objects, chunks, chunk_paths


def fsck(repo: Repository, on_progress: Callable[[int], None] | None = None) -> FsckResult:
    """Verify every stored object and chunk against its id, and that every reference resolves."""
    result = FsckResult()

    def problem(kind: str, text: str) -> None:
        (result.bad if kind == "bad" else result.missing).append(text)

    _, needed_chunks, chunk_paths = reachable(repo, problem)
    for oid in repo.objects.iter_ids():
        result.objects_checked += 1
        try:
            decode_object(repo.objects.get(oid))
        except (CorruptObjectError, DecodeError) as exc:
            text = f"object {oid.hex()[:12]}: {exc}"
            if not any(text.split(":")[0] in b for b in result.bad):
                result.bad.append(text)
    present: set[ObjectId] = set()
    for oid in repo.chunks.iter_ids():
        present.add(oid)
        result.chunks_checked += 1
        try:
            data = repo.chunks.get(oid)
            result.bytes_checked += len(data)
            if on_progress:
                on_progress(len(data))
        except CorruptObjectError:
            where = chunk_paths.get(oid)
            result.bad.append(
                f"chunk {oid.hex()[:12]}" + (f" (used by {where})" if where else " (unreferenced)")
            )
    for oid in sorted(needed_chunks - present):
        result.missing.append(f"chunk {oid.hex()[:12]} (used by {chunk_paths.get(oid, '?')})")
    return result


@dataclass
class GcResult:
    """What gc removed."""

    objects_removed: int = 0
    chunks_removed: int = 0
    packs_rewritten: int = 0
    packs_removed: int = 0
    bytes_freed: int = 0

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return dict(self.__dict__)


def gc(repo: Repository) -> GcResult:
    """Delete every object and chunk no ref and no index entry reaches (under the write lock)."""
    with repo.write_lock("dits gc"):
        objects, chunks, _ = reachable(repo)
        dead_objects = [o for o in repo.objects.iter_ids() if o not in objects]
        dead_chunks = [c for c in repo.chunks.iter_ids() if c not in chunks]
        result = GcResult()
        for i in range(0, len(dead_chunks), 4096):
            result.chunks_removed += repo.chunks.delete_many(dead_chunks[i : i + 4096])
        for i in range(0, len(dead_objects), 4096):
            result.objects_removed += repo.objects.delete_many(dead_objects[i : i + 4096])
        repack = getattr(repo.chunks, "repack", None)
        if repack is not None:  # pack-file stores give the space back here
            done = repack()
            result.packs_rewritten = done.packs_rewritten
            result.packs_removed = done.packs_removed
            result.bytes_freed = done.bytes_freed
        return result

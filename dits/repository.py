"""Repository: a working tree plus its stores, refs, index, config, lock and hooks, injected.

`Repository.init/open/discover` build the on-disk layout (``.dits/`` with an LMDB environment);
`Repository.in_memory` builds the same object over the dict-backed twins for tests. Porcelain in
`dits.ops` takes a Repository and never opens stores itself.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from dits.config import Config
from dits.core.codec import DecodeError, decode_object, encode_object, object_id
from dits.core.ids import ObjectId, parse_id
from dits.core.objects import Commit, Manifest, Object, Symlink, Tree
from dits.errors import CorruptObjectError, NotARepositoryError, UsageError
from dits.store.base import BlobStore, IndexStore, RefStore
from dits.worktree import DITS_DIR, Worktree

__all__ = ["DEFAULT_BRANCH", "Repository", "UnknownRevisionError"]

DEFAULT_BRANCH = "main"
HEADS = "refs/heads/"

T = TypeVar("T", Manifest, Tree, Commit, Symlink)


class UnknownRevisionError(UsageError):
    """A revision name matches no branch and no commit."""


class Repository:
    """Everything one repository consists of. Construct with `init`, `open` or `in_memory`."""

    def __init__(
        self,
        root: Path,
        *,
        chunks: BlobStore,
        objects: BlobStore,
        refs: RefStore,
        index: IndexStore,
        config: Config,
        lock: contextlib.AbstractContextManager[object] | None = None,
        closer: contextlib.ExitStack | None = None,
    ) -> None:
        self.root = root
        self.dits_dir = root / DITS_DIR
        self.worktree = Worktree(root)
        self.chunks = chunks
        self.objects = objects
        self.refs = refs
        self.index = index
        self.config = config
        self._lock = lock
        self._closer = closer or contextlib.ExitStack()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path, *, branch: str = DEFAULT_BRANCH) -> Repository:
        """Create ``root/.dits`` and open it.

        Raises:
            UsageError: a repository already exists there.
        """
        dits_dir = root / DITS_DIR
        if (dits_dir / "store").exists():
            raise UsageError(f"{root} is already a dits repository")
        validate_branch_name(branch)
        (dits_dir / "hooks").mkdir(parents=True, exist_ok=True)
        (dits_dir / "store").mkdir(exist_ok=True)
        config = Config(dits_dir / "config")
        config.data.setdefault("core", {})["format"] = 1
        config.save()
        repo = cls.open(root)
        repo.refs.set_head(HEADS + branch)
        return repo

    @classmethod
    def open(cls, root: Path) -> Repository:
        """Open the repository whose working tree is ``root``."""
        from dits.store.lmdb import LmdbBlobStore, LmdbEnvironment, LmdbIndexStore, LmdbRefStore
        from dits.store.lock import RepoLock
        from dits.store.packs import PackBlobStore

        dits_dir = root / DITS_DIR
        if not (dits_dir / "store").is_dir():
            raise NotARepositoryError(f"{root} is not a dits repository (no {DITS_DIR}/store)")
        config = Config(dits_dir / "config")
        closer = contextlib.ExitStack()
        env = LmdbEnvironment(dits_dir / "store")
        closer.callback(env.close)
        # core.compression = false: chunks are stored raw (a push still compresses on the wire
        # when the measured link makes it pay, dits.staging).
        level = 3 if config.get("core.compression") is not False else 0
        chunks = PackBlobStore(env, dits_dir / "store" / "packs", compression_level=level)
        closer.callback(chunks.close)
        return cls(
            root,
            chunks=chunks,
            objects=LmdbBlobStore(env, b"objects"),
            refs=LmdbRefStore(env),
            index=LmdbIndexStore(env),
            config=config,
            lock=RepoLock(dits_dir / "lock"),
            closer=closer,
        )

    @classmethod
    def discover(cls, start: Path | None = None) -> Repository:
        """Open the repository containing ``start`` (default: the current folder)."""
        path = (start or Path.cwd()).resolve()
        for candidate in (path, *path.parents):
            if (candidate / DITS_DIR / "store").is_dir():
                return cls.open(candidate)
        raise NotARepositoryError(
            f"not a dits repository (or any parent up to /): {path}; run 'dits init' first"
        )

    @classmethod
    def in_memory(cls, root: Path) -> Repository:
        """A repository whose stores are the in-memory twins (the working tree is still real)."""
        from dits.store.memory import MemoryBlobStore, MemoryIndexStore, MemoryRefStore

        (root / DITS_DIR).mkdir(parents=True, exist_ok=True)
        return cls(
            root,
            chunks=MemoryBlobStore(),
            objects=MemoryBlobStore(),
            refs=MemoryRefStore(),
            index=MemoryIndexStore(),
            config=Config(root / DITS_DIR / "config"),
        )

    def close(self) -> None:
        """Release the stores."""
        self._closer.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def write_lock(self, purpose: str, timeout: float = 0.0) -> Iterator[None]:
        """Hold the repository's single-writer lock (released by the kernel if we die)."""
        if self._lock is None:
            yield
            return
        lock = self._lock
        lock.acquire(timeout=timeout, purpose=purpose)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            lock.release()  # type: ignore[attr-defined]

    # -- objects ------------------------------------------------------------------------
    def put_objects(self, objs: Iterable[Object]) -> list[ObjectId]:
        """Encode and store objects in one atomic batch; return their ids in order."""
        encoded = [encode_object(o) for o in objs]
        ids = [object_id(e) for e in encoded]
        self.objects.put_many(zip(ids, encoded, strict=True))
        return ids

    def put_object(self, obj: Object) -> ObjectId:
        """Encode and store one object; return its id."""
        return self.put_objects([obj])[0]

    def get_object(self, oid: ObjectId) -> Object:
        """Return the decoded object (verified by the store against its id)."""
        data = self.objects.get(oid)
        try:
            return decode_object(data)
        except DecodeError as exc:
            raise CorruptObjectError(f"object {oid.hex()[:12]} cannot be decoded: {exc}") from None

    def get_typed(self, oid: ObjectId, kind: type[T]) -> T:
        """Return the object ``oid`` and check it is a ``kind``."""
        obj = self.get_object(oid)
        if not isinstance(obj, kind):
            raise CorruptObjectError(
                f"object {oid.hex()[:12]} is a {type(obj).__name__}, expected {kind.__name__}"
            )
        return obj

    # -- refs ---------------------------------------------------------------------------
    def head_ref(self) -> str:
        """The ref HEAD points at, e.g. ``refs/heads/main``."""
        return self.refs.get_head()

    def current_branch(self) -> str:
        """The branch name HEAD points at."""
        ref = self.head_ref()
        return ref[len(HEADS) :] if ref.startswith(HEADS) else ref

    def head_commit(self) -> ObjectId | None:
        """The commit HEAD resolves to, or None on an unborn branch."""
        return self.refs.get_ref(self.head_ref())

    def branches(self) -> dict[str, ObjectId]:
        """Every branch name with its tip."""
        return {k[len(HEADS) :]: v for k, v in self.refs.list_refs(HEADS).items()}

    def resolve(self, rev: str) -> ObjectId:
        """Resolve ``HEAD``, a branch, a full or unique short commit id, with ``~N``/``^`` suffixes.

        Raises:
            UnknownRevisionError: nothing matches, or a short id is ambiguous.
        """
        m = re.fullmatch(r"(.*?)((?:~\d*|\^)*)", rev)
        assert m is not None
        base, suffix = m.group(1), m.group(2)
        oid = self._resolve_base(base)
        for step in re.findall(r"~\d*|\^", suffix):
            count = 1 if step in ("^", "~") else int(step[1:])
            for _ in range(count):
                parents = self.get_typed(oid, Commit).parents
                if not parents:
                    raise UnknownRevisionError(f"revision '{rev}' goes past the first commit")
                oid = parents[0]
        return oid

    def _resolve_base(self, base: str) -> ObjectId:
        if base in ("HEAD", "@", ""):
            head = self.head_commit()
            if head is None:
                raise UnknownRevisionError(f"HEAD ({self.current_branch()}) has no commits yet")
            return head
        for name in (base, HEADS + base):
            found = self.refs.get_ref(name)
            if found is not None:
                return found
        if re.fullmatch(r"[0-9a-f]{4,64}", base):
            if len(base) == 64:
                oid = parse_id(base)
                if self.objects.has_many([oid]):
                    return oid
            matches = [i for i in self.objects.iter_ids() if i.hex().startswith(base)]
            commits = [i for i in matches if isinstance(self.get_object(i), Commit)]
            if len(commits) == 1:
                return commits[0]
            if len(commits) > 1:
                raise UnknownRevisionError(f"short id '{base}' is ambiguous")
        raise UnknownRevisionError(f"unknown revision '{base}' (not a branch or commit id)")

    def hooks_dir(self) -> Path:
        """Where repository hooks live."""
        return self.dits_dir / "hooks"


_BRANCH_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._/-]{0,199}")


def validate_branch_name(name: str) -> None:
    """Refuse branch names git would refuse (``..``, leading ``-``, ``.lock`` suffix, ...).

    Raises:
        UsageError: the name is not allowed.
    """
    if (
        not _BRANCH_RE.fullmatch(name)
        or ".." in name
        or "//" in name
        or name.endswith(("/", ".lock", "."))
        or name == "HEAD"
        or any(part.startswith(".") for part in name.split("/"))
    ):
        raise UsageError(f"'{name}' is not a valid branch name")

"""`dits branch`: list, create and delete branches (refs/heads/*)."""

from __future__ import annotations

from dits.core.ids import ObjectId
from dits.core.objects import Commit
from dits.errors import ConflictError, UsageError
from dits.repository import HEADS, Repository, validate_branch_name
from dits.store.base import RefUpdate

__all__ = ["create_branch", "delete_branch", "is_ancestor"]


def is_ancestor(repo: Repository, ancestor: ObjectId, tip: ObjectId) -> bool:
    """Whether ``ancestor`` is reachable from ``tip`` through parents."""
    stack, seen = [tip], set()
    while stack:
        oid = stack.pop()
        if oid == ancestor:
            return True
        if oid in seen:
            continue
        seen.add(oid)
        stack.extend(repo.get_typed(oid, Commit).parents)
    return False


def create_branch(repo: Repository, name: str, start: str = "HEAD") -> ObjectId:
    """Create ``name`` at ``start``.

    Raises:
        UsageError: invalid name, branch exists, or nothing to branch from.
    """
    validate_branch_name(name)
    oid = repo.resolve(start)
    with repo.write_lock("dits branch"):
        try:
            repo.refs.update_refs([RefUpdate(HEADS + name, oid, None)])
        except ConflictError:
            raise UsageError(f"branch '{name}' already exists") from None
    return oid


def delete_branch(repo: Repository, name: str, *, force: bool = False) -> ObjectId:
    """Delete a branch; refuse the current one, and unmerged ones unless ``force``."""
    ref = HEADS + name
    with repo.write_lock("dits branch -d"):
        tip = repo.refs.get_ref(ref)
        if tip is None:
            raise UsageError(f"no branch named '{name}'")
        if repo.head_ref() == ref:
            raise UsageError(f"cannot delete the current branch '{name}'")
        head = repo.head_commit()
        if not force and (head is None or not is_ancestor(repo, tip, head)):
            raise ConflictError(
                f"branch '{name}' is not merged into {repo.current_branch()}; "
                f"use -D to delete it anyway"
            )
        repo.refs.update_refs([RefUpdate(ref, None, tip)])
        return tip

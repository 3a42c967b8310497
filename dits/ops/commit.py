"""`dits commit`: fold the index into trees, write a commit, move the branch by compare-and-swap.

Identity comes from ``user.name``/``user.email`` in the repository config, else from the user's
git config (read with dulwich). Hooks: pre-commit may refuse; post-commit only informs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dits.core.ids import ObjectId
from dits.core.objects import Commit, Identity
from dits.errors import ConflictError, UsageError
from dits.hooks import run_hook
from dits.ops.snapshot import build_tree, commit_snapshot, index_snapshot
from dits.repository import Repository
from dits.store.base import RefUpdate

__all__ = ["CommitResult", "IdentityMissingError", "NothingToCommitError", "commit", "identity"]


class NothingToCommitError(UsageError):
    """The index equals HEAD's tree."""


class IdentityMissingError(UsageError):
    """No user.name/user.email anywhere."""


@dataclass(frozen=True)
class CommitResult:
    """The new commit and what it changed."""

    oid: ObjectId
    branch: str
    files_changed: int
    root: bool
    message: str

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return {
            "commit": self.oid.hex(),
            "branch": self.branch,
            "files_changed": self.files_changed,
            "root_commit": self.root,
            "message": self.message,
        }


def identity(repo: Repository, git_config: Mapping[str, str]) -> tuple[str, str]:
    """Return (name, email) from dits config, else the given git config values.

    Raises:
        IdentityMissingError: neither is set.
    """
    name = repo.config.get("user.name") or git_config.get("user.name")
    email = repo.config.get("user.email") or git_config.get("user.email")
    if not name or not email:
        raise IdentityMissingError(
            "who are you? set 'dits config user.name \"Your Name\"' and "
            "'dits config user.email you@example.com'"
        )
    return str(name), str(email)


def commit(
    repo: Repository,
    message: str,
    *,
    name: str,
    email: str,
    now: int,
    tz_offset_min: int,
    allow_empty: bool = False,
    run_hooks: bool = True,
    hook_env: Mapping[str, str] | None = None,
) -> CommitResult:
    """Commit the index on the current branch.

    Raises:
        NothingToCommitError: nothing staged (unless ``allow_empty``).
        HookFailedError: the pre-commit hook refused.
        ConflictError: the branch moved under us (another process committed meanwhile).
    """
    if not message.strip():
        raise UsageError("empty commit message; give one with -m")
    with repo.write_lock("dits commit"):
        ref = repo.head_ref()
        head = repo.refs.get_ref(ref)
        index = repo.index.read_all()
        snap = index_snapshot(index)
        head_snap = commit_snapshot(repo, head)
        changed = {
            p for p in snap.keys() | head_snap.keys() if _differs(snap.get(p), head_snap.get(p))
        }
        if not changed and not allow_empty:
            raise NothingToCommitError("nothing to commit (use 'dits add' to stage changes)")
        if run_hooks:
            staged = "".join(
                f"{snap[p].size} {snap[p].mode:o} {p}\n" for p in sorted(changed) if p in snap
            )
            run_hook(
                repo.dits_dir,
                repo.root,
                "pre-commit",
                stdin=staged,
                extra_env={"DITS_BRANCH": repo.current_branch()},
                base_env=hook_env,
            )
        tree = build_tree(repo, snap)
        who = Identity(name, email, now, tz_offset_min)
        oid = repo.put_object(
            Commit(tree, (head,) if head else (), who, who, message.rstrip() + "\n")
        )
        try:
            repo.refs.update_refs([RefUpdate(ref, oid, head)])
        except ConflictError:
            raise ConflictError(
                f"{repo.current_branch()} moved while committing; run 'dits status' and retry"
            ) from None
    if run_hooks:
        run_hook(
            repo.dits_dir,
            repo.root,
            "post-commit",
            args=[oid.hex()],
            extra_env={"DITS_BRANCH": repo.current_branch(), "DITS_COMMIT": oid.hex()},
            base_env=hook_env,
            can_abort=False,
        )
    return CommitResult(oid, repo.current_branch(), len(changed), head is None, message)


def _differs(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is not b
    return not a.same_content(b)  # type: ignore[attr-defined]

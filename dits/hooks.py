"""Repository hooks, as git has them: executables in ``.dits/hooks/`` run at fixed points.

``pre-commit`` and ``pre-push`` abort the operation when they exit non-zero; ``post-commit``
cannot abort. Environment given to every hook (documented in docs/hooks.md):

    DITS_HOOK       the hook's name
    DITS_DIR        absolute path of .dits
    DITS_WORK_TREE  absolute path of the working tree
    DITS_BRANCH     the current branch

A hook runs with the working tree as its current folder. What each hook reads on stdin is
described where it is called (pre-commit: one ``<size> <mode> <path>`` line per staged file).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from dits.errors import HookFailedError

__all__ = ["hook_path", "run_hook"]

HOOK_NAMES = ("pre-commit", "post-commit", "pre-push")


def hook_path(dits_dir: Path, name: str) -> Path | None:
    """The executable for ``name`` or None when no (executable) hook is installed."""
    path = dits_dir / "hooks" / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    return None


def run_hook(
    dits_dir: Path,
    work_tree: Path,
    name: str,
    *,
    args: list[str] | None = None,
    stdin: str = "",
    extra_env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    can_abort: bool = True,
) -> str:
    """Run a hook if installed; return its combined output.

    Raises:
        HookFailedError: the hook exited non-zero (or could not run) and ``can_abort`` is set.
    """
    path = hook_path(dits_dir, name)
    if path is None:
        return ""
    env = dict(base_env if base_env is not None else os.environ)
    env.update(
        {
            "DITS_HOOK": name,
            "DITS_DIR": str(dits_dir.resolve()),
            "DITS_WORK_TREE": str(work_tree.resolve()),
        }
    )
    env.update(extra_env or {})
    try:
        proc = subprocess.run(
            [str(path), *(args or [])],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=work_tree,
            env=env,
            check=False,
        )
    except OSError as exc:
        if can_abort:
            raise HookFailedError(f"{name} hook could not run: {exc.strerror}") from None
        return ""
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 and can_abort:
        detail = f":\n{output}" if output else ""
        raise HookFailedError(f"{name} hook refused (exit {proc.returncode}){detail}")
    return output

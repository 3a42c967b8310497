"""`dits commit`."""

from __future__ import annotations

import os
import time

import click

from dits.cli._common import Ctx, emit_json, open_repo, pass_ctx, say
from dits.ops.commit import commit, identity


def git_identity() -> dict[str, str]:
    """user.name / user.email from the user's git config (read with dulwich), if any."""
    try:
        from dulwich.config import StackedConfig

        config = StackedConfig.default()
    except Exception:  # a broken git config must not stop a commit that has its own identity
        return {}
    out: dict[str, str] = {}
    for key in ("name", "email"):
        try:
            out[f"user.{key}"] = config.get((b"user",), key.encode()).decode("utf-8", "replace")
        except KeyError:
            pass
    return out


@click.command("commit")
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("--allow-empty", is_flag=True, help="Commit even if nothing changed.")
@click.option("--no-verify", is_flag=True, help="Skip the pre-commit hook.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@pass_ctx
def commit_cmd(ctx: Ctx, message: str, allow_empty: bool, no_verify: bool, as_json: bool) -> None:
    """Record the staged changes as a new commit."""
    with open_repo(ctx) as repo:
        name, email = identity(repo, git_identity())
        now = int(os.environ.get("DITS_COMMIT_TIME", "0")) or int(time.time())
        tz = time.localtime(now).tm_gmtoff // 60
        result = commit(
            repo,
            message,
            name=name,
            email=email,
            now=now,
            tz_offset_min=tz,
            allow_empty=allow_empty,
            run_hooks=not no_verify,
        )
    if as_json:
        emit_json(result.to_json())
    else:
        root = " (root-commit)" if result.root else ""
        first_line = message.strip().splitlines()[0]
        say(ctx, f"[{result.branch}{root} {result.oid.hex()[:12]}] {first_line}")
        say(ctx, f" {result.files_changed} file(s) changed")

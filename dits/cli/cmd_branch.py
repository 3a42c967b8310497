"""`dits branch`, `dits switch`, `dits checkout`, `dits restore`."""

from __future__ import annotations

import click

from dits.cli._common import Ctx, emit_json, human_bytes, open_repo, pass_ctx, progress, say
from dits.ops.branch import create_branch, delete_branch
from dits.ops.checkout import restore, switch


@click.command("branch")
@click.argument("name", required=False)
@click.argument("start", required=False, default="HEAD")
@click.option("-d", "--delete", is_flag=True, help="Delete a merged branch.")
@click.option("-D", "force_delete", is_flag=True, help="Delete a branch even if unmerged.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def branch_cmd(
    ctx: Ctx, name: str | None, start: str, delete: bool, force_delete: bool, as_json: bool
) -> None:
    """List branches, or create NAME at START, or delete NAME."""
    with open_repo(ctx) as repo:
        if name is None:
            current = repo.current_branch()
            branches = repo.branches()
            if as_json:
                emit_json(
                    {"current": current, "branches": {k: v.hex() for k, v in branches.items()}}
                )
                return
            for b in sorted(set(branches) | {current}):
                tip = branches.get(b)
                mark = "*" if b == current else " "
                click.echo(f"{mark} {b}" + (f"  {tip.hex()[:12]}" if tip else "  (no commits)"))
            return
        if delete or force_delete:
            tip = delete_branch(repo, name, force=force_delete)
            say(ctx, f"Deleted branch {name} (was {tip.hex()[:12]})")
            return
        oid = create_branch(repo, name, start)
        say(ctx, f"Created branch {name} at {oid.hex()[:12]}")


def _do_switch(ctx: Ctx, branch: str, create: bool, force: bool, as_json: bool) -> None:
    with (
        open_repo(ctx) as repo,
        progress(ctx, "checking out", json_mode=as_json) as (set_total, advance),
    ):
        result = switch(
            repo, branch, create=create, force=force, on_plan=set_total, on_bytes=advance
        )
    if as_json:
        emit_json(result.to_json())
    else:
        say(
            ctx,
            f"Switched to branch '{branch}' ({len(result.written)} written, "
            f"{len(result.removed)} removed, {human_bytes(result.bytes_written)})",
        )


@click.command("switch")
@click.argument("branch")
@click.option("-c", "--create", is_flag=True, help="Create the branch at HEAD first.")
@click.option("-f", "--force", is_flag=True, help="Discard local changes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def switch_cmd(ctx: Ctx, branch: str, create: bool, force: bool, as_json: bool) -> None:
    """Switch to a branch (refuses to overwrite uncommitted changes)."""
    _do_switch(ctx, branch, create, force, as_json)


@click.command("checkout")
@click.argument("target", required=False)
@click.argument("paths", nargs=-1)
@click.option("-b", "create", is_flag=True, help="Create the branch at HEAD first.")
@click.option("-f", "--force", is_flag=True, help="Discard local changes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def checkout_cmd(
    ctx: Ctx, target: str | None, paths: tuple[str, ...], create: bool, force: bool, as_json: bool
) -> None:
    """Switch branches (`checkout BRANCH`) or restore files (`checkout -- PATH...`).

    A TARGET that names a branch switches to it; otherwise every argument is a path restored
    from the index, as `dits restore PATH` does.
    """
    if target is None:
        raise click.UsageError("name a branch, or paths after --")
    with open_repo(ctx) as repo:
        is_branch = target in repo.branches() or target == repo.current_branch()
    if create or (is_branch and not paths):
        _do_switch(ctx, target, create, force, as_json)
        return
    with open_repo(ctx) as repo:
        files = [target, *paths]
        result = restore(repo, [repo.worktree.repo_path(p, ctx.cwd) for p in files])
    say(ctx, f"Updated {len(result.written)} path(s) from the index")


@click.command("restore")
@click.argument("paths", nargs=-1, required=True)
@click.option("-s", "--source", help="Take the content from this revision.")
@click.option("-S", "--staged", is_flag=True, help="Restore the index (unstage).")
@click.option("-W", "--worktree", is_flag=True, help="Restore the working tree (default).")
@pass_ctx
def restore_cmd(
    ctx: Ctx, paths: tuple[str, ...], source: str | None, staged: bool, worktree: bool
) -> None:
    """Restore working files from the index, or unstage with --staged."""
    with open_repo(ctx) as repo:
        specs = [repo.worktree.repo_path(p, ctx.cwd) for p in paths]
        result = restore(repo, specs, source=source, staged=staged, worktree=worktree or not staged)
    say(ctx, f"Restored {len(result.written) + len(result.removed)} path(s)")

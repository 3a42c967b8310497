"""`dits diff --stat`."""

from __future__ import annotations

import click

from dits.cli._common import Ctx, emit_json, human_bytes, open_repo, pass_ctx
from dits.ops.diff import diff_snapshots


@click.command("diff")
@click.argument("revisions", nargs=-1)
@click.option("--stat", "stat_", is_flag=True, default=True, help="Per-file summary (the default).")
@click.option("--cached", "--staged", "cached", is_flag=True, help="Compare the index with HEAD.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def diff_cmd(
    ctx: Ctx, revisions: tuple[str, ...], stat_: bool, cached: bool, as_json: bool
) -> None:
    """Per file: bytes changed and chunks reused.

    \b
    dits diff            working tree vs index
    dits diff --cached   index vs HEAD
    dits diff A          working tree vs A
    dits diff A B        A vs B
    """
    if len(revisions) > 2:
        raise click.UsageError("give at most two revisions")
    if cached:
        old, new = (revisions[0] if revisions else "HEAD"), ":index"
    elif len(revisions) == 2:
        old, new = revisions
    elif len(revisions) == 1:
        old, new = revisions[0], ":worktree"
    else:
        old, new = ":index", ":worktree"
    with open_repo(ctx) as repo:
        if old == "HEAD" and repo.head_commit() is None:
            old = ":empty"
        result = diff_snapshots(repo, old, new)
    if as_json:
        emit_json(result.to_json())
        return
    width = max((len(f.path) for f in result.files), default=0)
    for f in result.files:
        reuse = f"{f.chunks_reused}/{f.chunks} chunks reused" if f.chunks else ""
        click.echo(
            f" {f.path.ljust(width)} | {f.status:8} "
            f"{human_bytes(f.bytes_changed):>10} changed  {reuse}"
        )
    total = sum(f.bytes_changed for f in result.files)
    click.echo(f" {len(result.files)} file(s) changed, {human_bytes(total)} of new data")

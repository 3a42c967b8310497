"""`dits status`."""

from __future__ import annotations

import click

from dits.cli._common import Ctx, emit_json, open_repo, pass_ctx
from dits.ops.status import status


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.option("-s", "--short", is_flag=True, help="One line per path, git-style codes.")
@pass_ctx
def status_cmd(ctx: Ctx, as_json: bool, short: bool) -> None:
    """Show staged, modified, deleted and untracked files."""
    with open_repo(ctx) as repo:
        result = status(repo)
    if as_json:
        emit_json(result.to_json())
        return
    if short:
        rows = (
            [("A ", p) for p in result.staged_added]
            + [("M ", p) for p in result.staged_modified]
            + [("D ", p) for p in result.staged_deleted]
            + [(" M", p) for p in result.modified]
            + [(" D", p) for p in result.deleted]
            + [("??", p) for p in result.untracked]
        )
        for code, path in sorted(rows, key=lambda r: r[1]):
            click.echo(f"{code} {path}")
        return
    click.echo(f"On branch {result.branch}")
    if result.head is None:
        click.echo("No commits yet")
    sections = [
        (
            "Changes to be committed:",
            [("new file", p) for p in result.staged_added]
            + [("modified", p) for p in result.staged_modified]
            + [("deleted", p) for p in result.staged_deleted],
        ),
        (
            "Changes not staged for commit:",
            [("modified", p) for p in result.modified] + [("deleted", p) for p in result.deleted],
        ),
        ("Untracked files:", [("", p) for p in result.untracked]),
    ]
    for title, rows in sections:
        if rows:
            click.echo(f"\n{title}")
            for label, path in rows:
                click.echo(f"\t{label + ':   ' if label else ''}{path}")
    for line in result.errors:
        click.echo(f"warning: {line}", err=True)
    if result.clean:
        click.echo("nothing to commit, working tree clean")

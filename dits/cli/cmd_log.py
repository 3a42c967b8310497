"""`dits log` and `dits show`."""

from __future__ import annotations

import datetime as dt

import click

from dits.cli._common import Ctx, emit_json, human_bytes, open_repo, pass_ctx
from dits.core.objects import Commit, Identity
from dits.ops.diff import diff_snapshots
from dits.ops.history import LogEntry, walk_log


def _date(ident: Identity) -> str:
    tz = dt.timezone(dt.timedelta(minutes=ident.tz_offset_min))
    return dt.datetime.fromtimestamp(ident.timestamp, tz).strftime("%a %b %d %H:%M:%S %Y %z")


def _print_commit(oid_hex: str, c: Commit, oneline: bool) -> None:
    if oneline:
        click.echo(f"{oid_hex[:12]} {c.message.splitlines()[0] if c.message else ''}")
        return
    click.echo(click.style(f"commit {oid_hex}", fg="yellow"))
    if len(c.parents) > 1:
        click.echo("Merge: " + " ".join(p.hex()[:12] for p in c.parents))
    click.echo(f"Author: {c.author.format()}")
    click.echo(f"Date:   {_date(c.author)}")
    click.echo()
    for line in c.message.rstrip("\n").splitlines():
        click.echo(f"    {line}")
    click.echo()


@click.command("log")
@click.argument("revision", default="HEAD")
@click.option("-n", "--max-count", type=int, help="Show at most N commits.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def log_cmd(ctx: Ctx, revision: str, max_count: int | None, oneline: bool, as_json: bool) -> None:
    """Show commit history."""
    with open_repo(ctx) as repo:
        start = repo.resolve(revision)
        entries = list(walk_log(repo, start, max_count))
    if as_json:
        emit_json([e.to_json() for e in entries])
        return
    for e in entries:
        _print_commit(e.oid.hex(), e.commit, oneline)


@click.command("show")
@click.argument("revision", default="HEAD")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def show_cmd(ctx: Ctx, revision: str, as_json: bool) -> None:
    """Show a commit and the files it changed (bytes changed, chunks reused)."""
    with open_repo(ctx) as repo:
        oid = repo.resolve(revision)
        commit = repo.get_typed(oid, Commit)
        parent = commit.parents[0].hex() if commit.parents else ":empty"
        diff = diff_snapshots(repo, parent, oid.hex())
    if as_json:
        emit_json({**LogEntry(oid, commit).to_json(), "diff": diff.to_json()})
        return
    _print_commit(oid.hex(), commit, False)
    for f in diff.files:
        click.echo(f" {f.path} | {f.status} {human_bytes(f.bytes_changed)} changed")

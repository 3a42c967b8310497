"""`dits fsck` and `dits gc`."""

from __future__ import annotations

import click

from dits.cli._common import Ctx, emit_json, human_bytes, open_repo, pass_ctx, progress, say
from dits.errors import CorruptObjectError
from dits.ops.maintenance import fsck, gc


@click.command("fsck")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def fsck_cmd(ctx: Ctx, as_json: bool) -> None:
    """Verify every object and chunk against its id, and that every reference resolves."""
    with open_repo(ctx) as repo:
        total = repo.chunks.stats().plain_bytes
        with progress(ctx, "verifying", json_mode=as_json) as (set_total, advance):
            set_total(total)
            result = fsck(repo, on_progress=advance)
    if as_json:
        emit_json(result.to_json())
    else:
        for line in result.bad:
            click.echo(f"BAD     {line}")
        for line in result.missing:
            click.echo(f"MISSING {line}")
        say(
            ctx,
            f"checked {result.objects_checked} objects and {result.chunks_checked} chunks "
            f"({human_bytes(result.bytes_checked)})",
        )
    if not result.clean:
        raise CorruptObjectError(
            f"{len(result.bad)} corrupt and {len(result.missing)} missing item(s) found"
        )


@click.command("gc")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def gc_cmd(ctx: Ctx, as_json: bool) -> None:
    """Delete objects and chunks that no branch and no staged file reaches."""
    with open_repo(ctx) as repo:
        result = gc(repo)
    if as_json:
        emit_json(result.to_json())
    else:
        say(
            ctx,
            f"removed {result.objects_removed} objects and {result.chunks_removed} chunks; "
            f"rewrote {result.packs_rewritten} and dropped {result.packs_removed} packs, "
            f"freeing {human_bytes(result.bytes_freed)}",
        )

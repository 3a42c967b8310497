"""`dits config get|set|unset|list` (also `dits config KEY [VALUE]` as git has it)."""

from __future__ import annotations

import json

import click

from dits.cli._common import Ctx, emit_json, open_repo, pass_ctx
from dits.config import DEFAULTS
from dits.errors import UsageError


def _show(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@click.command("config")
@click.argument("args", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (list/get).")
@pass_ctx
def config_cmd(ctx: Ctx, args: tuple[str, ...], as_json: bool) -> None:
    """Read and write .dits/config.

    \b
    dits config list | get KEY | set KEY VALUE | unset KEY
    dits config KEY          (get)     dits config KEY VALUE    (set)
    """
    words = list(args)
    if not words:
        words = ["list"]
    verb = words[0]
    if verb not in ("list", "get", "set", "unset"):
        verb = "get" if len(words) == 1 else "set"
        words = [verb, *words]
    with open_repo(ctx) as repo:
        cfg = repo.config
        if verb == "list":
            items = dict(cfg.items())
            if as_json:
                emit_json({"set": items, "defaults": DEFAULTS})
                return
            for key, value in sorted(items.items()):
                click.echo(f"{key}={_show(value)}")
            return
        if len(words) < 2:
            raise UsageError(f"config {verb} needs a KEY")
        key = words[1]
        if verb == "get":
            value = cfg.get(key)
            if value is None:
                raise UsageError(f"config key {key} is not set")
            if as_json:
                emit_json(value)
            else:
                click.echo(_show(value))
        elif verb == "set":
            if len(words) != 3:
                raise UsageError("config set needs KEY and VALUE")
            cfg.set(key, words[2])
        else:
            if not cfg.unset(key):
                raise UsageError(f"config key {key} is not set")

"""`dits remote add|remove|list|trust|forget`: named remotes and pinned server certificates.

Tokens are never printed: listings show ``unset`` or a masked form
(:func:`dits.remotes.mask_token`). ``trust`` and ``forget`` edit the per-user known_hosts file
and need no repository.
"""

from __future__ import annotations

import click

from dits.cli._common import Ctx, emit_json, open_repo, pass_ctx, say
from dits.errors import UsageError
from dits.remotes import (
    TRANSPORTS,
    KnownHosts,
    RemoteSpec,
    add_remote,
    format_hostport,
    list_remotes,
    mask_token,
    parse_hostport,
    remove_remote,
)

_EXIT_HELP = """\b
Exit codes: 0 ok, 2 usage (bad name, URL or fingerprint; unknown remote),
3 not a repository, 9 a remote's certificate changed (see `dits remote trust`)."""


@click.group("remote", invoke_without_command=True, epilog=_EXIT_HELP)
@click.pass_context
def remote_cmd(click_ctx: click.Context) -> None:
    """Manage remotes (dits://HOST[:PORT]/REPO) and their pinned certificates.

    \b
    dits remote                       list remote names
    dits remote add NAME URL [--token T]
    dits remote remove NAME
    dits remote list [-v] [--json]
    dits remote trust HOST:PORT sha256:<hex>
    dits remote forget HOST:PORT

    The token may also come from DITS_TOKEN, which wins over the config.
    """
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(list_cmd)


@remote_cmd.command("add", epilog=_EXIT_HELP)
@click.argument("name")
@click.argument("url")
@click.option("--token", help="Bearer token stored in .dits/config; '-' reads it from stdin.")
@click.option(
    "--transport", type=click.Choice(TRANSPORTS), help="Override core.transport for this remote."
)
@pass_ctx
def add_cmd(ctx: Ctx, name: str, url: str, token: str | None, transport: str | None) -> None:
    """Add remote NAME at URL (dits://HOST[:PORT]/REPO; port 4433 by default)."""
    if token == "-":
        token = click.get_text_stream("stdin").readline().strip()
        if not token:
            raise UsageError("--token -: no token on stdin")
    with open_repo(ctx) as repo:
        spec = add_remote(repo.config, name, url, token=token, transport=transport)
    say(ctx, f"Added remote {spec.name} {spec.url}")


@remote_cmd.command("remove", epilog=_EXIT_HELP)
@click.argument("name")
@pass_ctx
def remove_cmd(ctx: Ctx, name: str) -> None:
    """Remove remote NAME (pinned certificates stay; see `dits remote forget`)."""
    with open_repo(ctx) as repo:
        remove_remote(repo.config, name)
    say(ctx, f"Removed remote {name}")


# `rm` as git spells it; hidden so --help lists each command once.
remote_cmd.add_command(
    click.Command("rm", callback=remove_cmd.callback, params=remove_cmd.params, hidden=True)
)


def _describe(spec: RemoteSpec, pins: dict[str, str]) -> dict[str, object]:
    return {
        "name": spec.name,
        "url": str(spec.url),
        "host": spec.url.host,
        "port": spec.url.port,
        "repo": spec.url.repo,
        "transport": spec.transport,
        "token": mask_token(spec.token) if spec.token else None,
        "token_source": spec.token_source,
        "fingerprint": pins.get(spec.url.hostport),
    }


@remote_cmd.command("list", epilog=_EXIT_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Show URL, transport, token and pin.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def list_cmd(ctx: Ctx, verbose: bool = False, as_json: bool = False) -> None:
    """List remotes (tokens are masked)."""
    with open_repo(ctx) as repo:
        specs = list_remotes(repo.config)
    if not (verbose or as_json):
        for spec in specs:
            click.echo(spec.name)
        return
    pins = KnownHosts().entries()
    rows = [_describe(spec, pins) for spec in specs]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        token = "unset" if row["token"] is None else f"{row['token']} ({row['token_source']})"
        pin = row["fingerprint"] or "not pinned"
        click.echo(
            f"{row['name']}  {row['url']}  transport={row['transport']}  token={token}  cert={pin}"
        )


@remote_cmd.command("trust", epilog=_EXIT_HELP)
@click.argument("hostport", metavar="HOST:PORT")
@click.argument("fingerprint")
@pass_ctx
def trust_cmd(ctx: Ctx, hostport: str, fingerprint: str) -> None:
    """Pin FINGERPRINT (sha256:<hex>) for HOST:PORT, replacing any earlier pin.

    Get the fingerprint from the server's operator (`dits-remote` prints it at start-up), not
    from the connection you are unsure of.
    """
    host, port = parse_hostport(hostport)
    known = KnownHosts()
    old = known.trust(host, port, fingerprint)
    new = known.get(host, port)
    where = format_hostport(host, port)
    if old == new:
        say(ctx, f"{where} is already pinned to {new}")
    elif old is None:
        say(ctx, f"Pinned {where} to {new}")
    else:
        say(ctx, f"Pinned {where} to {new} (was {old})")


@remote_cmd.command("forget", epilog=_EXIT_HELP)
@click.argument("hostport", metavar="HOST:PORT")
@pass_ctx
def forget_cmd(ctx: Ctx, hostport: str) -> None:
    """Drop the pinned certificate of HOST:PORT; the next connection pins whatever it gets."""
    host, port = parse_hostport(hostport)
    where = format_hostport(host, port)
    if not KnownHosts().forget(host, port):
        raise UsageError(f"no certificate pinned for {where}")
    say(ctx, f"Forgot the certificate pinned for {where}")

"""`dits-remote`: serve, init, token create|list|revoke, fsck, gc, stats.

Errors are one line and a documented exit code, as in the client (``--debug`` for tracebacks).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click

from dits.errors import EXIT_INTERNAL, DitsError, UsageError
from dits.protocol import Permission

__all__ = ["main"]


def _root_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--root",
        type=click.Path(path_type=Path, file_okay=False),
        envvar="DITS_REMOTE_ROOT",
        required=True,
        help="The server's data folder.",
    )(fn)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


class Duration(click.ParamType[float]):
    """Seconds, or a number with a unit: ``500ms``, ``30s``, ``10m``, ``72h``, ``3d``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*", str(value).lower())
            if match is None:
                self.fail(f"{value!r} is not a duration (e.g. 600, 30s, 10m, 72h, 3d)", param, ctx)
            seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
        if seconds < 0:
            self.fail("a duration must not be negative", param, ctx)
        return seconds


class ByteSize(click.ParamType[int]):
    """Bytes, or a number with a unit: ``512MiB``, ``100GiB``, ``1TB`` (KiB.. binary, KB.. SI)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
        if match is None or match[2] not in _SIZE_UNITS:
            self.fail(f"{value!r} is not a size (e.g. 0, 1048576, 512MiB, 100GiB)", param, ctx)
        return int(float(match[1]) * _SIZE_UNITS[match[2]])


def _speculative_options(fn: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(
        [
            click.option(
                "--speculative-ttl",
                type=Duration(),
                default="72h",
                show_default=True,
                help="Speculative uploads untouched and unpinned this long are condemned.",
            ),
            click.option(
                "--speculative-grace",
                type=Duration(),
                default="1h",
                show_default=True,
                help="Condemned speculative uploads are deleted this long after, if unused.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen wants HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """dits-remote: the self-hosted dits server."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command()
@_root_option
@click.option("--listen", default="127.0.0.1:4433", show_default=True, help="HOST:PORT.")
@click.option("--storage", default=None, help="Permanent storage: a folder or s3://bucket/prefix.")
@click.option("--s3-endpoint", default=None, help="Endpoint URL of an S3-compatible service.")
@click.option("--cert", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--transport", type=click.Choice(["both", "quic", "tcp"]), default="both")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--grace", type=float, default=10.0, help="Seconds to finish requests on stop.")
@_speculative_options
@click.option(
    "--speculative-quota",
    type=ByteSize(),
    default="100GiB",
    show_default=True,
    help="Speculative bytes each token may hold; 0 refuses speculative uploads.",
)
@click.option(
    "--gc-interval",
    type=Duration(),
    default="600",
    show_default=True,
    help="Seconds between garbage collections of the temporary tier; 0 turns them off.",
)
def serve(
    root: Path,
    listen: str,
    storage: str | None,
    s3_endpoint: str | None,
    cert: Path | None,
    key: Path | None,
    transport: str,
    workers: int,
    grace: float,
    speculative_ttl: float,
    speculative_grace: float,
    speculative_quota: int,
    gc_interval: float,
) -> None:
    """Serve the repositories under --root over QUIC and TLS/TCP."""
    from remote.app import run
    from remote.speculative import SpeculativePolicy

    _require_root(root)
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    host, port = _listen(listen)
    code = run(
        root,
        host,
        port,
        storage=storage,
        s3_endpoint=s3_endpoint,
        cert=cert,
        key=key,
        quic=transport in ("both", "quic"),
        tcp=transport in ("both", "tcp"),
        workers=workers,
        grace=grace,
        policy=SpeculativePolicy(
            ttl=speculative_ttl, grace=speculative_grace, quota=speculative_quota
        ),
        gc_interval=gc_interval,
    )
    sys.exit(code)


@cli.command()
@_root_option
@click.argument("repo")
def init(root: Path, repo: str) -> None:
    """Create repository REPO (and the server root on first use)."""
    from remote.auth import is_valid_repo_name
    from remote.index import ServerIndex

    if not is_valid_repo_name(repo) or repo == "*":
        raise UsageError(f"invalid repository name {repo!r}: use letters, digits, '.', '_', '-'")
    root.mkdir(parents=True, exist_ok=True)
    index = ServerIndex(root / "index")
    try:
        index.create_repo(repo)
    finally:
        index.close()
    click.echo(f"created repository {repo} in {root}")


@cli.group()
def token() -> None:
    """Create, list and revoke bearer tokens."""


@token.command("create")
@_root_option
@click.option("--repo", required=True, help="Repository name, or '*' for all.")
@click.option("--read", "level", flag_value="read", default=True)
@click.option("--write", "level", flag_value="write")
@click.option("--admin", "level", flag_value="admin")
@click.option("--label", default="", help="A note for token list (who holds it).")
@click.option("--expires-days", type=float, default=None)
def token_create(root: Path, repo: str, level: str, label: str, expires_days: float | None) -> None:
    """Print a new token once; only its hash is kept."""
    from remote.auth import TokenStore

    _require_root(root)
    perms = {"read": Permission.READ, "write": Permission.WRITE, "admin": Permission.ADMIN}[level]
    with TokenStore(root / "auth") as store:
        secret, info = store.create(
            repo,
            perms,
            label=label,
            expires_in=None if expires_days is None else expires_days * 86400,
        )
    click.echo(secret)
    click.echo(f"token {info.token_id}: {level} on {repo} (shown once; store it safely)", err=True)


@token.command("list")
@_root_option
@click.option("--json", "as_json", is_flag=True)
def token_list(root: Path, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    from remote.auth import TokenStore

    _require_root(root)
    with TokenStore(root / "auth") as store:
        infos = store.list()
    rows = [
        {
            "id": i.token_id,
            "repo": i.repo,
            "permissions": _perm_name(i.permissions),
            "label": i.label,
            "revoked": i.revoked,
            "expires": i.expires,
        }
        for i in infos
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "revoked" if row["revoked"] else "active"
        click.echo(f"{row['id']}  {row['repo']:20} {row['permissions']:6} {state:8} {row['label']}")


@token.command("revoke")
@_root_option
@click.argument("token_id")
def token_revoke(root: Path, token_id: str) -> None:
    """Revoke a token; it stops working on its next request."""
    from remote.auth import TokenStore

    _require_root(root)
    with TokenStore(root / "auth") as store:
        store.revoke(token_id)
    click.echo(f"revoked {token_id}")


@cli.command()
@_root_option
@click.option("--storage", default=None)
@click.option("--s3-endpoint", default=None)
@click.option("--json", "as_json", is_flag=True)
def fsck(root: Path, storage: str | None, s3_endpoint: str | None, as_json: bool) -> None:
    """Verify every stored byte and every repository's connectivity."""
    from remote.app import open_service
    from remote.maintenance import server_fsck

    _require_root(root)
    service = open_service(root, storage, s3_endpoint)
    try:
        report = server_fsck(service)
    finally:
        service.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for problem in report.problems:
            click.echo(problem)
        click.echo(
            f"checked {report.blobs} blobs in {report.packs} packs and {report.repos} "
            f"repositories: {'clean' if report.clean else f'{len(report.problems)} problems'}"
        )
    if not report.clean:
        sys.exit(5)


@cli.command()
@_root_option
@click.option(
    "--temp-ttl-hours",
    type=float,
    default=72.0,
    show_default=True,
    help="Forget push uploads untouched for this long (abandoned pushes).",
)
@_speculative_options
@click.option("--json", "as_json", is_flag=True)
def gc(
    root: Path,
    temp_ttl_hours: float,
    speculative_ttl: float,
    speculative_grace: float,
    as_json: bool,
) -> None:
    """Collect garbage in the temporary tier (one pass; `serve` also runs it periodically).

    Condemns speculative uploads unpinned and untouched for --speculative-ttl, deletes those
    condemned more than --speculative-grace ago and still unused, expires abandoned push
    uploads, removes temp bytes nothing names, and gives their space back. Safe beside a
    running server; never touches permanent storage.
    """
    from remote.app import open_service
    from remote.gc import TempGc
    from remote.speculative import SpeculativePolicy

    _require_root(root)
    if temp_ttl_hours < 0:
        raise UsageError("--temp-ttl-hours must not be negative")
    policy = SpeculativePolicy(
        ttl=speculative_ttl, grace=speculative_grace, push_ttl=temp_ttl_hours * 3600
    )
    service = open_service(root, policy=policy)
    try:
        report = TempGc(service).run()
    finally:
        service.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(
            f"speculative: {report.marked} condemned, {report.swept} deleted "
            f"({report.speculative_bytes_expired} bytes); push uploads: "
            f"{report.entries_expired} expired; removed {report.blobs_removed} temporary "
            f"blobs and {report.orphans_removed} orphans, freed {report.bytes_freed} bytes"
        )


@cli.command()
@_root_option
@click.option("--json", "as_json", is_flag=True)
def stats(root: Path, as_json: bool) -> None:
    """Counts from the index: repositories, refs, blobs, temp entries, speculative tier."""
    from remote.index import ServerIndex
    from remote.service import speculative_figures

    _require_root(root)
    index = ServerIndex(root / "index")
    try:
        doc: dict[str, object] = dict(index.stats())
        doc["repositories"] = sorted(index.repos())
        doc["stored_bytes"] = sum(loc.stored_size for _, _, loc in index.iter_blobs())
        doc.update(speculative_figures(index))
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        for k, v in doc.items():
            click.echo(f"{k}: {v}")


def _perm_name(perms: Permission) -> str:
    if perms & Permission.ADMIN:
        return "admin"
    if perms & Permission.WRITE:
        return "write"
    return "read" if perms & Permission.READ else "none"


def _require_root(root: Path) -> None:
    if not (root / "index").is_dir():
        raise UsageError(
            f"{root} is not a dits-remote root; run 'dits-remote init --root {root} REPO'"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; DitsErrors become one line on stderr and their exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="dits-remote", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        return 130
    except DitsError as exc:
        if debug:
            raise
        click.echo(f"dits-remote: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:
        if debug:
            raise
        click.echo(f"dits-remote: internal error: {exc} (run with --debug for details)", err=True)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

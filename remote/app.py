"""Running dits-remote: the folder layout under ``--root``, opening the service, serving.

Layout of a server root (docs/operations.md):

* ``index/``: the LMDB index (repos, refs, blob locations, visibility, temp entries).
* ``temp/``: the temporary tier, an LMDB index plus pack files (pushed or speculatively
  uploaded, not yet promoted), and ``bytes.lock`` (``remote.bytes_lock``).
* ``auth/``: the token store (hashed bearer tokens).
* ``storage/``: permanent pack objects with the default local backend (``--storage`` moves them
  to S3 or another folder).
* ``tls/cert.pem``, ``tls/key.pem``: made on first start unless ``--cert/--key`` are given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from dits.errors import DitsError
from dits.protocol import Limits
from dits.transport import serve as _listen
from dits.transport.tls import ensure_self_signed, load_fingerprint
from remote.auth import TokenStore
from remote.gc import PeriodicGc
from remote.handler import RequestHandler
from remote.service import RemoteService
from remote.speculative import SpeculativePolicy
from remote.storage import open_storage

__all__ = ["open_service", "run", "storage_url"]

log = logging.getLogger("dits.remote")


def storage_url(root: Path, storage: str | None) -> str:
    return storage or (root / "storage").resolve().as_uri()


def open_service(
    root: Path,
    storage: str | None = None,
    s3_endpoint: str | None = None,
    policy: SpeculativePolicy | None = None,
) -> RemoteService:
    """Open everything under ``root`` (it must have been made by ``dits-remote init``)."""
    backend = open_storage(storage_url(root, storage), s3_endpoint=s3_endpoint)
    tokens = TokenStore(root / "auth")
    return RemoteService(
        root,
        backend,
        tokens,
        limits=Limits(),
        server_id=f"dits-remote@{os.uname().nodename}",
        policy=policy,
    )


def run(
    root: Path,
    host: str,
    port: int,
    *,
    storage: str | None = None,
    s3_endpoint: str | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    quic: bool = True,
    tcp: bool = True,
    workers: int = 1,
    grace: float = 10.0,
    policy: SpeculativePolicy | None = None,
    gc_interval: float = 600.0,
) -> int:
    """Serve until SIGINT/SIGTERM, then finish in-flight requests (up to ``grace`` seconds).

    The first process also collects garbage in the temporary tier every ``gc_interval``
    seconds (0: never; ``remote.gc``); with ``workers`` above 1 the others do not.
    """
    if cert is None or key is None:
        cert, key = root / "tls" / "cert.pem", root / "tls" / "key.pem"
        ensure_self_signed(cert, key, [host] if host not in ("0.0.0.0", "::") else [])
    fingerprint = load_fingerprint(cert)

    def serve_once(reuse_port: bool, announce: str | None) -> int:
        return asyncio.run(
            _serve(
                root,
                host,
                port,
                storage,
                s3_endpoint,
                cert,
                key,
                quic,
                tcp,
                reuse_port,
                grace,
                announce,
                policy,
                gc_interval if announce is not None else 0.0,  # the first process only
            )
        )

    children: list[int] = []
    if workers > 1:
        if port == 0:
            raise SystemExit("dits-remote: --workers above 1 needs an explicit port")
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:  # a worker: its own service, its own listeners on the same port
                os._exit(serve_once(True, None))
            children.append(pid)
    try:
        return serve_once(workers > 1, fingerprint)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


async def _serve(
    root: Path,
    host: str,
    port: int,
    storage: str | None,
    s3_endpoint: str | None,
    cert: Path,
    key: Path,
    quic: bool,
    tcp: bool,
    reuse_port: bool,
    grace: float,
    fingerprint: str | None,
    policy: SpeculativePolicy | None,
    gc_interval: float,
) -> int:
    service = open_service(root, storage, s3_endpoint, policy)
    service.storage.probe()
    handler = RequestHandler(service)
    try:
        server = await _listen(
            host,
            port,
            handler=handler,
            cert_file=str(cert),
            key_file=str(key),
            quic=quic,
            tcp=tcp,
            reuse_port=reuse_port,
            grace=grace,
        )
    except OSError as exc:
        handler.close()
        service.close()
        raise DitsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if fingerprint is not None:
        transports = "+".join(t for t, on in (("quic", quic), ("tcp", tcp)) if on)
        print(
            f"dits-remote listening on {host}:{server.port} ({transports}), "
            f"certificate {fingerprint}",
            flush=True,
        )
    log.info("serving %s on %s:%d (pid %d)", root, host, server.port, os.getpid())
    collector = PeriodicGc(service, gc_interval) if gc_interval > 0 else None
    if collector is not None:
        collector.start()
    await stop.wait()
    log.info("shutting down: finishing %d requests", server.active_handlers)
    server.close()
    await server.wait_closed()
    if collector is not None:  # stops after its current candidate; the service closes next
        await asyncio.get_running_loop().run_in_executor(None, collector.stop)
    handler.close()
    service.close()
    print("dits-remote stopped", file=sys.stderr, flush=True)
    return 0

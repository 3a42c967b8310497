"""S3 on loopback for the remote tests: moto's standalone server, dummy credentials, buckets.

``s3_endpoint`` (session) runs one ``ThreadedMotoServer`` on 127.0.0.1 and an ephemeral port, so
boto3 speaks real HTTP. ``s3_bucket`` (function) gives a fresh bucket and applies ``aws_env``,
which gives boto3 dummy credentials through environment variables, and only those: the repository's
autouse ``clean_env`` moves HOME to a tmp folder, and nothing may read the caller's ~/.aws,
follow a proxy, or ask an instance-metadata service. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dits.net.local_server import remote_cli
from tests.remote.helpers import Server, start_server, stop_server

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def apply_aws_env(patch: pytest.MonkeyPatch) -> None:
    """Replace every AWS_* and proxy variable with the dummy loopback setup."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name in _PROXY_VARS:
            patch.delenv(name)
    for name, value in AWS_ENV.items():
        patch.setenv(name, value)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 (ephemeral port), shared by the whole session.

    The server needs no credentials; clients get them from ``aws_env`` (function scope), so a
    real-S3 run in the same session keeps the caller's own.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials for this test (re-applied after the autouse clean_env)."""
    apply_aws_env(monkeypatch)


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> Iterator[Any]:
    """A plain boto3 client on the moto server, for setting up and inspecting buckets."""
    import boto3

    client = boto3.session.Session(
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=s3_endpoint)
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_admin: Any, aws_env: None) -> Iterator[str]:
    """A fresh, empty bucket; emptied and removed afterwards."""
    name = f"dits-test-{secrets.token_hex(6)}"
    s3_admin.create_bucket(Bucket=name)
    yield name
    for page in s3_admin.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:
            s3_admin.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    s3_admin.delete_bucket(Bucket=name)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink botocore's retry waits (0.5-1 s on average per retry) to 1 ms.

    Only the waiting changes; which responses are retried, and how often, stays botocore's
    real standard mode.
    """
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.001)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "srv"
    remote_cli("init", "--root", str(root), "proj")
    remote_cli("init", "--root", str(root), "other")
    write = remote_cli("token", "create", "--root", str(root), "--repo", "proj", "--write")
    read = remote_cli("token", "create", "--root", str(root), "--repo", "proj", "--read")
    other = remote_cli("token", "create", "--root", str(root), "--repo", "other", "--write")
    proc, port = start_server(root)
    running = Server(root, port, proc, write, read, other)
    yield running
    stop_server(running.proc)  # tests that restart the server replace .proc

"""RELIABILITY.md T8 on loopback: push and clone over QUIC through a lossy, reordering link.

The full figure (1 GB, 50 +- 20 ms) is a benchmark (`python -m benchmarks lossy`); this test
keeps the same loss, reorder and duplication rates with a short delay so it runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.chaos_proxy import UdpChaosProxy
from tests.conftest import DitsRunner, random_bytes
from tests.remote.helpers import Server, make_repo, server_fsck, tree_digest


def test_push_and_clone_survive_loss_reordering_and_duplication(
    server: Server, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    files = {"shots/a.mov": random_bytes(2_500_000, 81), "edit.prproj": b"<xml>" * 2000}
    make_repo(dits, files)
    with UdpChaosProxy(
        ("127.0.0.1", server.port), loss=0.05, reorder=0.05, duplicate=0.01, delay=0.003
    ) as proxy:
        url = f"dits://127.0.0.1:{proxy.port}/proj"
        dits("remote", "add", "origin", url, "--token", server.write_token)
        code, out, err = dits("push", "--transport", "quic", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["transport"] == "quic"
        assert report["chunks_sent"] == report["chunks_total"] > 5
        # The staging engine's network monitor got QUIC's RTT (the proxy adds 3 ms each way)
        # and packet counters (qh3, the library dits prefers, counts lost packets).
        network = report["staging"]["network"]
        assert network["rtt"] is not None and network["rtt"] >= 0.003
        assert network["loss_rate"] is not None and 0 <= network["loss_rate"] < 0.5
        clone_dir = tmp_path / "clone"
        code, out, err = DitsRunner(tmp_path)(
            "clone", url, str(clone_dir), "--token", server.read_token, "--transport", "quic"
        )
        assert code == 0, err
        counters = proxy.counters
    # The link really was bad, both ways, and QUIC recovered every byte.
    assert counters.dropped > 20 and counters.reordered > 20 and counters.duplicated > 2
    assert tree_digest(clone_dir) == tree_digest(work)
    fsck = server_fsck(server.root)
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["clean"] is True

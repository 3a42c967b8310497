"""A rogue server (real QUIC on 127.0.0.1) feeding hostile trees: the client refuses them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dits.core.codec import encode_object, object_id
from dits.core.objects import Commit, Identity
from dits.protocol import (
    Blob,
    Encoding,
    Get,
    Hello,
    Limits,
    ListRefs,
    Message,
    Permission,
    Refs,
    RequestAssembler,
    Welcome,
    encode_message,
)
from dits.transport import serve
from dits.transport.tls import ensure_self_signed
from tests.conftest import DitsRunner
from tests.remote.helpers import hostile_tree


class RogueServer:
    """Answers Hello, ListRefs and Get with a commit whose tree names ``name``."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tree = hostile_tree(name)
        who = Identity("Mallory", "m@example.com", 1700000000, 0)
        commit = Commit(object_id(self.tree), (), who, who, "evil")
        self.commit = encode_object(commit)
        self.objects = {object_id(self.tree): self.tree, object_id(self.commit): self.commit}
        self.cert, self.key = str(tmp / "cert.pem"), str(tmp / "key.pem")
        ensure_self_signed(self.cert, self.key)
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: object, info: object) -> None:
        asm = RequestAssembler(Limits())
        msgs = []
        while not asm.complete:
            msgs += asm.feed(await reader.readexactly(asm.bytes_needed))
        msg = msgs[0]
        out: list[Message]
        if isinstance(msg, Hello):
            out = [Welcome(1, Permission.READ, "rogue", Limits())]
        elif isinstance(msg, ListRefs):
            out = [Refs("refs/heads/main", (("refs/heads/main", object_id(self.commit)),))]
        elif isinstance(msg, Get):
            out = [Blob(i, Encoding.RAW, len(self.objects[i]), self.objects[i]) for i in msg.ids]
        else:
            raise AssertionError(f"unexpected {msg}")
        for i, m in enumerate(out):
            for buf in encode_message(m, final=i == len(out) - 1, max_payload=1 << 20):
                writer.write(buf)  # type: ignore[attr-defined]
        await writer.drain()  # type: ignore[attr-defined]

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await serve(
            "127.0.0.1", 0, handler=self._handle, cert_file=self.cert, key_file=self.key
        )
        self.port = server.port
        self._ready.set()
        await self._stop.wait()
        server.close()
        await server.wait_closed()

    def __enter__(self) -> RogueServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(params=["..", ".dits", ".DITS", ".dits.", "a/b", "/etc"])
def rogue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RogueServer]:
    with RogueServer(tmp_path, request.param) as server:
        yield server


def test_clone_refuses_a_hostile_tree(rogue: RogueServer, tmp_path: Path) -> None:
    sentinel = tmp_path / "outside.txt"
    sentinel.write_text("untouched")
    target = tmp_path / "victim"
    code, _, err = DitsRunner(tmp_path)(
        "clone", f"dits://127.0.0.1:{rogue.port}/repo", str(target), "--token", ""
    )
    assert code == 5, err
    assert "invalid object" in err
    assert sentinel.read_text() == "untouched"
    # Nothing was stored (the hostile object is refused before anything is), so the clone
    # removed the folder it had made: nothing checked out, nothing outside.
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem", "outside.txt"]

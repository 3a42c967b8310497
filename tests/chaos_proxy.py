"""A UDP proxy on loopback that loses, reorders, duplicates and delays datagrams.

RELIABILITY.md T8: QUIC must deliver a push intact over a bad network. The proxy sits between
a dits client and a dits-remote, both on 127.0.0.1; every datagram, in either direction, is
dropped with probability ``loss``, sent twice with ``duplicate``, held back by an extra delay
with ``reorder`` (so later datagrams overtake it), and otherwise delivered after ``delay`` plus
or minus ``jitter`` seconds. The random choices come from one seeded generator. It runs its own
event loop in a background thread, so a test can drive CLI subprocesses through it.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChaosCounters", "UdpChaosProxy"]


@dataclass
class ChaosCounters:
    """What the proxy did, per datagram."""

    received: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    bytes_delivered: int = 0
    clients: set[tuple[str, int]] = field(default_factory=set)


class UdpChaosProxy:
    """Forward 127.0.0.1:<port> to ``target`` through a lossy, reordering, delaying link."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        loss: float = 0.05,
        reorder: float = 0.05,
        duplicate: float = 0.01,
        delay: float = 0.005,
        jitter: float = 0.002,
        seed: int = 1,
    ) -> None:
        self.target = target
        self.loss, self.reorder, self.duplicate = loss, reorder, duplicate
        self.delay, self.jitter = delay, jitter
        self.counters = ChaosCounters()
        self.port = 0
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._front: asyncio.DatagramTransport | None = None
        self._upstream: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def start(self) -> int:
        """Start forwarding; return the port clients should use."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        self.port = future.result(10)
        return self.port

    def stop(self) -> None:
        async def close() -> None:
            for transport in self._upstream.values():
                transport.close()
            if self._front is not None:
                self._front.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> UdpChaosProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _open(self) -> int:
        proxy = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                proxy._from_client(data, addr)

        transport, _ = await self._loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self._front = transport
        sockname: Any = transport.get_extra_info("sockname")
        return int(sockname[1])

    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        upstream = self._upstream.get(client)
        if upstream is None:
            self.counters.clients.add(client)
            self._loop.create_task(self._connect_upstream(client, data))
            return
        self._impair(data, lambda d: upstream.sendto(d))

    async def _connect_upstream(self, client: tuple[str, int], first: bytes) -> None:
        proxy = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                front = proxy._front
                if front is not None:
                    proxy._impair(data, lambda d: front.sendto(d, client))

        if client in self._upstream:  # a second datagram raced the first one's connect
            upstream = self._upstream[client]
        else:
            upstream, _ = await self._loop.create_datagram_endpoint(Back, remote_addr=self.target)
            self._upstream[client] = upstream
        self._impair(first, lambda d: upstream.sendto(d))

    def _impair(self, data: bytes, send: Any) -> None:
        counters, rng = self.counters, self._random
        counters.received += 1
        if rng.random() < self.loss:
            counters.dropped += 1
            return
        copies = 1
        if rng.random() < self.duplicate:
            counters.duplicated += 1
            copies = 2
        for _ in range(copies):
            wait = max(0.0, self.delay + rng.uniform(-self.jitter, self.jitter))
            if rng.random() < self.reorder:
                counters.reordered += 1
                wait += 2 * self.delay + self.jitter  # later datagrams overtake this one
            self._loop.call_later(wait, self._deliver, data, send)

    def _deliver(self, data: bytes, send: Any) -> None:
        try:
            send(data)
        except (OSError, RuntimeError):  # closed meanwhile: the proxy is stopping
            return
        self.counters.bytes_delivered += len(data)

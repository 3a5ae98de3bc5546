"""A userspace TCP proxy that delays every byte by a fixed one-way time (the kernel here has
no netem). Order is kept: each direction is one FIFO of (due time, chunk)."""

from __future__ import annotations

import asyncio
import time


class DelayProxy:
    def __init__(self, listen_port: int, target_host: str, target_port: int, one_way_s: float) -> None:
        self.listen_port, self.target = listen_port, (target_host, target_port)
        self.delay = one_way_s
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.listen_port)

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                                 return_exceptions=True)
        except (asyncio.CancelledError, OSError):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    writer.close()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        task = asyncio.create_task(pump())
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((time.monotonic() + self.delay, data))
        finally:
            queue.put_nowait((0.0, None))
            await task

    async def close(self) -> None:
        if self.server:
            self.server.close()


async def _smoke(one_way_s: float = 0.02, rounds: int = 5) -> list[float]:
    """An echo server behind the proxy: each round trip takes about twice the one-way delay."""
    import socket

    async def echo(reader, writer) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass  # the check is over
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = DelayProxy(port, "127.0.0.1", server.sockets[0].getsockname()[1], one_way_s)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rtts = []
    for k in range(rounds):
        t = time.monotonic()
        writer.write(b"ping %d\n" % k)
        await writer.drain()
        assert await reader.readline() == b"ping %d\n" % k
        rtts.append(time.monotonic() - t)
    writer.close()
    await proxy.close()
    server.close()
    return rtts


if __name__ == "__main__":
    import argparse
    import statistics

    ap = argparse.ArgumentParser(description="check the proxy: echo round trips through it")
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--smoke", action="store_true", help="the check, in well under a second")
    a = ap.parse_args()
    rtts = asyncio.run(_smoke(a.rtt_ms / 2000))
    med = statistics.median(rtts) * 1000
    print(f"round trip through the proxy: median {med:.1f} ms (asked for {a.rtt_ms:.0f} ms)")
    if not a.rtt_ms <= med < a.rtt_ms + 100:  # a busy machine's timers run late, never early
        raise SystemExit(f"the proxy's round trip {med:.1f} ms is not the {a.rtt_ms:.0f} ms asked for")

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

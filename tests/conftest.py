"""Shared fixtures: free ports, a real uvicorn server on 127.0.0.1 in a thread, tokens, a TCP proxy
that can cut connections. Others may add fixtures here."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn

from committee.executors import Executor
from committee.executors.fake import FakeExecutor
from committee.server import ServerSettings, create_app, uvicorn_config
from committee.store import Store

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningServer:
    """A real uvicorn server, with its own event loop in a thread."""

    settings: ServerSettings
    executor: Executor
    port: int = field(default_factory=free_port)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        app = create_app(self.settings, self.executor)
        self._server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(int(START_TIMEOUT_S / 0.02)):
            if self._server.started:
                return
            if not self._thread.is_alive():
                break
            time.sleep(0.02)
        raise RuntimeError("the test server did not start")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)

    async def revoke(self, token: str) -> None:
        store = await Store.open(self.settings.db_path)
        try:
            assert await store.revoke_token(token) == 1
        finally:
            await store.aclose()

    async def token(self, user: str) -> str:
        """A new token for `user`, written through a second connection to the server's store."""
        store = await Store.open(self.settings.db_path)
        try:
            return await store.create_token(user)
        finally:
            await store.aclose()


ServerFactory = Callable[..., RunningServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """`start_server(executor=None, auth=True, **settings)`: a started server on a free port."""
    servers: list[RunningServer] = []

    def start(executor: Executor | None = None, **options: object) -> RunningServer:
        data_dir = tmp_path / f"server-{len(servers)}"
        data_dir.mkdir()
        options.setdefault("allow_local_repos", True)  # the tests' repositories are paths
        settings = ServerSettings(data_dir, data_dir / "committee.db", **options)  # type: ignore[arg-type]
        server = RunningServer(settings, executor or FakeExecutor())
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@dataclass
class Proxy:
    """A TCP proxy on 127.0.0.1 whose connections can all be cut at once."""

    upstream_port: int
    port: int = 0
    connections: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Drop every connection, as a network failure would (no close handshake)."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def aclose(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )
        for end in (writer, up_writer):
            end.transport.abort()
            self._writers.discard(end)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@pytest.fixture
async def proxy_to() -> AsyncIterator[Callable[[int], Awaitable[Proxy]]]:
    """`await proxy_to(port)`: a started Proxy in front of 127.0.0.1:port."""
    proxies: list[Proxy] = []

    async def start(port: int) -> Proxy:
        proxy = Proxy(port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.aclose()

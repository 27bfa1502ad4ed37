"""The server: the one engine and the one store behind WebSocket protocol v1 and a small REST API.

`create_app` builds the Starlette app; its lifespan opens the store, starts the engine and calls
`engine.recover()` so runs cut short by a crash carry on. Each WebSocket connection is a
`Session`: one task reads client messages and answers them in order, and one task per watched
run pumps that run's events (replayed from the store, then live) to the socket.

A slow client never slows a run: the engine's per-subscriber queue is bounded, and a watchdog
drops connections whose send has waited too long (uvicorn's WebSocket send waits while the
socket's write buffer is full, so a full TCP window blocks it). Either closes the connection
with CLOSE_TOO_SLOW; the client resumes with `after_seq`. Each event is serialised once, for
all subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from committee import __version__
from committee.auth import Auth, as_user, token_from
from committee.config import describe_validation_error
from committee.engine import Engine, SubscriberTooSlow
from committee.errors import (
    AuthError,
    BadInput,
    CommitteeError,
    MessageTooLarge,
    NotFound,
    TemporaryExecutorError,
)
from committee.executors import Executor
from committee.messages import (
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    AnyRunEvent,
    Cancel,
    ErrorEvent,
    Ping,
    Pong,
    Submit,
    Subscribe,
    Subscribed,
    client_message_adapter,
)
from committee.models import RunRequest
from committee.store import RunRow, Store

log = logging.getLogger("committee.server")

WEB_DIR = Path(__file__).parent / "web"
SEND_TIMEOUT_S = 10.0  # a client that cannot take one frame in this long is dropped
CLOSE_TIMEOUT_S = 10.0  # then its close frame waits this long for room, and we let it go
MAX_SUBSCRIPTIONS = 64  # runs one connection may watch at once
FRAME_CACHE_EVENTS = 8192
CLOSE_INTERNAL_ERROR = 1011
ClientMessage = Submit | Subscribe | Cancel | Ping
LOG_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path
    db_path: Path
    auth: bool = True
    max_concurrent: int | None = None
    allow_local_repos: bool = False  # a path on the server is not for remote users by default
    allow_network: bool = False  # commands reach no network unless the operator says so
    token_check_s: float = 5.0  # how soon a revoked token's open connections are closed
    send_timeout_s: float = SEND_TIMEOUT_S


class FrameCache:
    """The JSON text of recent events by (run_id, seq), so that a fan-out to N clients (live or
    replaying) serialises each event once. An event's content never changes once it has a seq."""

    def __init__(self, size: int = FRAME_CACHE_EVENTS) -> None:
        self._size = size
        self._frames: OrderedDict[tuple[str, int], str] = OrderedDict()

    def frame(self, event: AnyRunEvent) -> str:
        key = (event.run_id, event.seq)
        text = self._frames.get(key)
        if text is None:
            text = self._frames[key] = event.model_dump_json()
            if len(self._frames) > self._size:
                self._frames.popitem(last=False)
        return text


@dataclass(frozen=True)
class Hub:
    """What every request shares."""

    engine: Engine
    auth: Auth
    send_timeout_s: float
    frames: FrameCache = field(default_factory=FrameCache)
    sessions: set[Session] = field(default_factory=set)

    @property
    def store(self) -> Store:
        return self.engine.store

    async def watch_tokens(self, interval: float) -> None:
        """Close the connections whose token has been revoked since they connected: a
        revocation takes effect within `interval`, not at the next reconnect."""
        while True:
            await asyncio.sleep(interval)
            for token in {s.token for s in self.sessions if s.token is not None}:
                if await self.store.user_for_token(token) is None:
                    for session in [s for s in self.sessions if s.token == token]:
                        session.revoke()

    async def watch_sends(self) -> None:
        """Drop the connections whose sends have been stuck for longer than send_timeout_s.
        One timer for all: a deadline on each send would cost more than the rest of it."""
        while True:
            await asyncio.sleep(self.send_timeout_s / 4)
            now = time.monotonic()
            for session in list(self.sessions):
                session.check_send(now)


def parse_client_message(text: str | bytes) -> ClientMessage:
    """One client frame as a protocol message. Raises BadInput, saying what is wrong."""
    try:
        return client_message_adapter.validate_json(text)
    except ValidationError as exc:
        raise BadInput(describe_validation_error(exc)) from None


# A submit's own fields (type, the ignored ws_url): not part of the run request.
_SUBMIT_ONLY = set(Submit.model_fields) - set(RunRequest.model_fields)


def request_of(message: Submit) -> RunRequest:
    return RunRequest(**message.model_dump(exclude=_SUBMIT_ONLY))


# ---------------------------------------------------------------- app and lifespan


def create_app(settings: ServerSettings, executor: Executor) -> Starlette:
    """The ASGI app. It owns `executor` from here on and closes it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Hub]]:
        async with open_hub(settings, executor) as hub:
            yield {"hub": hub}

    return Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={CommitteeError: _error_response},
    )


@asynccontextmanager
async def open_hub(settings: ServerSettings, executor: Executor) -> AsyncIterator[Hub]:
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(_close_executor, executor)
        store = await Store.open(settings.db_path)
        stack.push_async_callback(store.aclose)
        engine = Engine(
            store,
            executor,
            settings.data_dir,
            max_concurrent=settings.max_concurrent,
            allow_local_repos=settings.allow_local_repos,
            allow_network=settings.allow_network,
        )
        await stack.enter_async_context(engine)
        recovered = await engine.recover()
        hub = Hub(engine, Auth(store, settings.auth), settings.send_timeout_s)
        watchdog = asyncio.create_task(hub.watch_sends(), name="committee-send-watchdog")
        stack.push_async_callback(_stop, watchdog)
        if settings.auth:
            tokens = asyncio.create_task(
                hub.watch_tokens(settings.token_check_s), name="committee-token-watch"
            )
            stack.push_async_callback(_stop, tokens)
        log.info(
            "server ready",
            extra={
                "executor": executor.name,
                "auth": settings.auth,
                "max_concurrent": engine.max_concurrent,
                "recovered_runs": len(recovered),
            },
        )
        yield hub


async def _close_executor(executor: Executor) -> None:
    await executor.aclose()
    log.info("server stopped")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def uvicorn_config(app: Starlette, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn settings the server relies on, loaded and ready for `uvicorn.Server`."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # Its send waits while the transport is paused (write buffer over the high-water mark),
        # as the deprecated "websockets" one awaits drain: a full TCP window blocks the send,
        # and the send watchdog turns that into CLOSE_TOO_SLOW. Unlike that one it needs no
        # lock around concurrent sends, and it costs less per frame.
        ws="websockets-sansio",
        ws_max_size=MAX_FRAME_BYTES,
        # Compressing is per connection: with N watchers it would cost N times the CPU of the
        # one shared serialisation. Logs are sent as they are.
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        **options,
    )
    config.load()
    return config


def _routes() -> list[Route | WebSocketRoute | Mount]:
    return [
        Route("/health", health),
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/api/runs", list_runs, methods=["GET"]),
        Route("/api/runs", submit_run, methods=["POST"]),
        Route("/api/runs/{run_id}", get_run),
        Route("/api/runs/{run_id}/commits/{sha}/log", commit_log),
        Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/", index),
        Route("/runs/{run_id}", index),
        Mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static"),
    ]


def _hub(connection: HTTPConnection) -> Hub:
    hub: Hub = connection.state.hub
    return hub


def _peer(connection: HTTPConnection) -> str:
    client = connection.client
    return f"{client.host}:{client.port}" if client else "?"


async def _authenticate(connection: HTTPConnection) -> str | None:
    try:
        return await _hub(connection).auth.user_for(
            token_from(connection.headers, connection.query_params)
        )
    except AuthError as exc:
        log.warning(
            "auth failure",
            extra={"client": _peer(connection), "path": connection.url.path, "reason": exc.message},
        )
        raise


# ---------------------------------------------------------------- HTTP


_STATUS_OF: tuple[tuple[type[CommitteeError], int], ...] = (
    (AuthError, 401),
    (NotFound, 404),
    (MessageTooLarge, 413),
    (BadInput, 400),
    (TemporaryExecutorError, 503),
)


async def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CommitteeError)
    status = next((code for kind, code in _STATUS_OF if isinstance(exc, kind)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = ErrorEvent(code=exc.code, message=exc.message).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


async def health(request: Request) -> Response:
    executor = _hub(request).engine.executor
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "executor": executor.name,
            "isolation": executor.describe(),
        }
    )


async def list_runs(request: Request) -> Response:
    user = await _authenticate(request)
    limit = _int_param(request, "limit", default=50, low=1, high=500)
    runs = await _hub(request).store.list_runs(
        user_id=user or request.query_params.get("user_id"), limit=limit
    )
    return JSONResponse([run.model_dump(mode="json", exclude={"results"}) for run in runs])


async def _owned_run(request: Request) -> tuple[Hub, str, str | None, RunRow]:
    """The hub, the run id of the path, the caller, and the run, if the caller may see it."""
    user = await _authenticate(request)
    hub = _hub(request)
    run_id = request.path_params["run_id"]
    return hub, run_id, user, await hub.auth.run_for(user, run_id)


async def get_run(request: Request) -> Response:
    hub, run_id, _, _ = await _owned_run(request)
    summary = await hub.store.run_summary(run_id)
    return Response(summary.model_dump_json(), media_type="application/json")


async def commit_log(request: Request) -> Response:
    hub, run_id, _, run = await _owned_run(request)
    commit = _one_commit(run, request.path_params["sha"])

    async def lines() -> AsyncIterator[str]:
        # Whole pages per chunk: one chunk per line made browsers read 100x slower.
        page: list[str] = []
        size = 0
        async for line in hub.store.commit_log(run_id, commit):
            page.append(line)
            size += len(line) + 1
            if size >= LOG_CHUNK_BYTES:
                yield "\n".join(page) + "\n"
                page, size = [], 0
        if page:
            yield "\n".join(page) + "\n"

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")


async def submit_run(request: Request) -> Response:
    user = await _authenticate(request)
    body = await _bounded_body(request)
    try:
        message = Submit.model_validate_json(body)
    except ValidationError as exc:
        raise BadInput(describe_validation_error(exc)) from None
    run_id = await _hub(request).engine.submit(as_user(request_of(message), user))
    return JSONResponse({"run_id": run_id}, status_code=201)


async def cancel_run(request: Request) -> Response:
    hub, run_id, user, _ = await _owned_run(request)
    cancelled = await hub.engine.cancel(run_id)
    log.info("run cancel requested", extra={"run_id": run_id, "user": user, "live": cancelled})
    return JSONResponse({"run_id": run_id, "cancelled": cancelled})


async def index(request: Request) -> Response:
    # The page itself needs no token: it asks for one and sends it on every API and WS call.
    return FileResponse(WEB_DIR / "index.html")


def _int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadInput(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _one_commit(run: RunRow, prefix: str) -> str:
    matches = [c.ref.sha for c in run.commits if c.ref.sha.startswith(prefix.lower())]
    if not matches:
        raise NotFound(f"no commit {prefix} in run {run.run_id}")
    if len(matches) > 1:
        raise BadInput(f"{prefix!r} names {len(matches)} commits of run {run.run_id}")
    return matches[0]


async def _bounded_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FRAME_BYTES:
            raise MessageTooLarge(f"request body over {MAX_FRAME_BYTES} bytes")
    return bytes(body)


# ---------------------------------------------------------------- WebSocket


async def websocket_endpoint(websocket: WebSocket) -> None:
    # Accept first: a close code can only be sent on an open connection, and browsers see
    # nothing of an HTTP refusal.
    await websocket.accept()
    try:
        user = await _authenticate(websocket)
    except AuthError as exc:
        await websocket.close(CLOSE_UNAUTHORIZED, exc.message)
        return
    token = token_from(websocket.headers, websocket.query_params) if user is not None else None
    await Session(websocket, _hub(websocket), user, token).serve()


class _Hangup(Exception):
    """Ends a connection. `code` is the close code to send; None when the client is gone."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _first(group: BaseExceptionGroup[_Hangup]) -> _Hangup:
    first = group.exceptions[0]
    return first if isinstance(first, _Hangup) else _first(first)


class Session:
    """One WebSocket connection. Requests are answered in the order they arrive."""

    def __init__(
        self, websocket: WebSocket, hub: Hub, user: str | None, token: str | None = None
    ) -> None:
        self._ws = websocket
        self._hub = hub
        self._user = user
        self.token = token  # None with auth off
        self._revoked = False
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._group = asyncio.TaskGroup()
        self._who = {"client": _peer(websocket), "user": user or "-"}
        self._sending = 0  # sends under way (several when the socket is full)
        self._blocked_since: float | None = None  # since when sends have been under way
        self._task: asyncio.Task[Any] | None = None
        self._stalled = False

    async def serve(self) -> None:
        started = time.monotonic()
        self._task = asyncio.current_task()
        self._hub.sessions.add(self)
        log.info("client connected", extra=self._who)
        try:
            hangup = await self._run()
        except asyncio.CancelledError:
            if not (self._stalled or self._revoked) or self._task is None:
                raise
            self._task.uncancel()  # our own watchdogs' doing, not a shutdown
            if self._revoked:
                hangup = _Hangup(CLOSE_UNAUTHORIZED, "the token was revoked")
            else:
                hangup = self._too_slow(None, f"a send waited over {self._hub.send_timeout_s}s")
        finally:
            self._hub.sessions.discard(self)
        reason = hangup.reason
        if hangup.code is not None:
            await self._close(hangup)
            reason = f"server closed it ({hangup.code}): {reason}"
        seconds = round(time.monotonic() - started, 3)
        log.info("client disconnected", extra={**self._who, "reason": reason, "seconds": seconds})

    async def _run(self) -> _Hangup:
        hangup = _Hangup(None, "client closed the connection")  # (the reader ends by raising)
        try:
            async with self._group:
                self._group.create_task(self._read())
        except* _Hangup as group:
            hangup = _first(group)
        return hangup

    def revoke(self) -> None:
        """Called by the hub's token watch: this connection's token no longer counts."""
        if self._revoked or self._stalled:
            return
        self._revoked = True
        if self._task is not None:
            self._task.cancel()

    def check_send(self, now: float) -> None:
        """Called by the hub's watchdog: a connection that cannot take a frame is dropped."""
        since = self._blocked_since
        if (
            since is None
            or now - since <= self._hub.send_timeout_s
            or self._stalled
            or self._revoked
        ):
            return
        self._stalled = True
        if self._task is not None:
            self._task.cancel()

    async def _read(self) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                raise _Hangup(None, f"client closed the connection ({code})")
            text = message.get("text")
            if text is None:
                await self._send_error(BadInput("send JSON text frames, not binary ones"))
                continue
            await self._dispatch(text)

    async def _dispatch(self, text: str) -> None:
        run_id: str | None = None
        try:
            message = parse_client_message(text)
            run_id = getattr(message, "run_id", None)
            await self._handle(message)
        except _Hangup:
            raise
        except CommitteeError as exc:
            await self._send_error(exc, run_id)
        except Exception:  # a bug must cost one request, not the connection
            log.exception("request failed", extra=self._who)
            await self._send_error(CommitteeError("internal error; see the server log"), run_id)

    async def _handle(self, message: ClientMessage) -> None:
        if isinstance(message, Ping):
            await self._send(Pong().model_dump_json())
        elif isinstance(message, Submit):
            run_id = await self._hub.engine.submit(as_user(request_of(message), self._user))
            await self._follow(run_id, 0)
        elif isinstance(message, Subscribe):
            run = await self._hub.auth.run_for(self._user, message.run_id)
            if message.after_seq > run.last_seq:  # else nothing would ever come: say so
                raise BadInput(f"after_seq {message.after_seq} is past the run's last event")
            await self._follow(message.run_id, message.after_seq)
        else:
            await self._hub.auth.run_for(self._user, message.run_id)
            live = await self._hub.engine.cancel(message.run_id)
            log.info(
                "run cancel requested", extra={**self._who, "run_id": message.run_id, "live": live}
            )

    async def _follow(self, run_id: str, after_seq: int) -> None:
        """Acknowledge, then pump the run's events after `after_seq`; a second subscribe to the
        same run replaces the first (the client is resuming)."""
        if run_id not in self._pumps and len(self._pumps) >= MAX_SUBSCRIPTIONS:
            raise BadInput(f"one connection watches at most {MAX_SUBSCRIPTIONS} runs at once")
        if previous := self._pumps.pop(run_id, None):
            previous.cancel()
        await self._send(Subscribed(run_id=run_id, after_seq=after_seq).model_dump_json())
        task = self._group.create_task(self._pump(run_id, after_seq))
        self._pumps[run_id] = task
        task.add_done_callback(lambda done: self._forget(run_id, done))

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self._pumps.get(run_id) is task:
            del self._pumps[run_id]

    async def _pump(self, run_id: str, after_seq: int) -> None:
        frames = self._hub.frames
        # An async generator in fact: closing it at once unregisters the engine subscriber.
        live = self._hub.engine.subscribe(run_id, after_seq)
        events = cast(AsyncGenerator[AnyRunEvent, None], live)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    await self._send(frames.frame(event))
        except SubscriberTooSlow as exc:
            raise self._too_slow(run_id, exc.message) from None
        except _Hangup:
            raise
        except Exception:
            log.exception("event pump failed", extra={**self._who, "run_id": run_id})
            raise _Hangup(CLOSE_INTERNAL_ERROR, "internal error; resume with after_seq") from None

    async def _send(self, text: str) -> None:
        if not self._sending:
            self._blocked_since = time.monotonic()
        self._sending += 1
        try:
            await self._ws.send_text(text)
        except WebSocketDisconnect:
            raise _Hangup(None, "connection lost") from None
        finally:
            self._sending -= 1
            if not self._sending:
                self._blocked_since = None

    async def _send_error(self, exc: CommitteeError, run_id: str | None = None) -> None:
        event = ErrorEvent(code=exc.code, message=exc.message, run_id=run_id)
        await self._send(event.model_dump_json())

    def _too_slow(self, run_id: str | None, why: str) -> _Hangup:
        log.warning("client dropped: too slow", extra={**self._who, "run_id": run_id, "why": why})
        return _Hangup(CLOSE_TOO_SLOW, "too slow: subscribe again with after_seq = last seq seen")

    async def _close(self, hangup: _Hangup) -> None:
        code = hangup.code if hangup.code is not None else 1000
        # The client may vanish while we close (uvicorn then raises RuntimeError or OSError), or
        # never read again: the close frame waits for room in the socket like any other.
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.close(code, hangup.reason)

"""A protocol v1 client that outlives dropped connections.

`stream_run` sends a submit (or a subscribe), yields the run's events up to `run.finished`, and
when the connection drops it reconnects and subscribes again with `after_seq` = the last seq it
yielded: the caller sees every event once, in order, whatever happened to the connection.
Retries are bounded; the count starts over whenever a connection brought new events. When not
even the first connection can be made, nothing is listening there: it fails at once.

`cancel_run` stops a run through the REST API, which, unlike the WebSocket, says whether the
run was still going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from committee.errors import (
    AuthError,
    BadInput,
    BadRepository,
    CommitteeError,
    ExecutorError,
    GitError,
    MessageTooLarge,
    NotFound,
    TemporaryExecutorError,
    UnknownCommit,
    UnknownProjectType,
)
from committee.messages import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_UNAUTHORIZED,
    AnyRunEvent,
    ErrorEvent,
    Pong,
    RunFinished,
    Submit,
    Subscribe,
    Subscribed,
    server_message_adapter,
)

log = logging.getLogger("committee.client")

RETRIES = 8
BACKOFF_S = 0.25
MAX_BACKOFF_S = 5.0
MAX_EVENT_BYTES = 256 << 20  # one commit.log event can carry many long lines
_ERRORS = {
    kind.code: kind
    for kind in (
        BadInput,
        UnknownCommit,
        BadRepository,
        UnknownProjectType,
        MessageTooLarge,
        NotFound,
        AuthError,
        GitError,
        ExecutorError,
        TemporaryExecutorError,
    )
}


def error_from(event: ErrorEvent) -> CommitteeError:
    """The exception an error event stands for (BadInput ones make the CLI exit 2)."""
    return _ERRORS.get(event.code, CommitteeError)(event.message)


def _not_listening(url: str, why: object) -> CommitteeError:
    return CommitteeError(f"cannot connect to {url}: is `committee serve` running there? ({why})")


async def cancel_run(url: str, token: str | None, run_id: str) -> bool:
    """Cancel a run on the server whose WebSocket is at `url`. False if it had already
    finished; raises NotFound (no such run, or not yours) and AuthError."""
    api = _http_base(url) + f"/api/runs/{quote(run_id, safe='')}/cancel"
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(api, headers=headers)
    except httpx.TransportError as exc:
        raise _not_listening(url, f"{type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise _error_of(response)
    return bool(response.json()["cancelled"])


def _http_base(url: str) -> str:
    """The server's HTTP root, from its WebSocket URL (ws://h:p/ws → http://h:p)."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, parts.path.removesuffix("/ws"), "", ""))


def _error_of(response: httpx.Response) -> CommitteeError:
    try:
        return error_from(ErrorEvent.model_validate_json(response.content))
    except ValidationError:  # not the server's error body: a proxy's, say
        return CommitteeError(
            f"{response.url} answered {response.status_code}: {response.text[:300]}"
        )


class _Dropped(Exception):
    """The connection failed in a way worth retrying."""


@dataclass
class _Cursor:
    run_id: str | None
    last_seq: int = 0
    connected: bool = False  # whether any connection was made: if none, no server is there
    sent: bool = False  # whether the first message left; a submit is never sent twice
    finished: bool = False

    def request(self, first: Submit | Subscribe) -> Submit | Subscribe:
        if self.run_id is None:
            return first
        return Subscribe(run_id=self.run_id, after_seq=self.last_seq)


async def stream_run(
    url: str,
    token: str | None,
    first: Submit | Subscribe,
    *,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
) -> AsyncIterator[AnyRunEvent]:
    """The run's events after `first`, through reconnections, ending with run.finished.
    Raises what an error event stands for, AuthError, or CommitteeError once retries run out."""
    after = first.after_seq if isinstance(first, Subscribe) else 0
    cursor = _Cursor(first.run_id if isinstance(first, Subscribe) else None, after)
    failures = 0
    while True:
        seen = cursor.last_seq
        try:
            events = _one_connection(url, token, cursor.request(first), cursor)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
            if cursor.finished:
                return
            raise _Dropped("the server closed the connection before the run finished")
        except _Dropped as exc:
            failures = 0 if cursor.last_seq > seen else failures + 1
            await _before_retry(url, cursor, exc, failures, retries, backoff_s)


async def _before_retry(
    url: str, cursor: _Cursor, exc: _Dropped, failures: int, retries: int, backoff_s: float
) -> None:
    """Wait the backoff; raise instead when retrying would resubmit or is hopeless."""
    if not cursor.connected:  # a typo'd URL or a server that is not up: waiting will not help
        raise _not_listening(url, exc)
    if cursor.run_id is None and cursor.sent:
        raise CommitteeError(
            f"lost the connection to {url} before the server acknowledged the submit "
            f"({exc}); the run may or may not have started"
        )
    if failures > retries:
        raise CommitteeError(f"gave up on {url} after {retries} retries: {exc}")
    delay = min(backoff_s * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
    log.warning("connection lost (%s); resuming in %.1fs", exc, delay)
    await asyncio.sleep(delay)


async def _one_connection(
    url: str, token: str | None, message: Submit | Subscribe, cursor: _Cursor
) -> AsyncGenerator[AnyRunEvent, None]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with connect(
            url, additional_headers=headers, max_size=MAX_EVENT_BYTES, compression=None
        ) as websocket:
            cursor.connected = True
            # Unset fields stay off the wire: a server that predates one still takes the message.
            await websocket.send(message.model_dump_json(exclude_none=True))
            cursor.sent = True
            while not cursor.finished:  # then leave `connect` normally: a clean close
                try:
                    event = _accept(cursor, await websocket.recv(decode=False))
                except CommitteeError:
                    await websocket.close()  # the server's answer was an error: we are done
                    raise
                if event is not None:
                    yield event
    except ConnectionClosed as exc:
        raise _closed(exc) from None
    except InvalidURI as exc:
        raise BadInput(f"not a WebSocket URL: {url} ({exc})") from None
    except InvalidStatus as exc:
        raise CommitteeError(f"{url} refused the WebSocket: {exc}") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise _Dropped(f"{type(exc).__name__}: {exc}") from None


def _accept(cursor: _Cursor, raw: bytes) -> AnyRunEvent | None:
    """Track what a frame tells; return it if it is the next run event."""
    try:
        item = server_message_adapter.validate_json(raw)
    except ValidationError as exc:
        raise CommitteeError(
            f"the server sent a message this client does not know: {exc}"
        ) from None
    if isinstance(item, ErrorEvent):
        raise error_from(item)
    if isinstance(item, Subscribed):
        cursor.run_id = item.run_id
        return None
    if isinstance(item, Pong) or item.seq <= cursor.last_seq:
        return None
    if item.seq != cursor.last_seq + 1:
        raise _Dropped(f"events jumped from seq {cursor.last_seq} to {item.seq}")
    cursor.last_seq = item.seq
    cursor.finished = isinstance(item, RunFinished)
    event: AnyRunEvent = item
    return event


def _closed(exc: ConnectionClosed) -> Exception:
    code = exc.rcvd.code if exc.rcvd else None
    reason = exc.rcvd.reason if exc.rcvd else ""
    if code == CLOSE_UNAUTHORIZED:
        return AuthError(f"the server refused the token: {reason}")
    if code == CLOSE_MESSAGE_TOO_BIG:
        return MessageTooLarge(f"the server refused a message as too large: {reason}")
    return _Dropped(f"connection closed ({code or 'abnormally'}{': ' + reason if reason else ''})")

"""The server's subcommands: `serve`, `token`, and the client side, `submit`, `watch`, `cancel`.

`committee.cli` finds this module and calls `register`. Like the rest of the CLI, these only
build settings or a request and hand them to the server or the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from committee import git
from committee.cli import (
    DB_NAME,
    _add_data_dir,
    _add_request_options,
    _console,
    data_dir_of,
    error_console,
    follow,
    make_executor,
    open_store,
    positive_int,
    request_from_args,
    show_command_in_usage,
)
from committee.client import cancel_run, stream_run
from committee.config import read_config
from committee.errors import AuthError, BadInput, NotFound
from committee.messages import AnyRunEvent, Submit, Subscribe
from committee.server import ServerSettings, create_app, uvicorn_config

log = logging.getLogger("committee.server")

TOKEN_ENV = "COMMITTEE_TOKEN"
MAX_USER_ID = 128
# Attributes every LogRecord has; the rest were passed with `extra=` and are the event's fields.
_RECORD_FIELDS = {
    *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message
}


def register(subparsers: Any) -> None:
    _add_serve(subparsers)
    _add_token(subparsers)
    _add_submit(subparsers)
    _add_watch(subparsers)
    _add_cancel(subparsers)


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="ws://HOST:PORT[/ws] (default: ws_url of --config)")
    parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")


# ---------------------------------------------------------------- serve


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="serve the WebSocket protocol, the REST API and the dashboard"
    )
    _add_data_dir(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--executor", default="local", choices=["local", "kubernetes"])
    serve.add_argument(
        "--no-auth", action="store_true", help="no tokens; trust user_id in messages"
    )
    serve.add_argument(
        "--max-concurrent", type=positive_int, default=None, help="commits at once (default: CPUs)"
    )
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    serve.add_argument(
        "--allow-local-repos",
        action="store_true",
        help="let clients test repositories by a path on this machine (always on with --no-auth)",
    )
    serve.add_argument(
        "--allow-network",
        action="store_true",
        help="let clients ask for network access for their commands (always on with --no-auth)",
    )
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    configure_logging(json_lines=args.log_json)
    data_dir = data_dir_of(args)
    executor = make_executor(args.executor, data_dir)
    if warning := executor.describe().get("warning"):
        log.warning(warning)
    if args.no_auth:
        log.warning("authentication is off (--no-auth): whoever reaches the port acts as any user")
    settings = ServerSettings(
        data_dir,
        data_dir / DB_NAME,
        auth=not args.no_auth,
        max_concurrent=args.max_concurrent,
        allow_local_repos=args.allow_local_repos or args.no_auth,
        allow_network=args.allow_network or args.no_auth,
    )
    server = uvicorn.Server(uvicorn_config(create_app(settings, executor), args.host, args.port))
    tune_gc()
    log.info(
        "server starting",
        extra={"url": f"http://{args.host}:{args.port}", "data_dir": str(data_dir)},
    )
    server.run()
    return 0 if server.started else 1


def tune_gc() -> None:
    """Keep full garbage collections out of the event stream. With a thousand connections a
    gen-2 pass took 80-120 ms and stalled every stream (bench/README.md): what is loaded by now
    is never scanned again, and the older generations are collected less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def configure_logging(*, json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # Our own connection lines replace uvicorn's and the websockets library's.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = "".join(f" {k}={v}" for k, v in _fields(record).items())
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.getMessage()}{fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# ---------------------------------------------------------------- token


def _add_token(sub: Any) -> None:
    token = sub.add_parser("token", help="create, revoke and list the server's bearer tokens")
    actions = token.add_subparsers(dest="token_action", required=True)
    create = actions.add_parser("create", help="make a token for USER (printed once)")
    create.add_argument("user", metavar="USER")
    create.add_argument("--label", default="", help="what the token is for")
    revoke = actions.add_parser("revoke", help="revoke a token, by itself or by its id")
    revoke.add_argument("token_or_id", metavar="ID_OR_TOKEN")
    listing = actions.add_parser("list", help="every token's id, user and label")
    listing.add_argument("--json", action="store_true")
    for parser in (create, revoke, listing):
        _add_data_dir(parser)
    create.set_defaults(func=lambda a: asyncio.run(cmd_token_create(a)))
    revoke.set_defaults(func=lambda a: asyncio.run(cmd_token_revoke(a)))
    listing.set_defaults(func=lambda a: asyncio.run(cmd_token_list(a)))


async def cmd_token_create(args: argparse.Namespace) -> int:
    if not 1 <= len(args.user) <= MAX_USER_ID or args.user != args.user.strip():
        raise BadInput(f"user id must be 1 to {MAX_USER_ID} characters, without outer spaces")
    async with open_store(args) as store:
        token = await store.create_token(args.user, args.label)
    error_console().print(f"token for {args.user} (shown once; keep it secret):", markup=False)
    print(token)
    return 0


async def cmd_token_revoke(args: argparse.Namespace) -> int:
    async with open_store(args) as store:
        revoked = await store.revoke_token(args.token_or_id)
    if not revoked:
        raise NotFound(f"no active token matches {args.token_or_id!r}")
    print(f"revoked {revoked} token(s)")
    return 0


async def cmd_token_list(args: argparse.Namespace) -> int:
    async with open_store(args) as store:
        tokens = await store.list_tokens()
    if args.json:
        print(json.dumps(tokens, indent=2))
        return 0
    for token in tokens:
        state = "revoked" if token["revoked_at"] else "active"
        print(f"{token['token_id']}  {state:<7}  {token['user_id']}  {token['label']}")
    if not tokens:
        print("no tokens yet: committee token create USER")
    return 0


# ---------------------------------------------------------------- submit, watch and cancel


def _add_submit(sub: Any) -> None:
    submit = sub.add_parser("submit", help="test commits on a committee server, live")
    _add_request_options(submit)
    _add_server_options(submit)
    submit.set_defaults(func=lambda a: asyncio.run(cmd_submit(a)))
    show_command_in_usage(submit)


def _add_watch(sub: Any) -> None:
    watch = sub.add_parser("watch", help="follow a run on a committee server")
    watch.add_argument("run_id", metavar="RUN")
    watch.add_argument("--config", type=Path, help="config.json whose ws_url names the server")
    watch.add_argument("--json", action="store_true", help="print one JSON object at the end")
    _add_server_options(watch)
    watch.set_defaults(func=lambda a: asyncio.run(cmd_watch(a)))


def _add_cancel(sub: Any) -> None:
    cancel = sub.add_parser(
        "cancel", help="stop a run on a committee server (exit 1 if it had already finished)"
    )
    cancel.add_argument("run_id", metavar="RUN")
    cancel.add_argument("--config", type=Path, help="config.json whose ws_url names the server")
    _add_server_options(cancel)
    cancel.set_defaults(func=lambda a: asyncio.run(cmd_cancel(a)))


async def cmd_submit(args: argparse.Namespace) -> int:
    request = request_from_args(args, args.command)
    url = server_url(args)
    # A local path means the path here: the server may run in another directory.
    repo_url = git.normalize_repo_url(request.repo_url, Path.cwd())
    message = Submit(**{**request.model_dump(), "repo_url": repo_url})
    args.interrupt_note = "if the server had accepted the run, it goes on there"
    events = _noting_run(args, stream_run(url, _token(args), message))
    with _token_hint(args):
        return await follow(events, _console(args), as_json=args.json)


async def cmd_watch(args: argparse.Namespace) -> int:
    events = stream_run(server_url(args), _token(args), Subscribe(run_id=args.run_id))
    args.interrupt_note = _goes_on(args.run_id)
    with _token_hint(args):
        return await follow(events, _console(args), as_json=args.json)


async def cmd_cancel(args: argparse.Namespace) -> int:
    with _token_hint(args):
        cancelled = await cancel_run(server_url(args), _token(args), args.run_id)
    if cancelled:
        print(f"run {args.run_id} cancelled")
        return 0
    print(f"run {args.run_id} had already finished")
    return 1


async def _noting_run(
    args: argparse.Namespace, events: AsyncIterator[AnyRunEvent]
) -> AsyncIterator[AnyRunEvent]:
    """The events, with what a Ctrl-C would leave behind kept up to date."""
    async for event in events:
        args.interrupt_note = _goes_on(event.run_id)
        yield event


def _goes_on(run_id: str) -> str:
    # Leaving a client does not stop a server's run: others may be watching it.
    return (
        f"the run goes on on the server: `committee watch {run_id}` to follow it, "
        f"`committee cancel {run_id}` to stop it"
    )


def server_url(args: argparse.Namespace) -> str:
    """The server's WebSocket URL; one without a path gets the server's own, /ws."""
    url: str | None = args.server
    if url is None and args.config:
        url = read_config(args.config).get("ws_url")
    if not url:
        raise BadInput("no server: give --server ws://HOST:PORT/ws, or ws_url in --config")
    if not url.startswith(("ws://", "wss://")):
        raise BadInput(f"--server {url!r}: expected a ws:// or wss:// URL")
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/ws"))
    return url


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(TOKEN_ENV) or None


@contextlib.contextmanager
def _token_hint(args: argparse.Namespace) -> Iterator[None]:
    """Refusals told in the CLI's words: which flag to give or check, not which header."""
    try:
        yield
    except AuthError:
        if _token(args) is None:
            raise AuthError(
                f"the server needs a token: give --token TOKEN or set ${TOKEN_ENV} "
                "(`committee token create USER` on the server's machine makes one)"
            ) from None
        given = "--token" if args.token else f"${TOKEN_ENV}"
        raise AuthError(
            f"the server refused the token of {given}: it is unknown or revoked"
        ) from None

"""Protocol v1: every message on the wire, declared once.

Client → server messages and server → client events are pydantic models told apart by their
`type` literal. `committee schema` prints the JSON Schema generated from them (docs/protocol.md).
Run events carry `run_id`, `seq` (per run, from 1, strictly +1) and `ts`; the engine emits them,
the store keeps them, and the server, the CLI and the dashboard all read the same stream.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from committee.models import (
    CommitRef,
    CommitResult,
    RunRequest,
    RunStatus,
)

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20  # 1 MiB: no legitimate client message is near it


# ---------------------------------------------------------------- client → server


class Submit(RunRequest):
    type: Literal["submit"] = "submit"
    ws_url: str | None = Field(
        None,
        max_length=4096,
        description="Ignored: the original design's config.json names its server here, and "
        "clients send the whole file",
    )


class Subscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["subscribe"] = "subscribe"
    run_id: str = Field(min_length=1, max_length=64)
    after_seq: int = Field(0, ge=0)


class Cancel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["cancel"] = "cancel"
    run_id: str = Field(min_length=1, max_length=64)


class Ping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ping"] = "ping"


ClientMessage = Annotated[Submit | Subscribe | Cancel | Ping, Field(discriminator="type")]
client_message_adapter: TypeAdapter[Submit | Subscribe | Cancel | Ping] = TypeAdapter(ClientMessage)


# ---------------------------------------------------------------- server → client


class _RunEvent(BaseModel):
    run_id: str
    seq: int = Field(0, description="Per-run sequence number, from 1, no gaps")
    ts: float = Field(default_factory=time.time)


class RunAccepted(_RunEvent):
    type: Literal["run.accepted"] = "run.accepted"
    repo_url: str
    test_command: str
    project_type: str
    user_id: str
    chat_id: str
    commits: list[CommitRef]
    protocol: int = PROTOCOL_VERSION


class CommitQueued(_RunEvent):
    type: Literal["commit.queued"] = "commit.queued"
    commit: str
    ref: str
    index: int


class CommitStarted(_RunEvent):
    type: Literal["commit.started"] = "commit.started"
    commit: str
    ref: str
    index: int
    attempt: int = 1


class CommitLog(_RunEvent):
    type: Literal["commit.log"] = "commit.log"
    commit: str
    stream: Literal["stdout", "stderr", "system"]
    lines: list[str]


class CommitFinished(_RunEvent, CommitResult):
    type: Literal["commit.finished"] = "commit.finished"
    index: int


class RunFinished(_RunEvent):
    type: Literal["run.finished"] = "run.finished"
    status: RunStatus
    first_bad_commit: str | None = None
    newly_failing: list[str] = Field(
        default_factory=list, description="Tests failing at the first bad commit, passing before"
    )
    results: list[CommitResult]


RunEvent = Annotated[
    RunAccepted | CommitQueued | CommitStarted | CommitLog | CommitFinished | RunFinished,
    Field(discriminator="type"),
]
AnyRunEvent = RunAccepted | CommitQueued | CommitStarted | CommitLog | CommitFinished | RunFinished
run_event_adapter: TypeAdapter[AnyRunEvent] = TypeAdapter(RunEvent)


class ErrorEvent(BaseModel):
    """Answers a bad request. Not a run event: it has no seq."""

    type: Literal["error"] = "error"
    code: str
    message: str
    run_id: str | None = None


class Pong(BaseModel):
    type: Literal["pong"] = "pong"
    ts: float = Field(default_factory=time.time)


class Subscribed(BaseModel):
    """Acknowledges a submit or subscribe: events of run_id from after_seq + 1 follow."""

    type: Literal["subscribed"] = "subscribed"
    run_id: str
    after_seq: int


ServerMessage = Annotated[
    RunAccepted
    | CommitQueued
    | CommitStarted
    | CommitLog
    | CommitFinished
    | RunFinished
    | ErrorEvent
    | Pong
    | Subscribed,
    Field(discriminator="type"),
]
server_message_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)

# WebSocket close codes (4000-4999 are the application's).
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4408  # the client fell behind: reconnect and subscribe with after_seq
CLOSE_MESSAGE_TOO_BIG = 1009


def json_schema() -> dict[str, Any]:
    """The protocol's JSON Schema, generated from the models above."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"committee protocol v{PROTOCOL_VERSION}",
        "protocol": PROTOCOL_VERSION,
        "client_to_server": client_message_adapter.json_schema(),
        "server_to_client": server_message_adapter.json_schema(),
    }

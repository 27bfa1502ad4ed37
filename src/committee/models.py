"""Domain models shared by the engine, the store, the executors and the protocol.

Pure data: no I/O here.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError


class CommitStatus(StrEnum):
    """State of one commit in a run. The first two are transient; the rest are final."""

    queued = "queued"
    running = "running"
    passed = "passed"
    failed = "failed"
    error = "error"
    timeout = "timeout"
    cancelled = "cancelled"
    skipped = "skipped"

    @property
    def final(self) -> bool:
        return self not in (CommitStatus.queued, CommitStatus.running)

    @property
    def cacheable(self) -> bool:
        """Errors, timeouts and cancellations say nothing about the tree, so never cache them."""
        return self in (CommitStatus.passed, CommitStatus.failed, CommitStatus.skipped)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    passed = "passed"
    failed = "failed"
    error = "error"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (RunStatus.queued, RunStatus.running)


class TestCounts(BaseModel):
    __test__ = False  # not a pytest test class, whatever its name says

    model_config = ConfigDict(frozen=True)

    total: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0


class Failure(BaseModel):
    """One failed (or errored) test case."""

    model_config = ConfigDict(frozen=True)

    name: str
    message: str = ""
    traceback: str = ""


class CommitRef(BaseModel):
    """A commit as resolved before anything runs."""

    model_config = ConfigDict(frozen=True)

    sha: str
    ref: str = Field(description="The name the user gave (e.g. HEAD~1, main, a short SHA)")
    subject: str = ""
    tree: str = ""


class CommitResult(BaseModel):
    """The outcome of testing one commit; the fields of `commit.finished`."""

    commit: str
    ref: str
    subject: str = ""
    status: CommitStatus
    exit_code: int | None = None
    duration_s: float = 0.0
    cached: bool = False
    tests: TestCounts = Field(default_factory=TestCounts)
    failures: list[Failure] = Field(default_factory=list)
    reason: str = Field("", description="Why a commit errored or timed out, in words")


_SAFE_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ID = Field(min_length=1, max_length=128)
_ID_INPUT = Annotated[str, _ID] | int  # what a client may send as user_id and chat_id


class RunRequest(BaseModel):
    """What a client asks for: the fields of the original design's config.json, and a few more."""

    model_config = ConfigDict(extra="forbid")

    repo_url: str = Field(min_length=1, max_length=4096)
    commits: list[str] = Field(default_factory=lambda: ["HEAD"], max_length=10_000)
    test_command: str = Field(min_length=1, max_length=65_536)
    project_type: str = Field("python", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    user_id: Annotated[str, _ID] = "local"
    chat_id: Annotated[str, _ID] = "local"
    timeout_s: float | None = Field(None, gt=0, le=86_400)
    env: dict[str, str] = Field(default_factory=dict)
    network: bool = False
    no_cache: bool = False

    @field_validator("commits", mode="before")
    @classmethod
    def _split_commit_string(cls, value: object) -> object:
        # config.json files in the wild give "HEAD~1 HEAD" as one string.
        if isinstance(value, str):
            return value.split()
        return value

    @field_validator("user_id", "chat_id", mode="before", json_schema_input_type=_ID_INPUT)
    @classmethod
    def _whole_number_as_string(cls, value: object) -> object:
        # The original design's config.json gives numbers ("user_id": 42). Only whole numbers:
        # 4.2, true and null are mistakes, not ids.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise PydanticCustomError(
                "id_type",
                "must be a string or a whole number, not {kind}",
                {"kind": _json_type(value)},
            )
        return value

    @field_validator("env")
    @classmethod
    def _check_env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _SAFE_ENV_NAME.match(name):
                raise ValueError(f"environment variable name {name!r} is not valid")
        return value


def _json_type(value: object) -> str:
    names = {bool: "a boolean", float: "a fractional number", list: "an array", dict: "an object"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


class RunSummary(BaseModel):
    """A run as listed and as printed by `--json`."""

    run_id: str
    status: RunStatus
    repo_url: str
    test_command: str
    project_type: str
    user_id: str
    chat_id: str
    created_at: float
    finished_at: float | None = None
    first_bad_commit: str | None = None
    newly_failing: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    results: list[CommitResult] = Field(default_factory=list)

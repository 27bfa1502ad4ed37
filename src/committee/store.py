"""The store: everything a run produced, in SQLite (WAL) under the data dir.

Tables: runs, commits (one row per commit of a run, with its result), test_cases, events (the
per-run sequence of protocol events; `commit.log` events are the log chunks, kept once),
result_cache, tokens. The sqlite3 connection lives on one dedicated thread; every public method
is async and runs there, so the event loop never blocks and writes are serialised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from committee.messages import AnyRunEvent
from committee.models import CommitRef, CommitResult, CommitStatus, RunRequest, RunStatus, RunSummary


@dataclass(frozen=True)
class CommitRow:
    index: int
    ref: CommitRef
    status: CommitStatus
    result: CommitResult | None
    attempts: int


@dataclass(frozen=True)
class RunRow:
    run_id: str
    request: RunRequest
    status: RunStatus
    created_at: float
    finished_at: float | None
    last_seq: int
    executor: str
    commits: list[CommitRow]


class Store:
    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating and migrating) the database file at `path`."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    # ---- runs
    async def create_run(
        self, run_id: str, request: RunRequest, commits: Sequence[CommitRef], executor: str
    ) -> None:
        raise NotImplementedError

    async def get_run(self, run_id: str) -> RunRow:
        """Raises NotFound."""
        raise NotImplementedError

    async def list_runs(self, user_id: str | None = None, limit: int = 50) -> list[RunSummary]:
        """Newest first; only `user_id`'s runs when given. `results` filled in, `counts` maps
        each commit status to how many commits have it."""
        raise NotImplementedError

    async def run_summary(self, run_id: str) -> RunSummary:
        raise NotImplementedError

    async def unfinished_runs(self) -> list[RunRow]:
        """Runs whose status is not final (the server was stopped or killed mid-run)."""
        raise NotImplementedError

    async def set_run_status(
        self,
        run_id: str,
        status: RunStatus,
        first_bad_commit: str | None = None,
        newly_failing: Sequence[str] = (),
    ) -> None:
        """Sets finished_at when status is final."""
        raise NotImplementedError

    async def set_commit_status(self, run_id: str, index: int, status: CommitStatus) -> None:
        """Also counts an attempt when status is running."""
        raise NotImplementedError

    async def set_commit_result(self, run_id: str, index: int, result: CommitResult) -> None:
        """Stores the result and its failures as test_cases rows."""
        raise NotImplementedError

    # ---- events (and the logs inside them)
    async def append_events(self, events: Sequence[AnyRunEvent]) -> None:
        """Persist events whose seq the caller assigned (contiguous per run); updates runs.last_seq.
        One transaction for the whole batch."""
        raise NotImplementedError

    async def events_after(
        self, run_id: str, after_seq: int, limit: int = 1000
    ) -> list[AnyRunEvent]:
        raise NotImplementedError

    def commit_log(self, run_id: str, commit: str) -> AsyncIterator[str]:
        """Every stored log line of one commit of a run, in order (streams; logs can be huge)."""
        raise NotImplementedError

    # ---- result cache
    async def cache_get(self, key: str) -> CommitResult | None:
        raise NotImplementedError

    async def cache_put(self, key: str, result: CommitResult, run_id: str) -> None:
        raise NotImplementedError

    # ---- tokens (stored as SHA-256 hashes only)
    async def create_token(self, user_id: str, label: str = "") -> str:
        """Return a new random token (shown once); only its hash is stored."""
        raise NotImplementedError

    async def revoke_token(self, token_or_prefix: str) -> int:
        """Revoke by the token itself or by its id (the first 8 chars of its hash); return how
        many were revoked."""
        raise NotImplementedError

    async def user_for_token(self, token: str) -> str | None:
        raise NotImplementedError

    async def list_tokens(self) -> list[dict[str, object]]:
        raise NotImplementedError

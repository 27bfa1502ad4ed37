"""The store: everything a run produced, in SQLite (WAL) under the data dir.

Tables: runs, commits (one row per commit of a run, with its result), test_cases, events (the
per-run sequence of protocol events; `commit.log` events are the log chunks, kept once),
result_cache, tokens. The sqlite3 connection lives on one dedicated thread; every public method
is async and runs there, so the event loop never blocks and writes are serialised.

Every write commits before its method returns; with WAL that is enough to survive the process
being killed (synchronous=NORMAL only risks the last commits on power loss, not on a crash).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from committee.errors import CommitteeError, NotFound
from committee.messages import AnyRunEvent, CommitLog, run_event_adapter
from committee.models import (
    CommitRef,
    CommitResult,
    CommitStatus,
    RunRequest,
    RunStatus,
    RunSummary,
)

P = ParamSpec("P")
T = TypeVar("T")

LOG_PAGE_EVENTS = 500  # commit.log events per query: a huge log is streamed, never loaded whole
TOKEN_PREFIX = "cmt_"

# One entry per schema version; PRAGMA user_version says how many have been applied.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            repo_url TEXT NOT NULL,
            test_command TEXT NOT NULL,
            project_type TEXT NOT NULL,
            request_json TEXT NOT NULL,
            executor TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            finished_at REAL,
            first_bad_commit TEXT,
            newly_failing_json TEXT NOT NULL DEFAULT '[]',
            last_seq INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX runs_by_user ON runs (user_id, created_at)",
        "CREATE INDEX runs_by_created ON runs (created_at)",
        "CREATE INDEX runs_by_status ON runs (status)",
        """CREATE TABLE commits (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            sha TEXT NOT NULL,
            ref TEXT NOT NULL,
            subject TEXT NOT NULL,
            tree TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            result_json TEXT,
            PRIMARY KEY (run_id, idx))""",
        """CREATE TABLE test_cases (
            run_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            message TEXT NOT NULL,
            traceback TEXT NOT NULL,
            FOREIGN KEY (run_id, idx) REFERENCES commits (run_id, idx) ON DELETE CASCADE)""",
        "CREATE INDEX test_cases_by_commit ON test_cases (run_id, idx)",
        """CREATE TABLE events (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            commit_sha TEXT,
            ts REAL NOT NULL,
            payload_json TEXT NOT NULL,
            PRIMARY KEY (run_id, seq))""",
        # seq last so that paging a commit's log by seq walks the index, never sorts.
        "CREATE INDEX events_by_commit ON events (run_id, commit_sha, type, seq)",
        """CREATE TABLE result_cache (
            key TEXT PRIMARY KEY,
            result_json TEXT NOT NULL,
            run_id TEXT NOT NULL,
            created_at REAL NOT NULL)""",
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            token_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            label TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL)""",
        "CREATE INDEX tokens_by_id ON tokens (token_id)",
    ),
    # 2: who drives a run: "" for a server (the next server re-queues it), or a CLI process
    # (committee.engine.process_owner), whose runs nobody else may take over while it lives.
    ("ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",),
)
SCHEMA_VERSION = len(_MIGRATIONS)


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
    owner: str = ""


class Store:
    def __init__(self, db: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._db = db
        self._thread = thread

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating and migrating) the database file at `path`."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="committee-store")
        try:
            db = await asyncio.get_running_loop().run_in_executor(thread, _connect, path)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(db, thread)

    async def aclose(self) -> None:
        await self._call(sqlite3.Connection.close)
        self._thread.shutdown(wait=True)

    async def _call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        job = functools.partial(fn, self._db, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._thread, job)

    # ---- runs
    async def create_run(
        self,
        run_id: str,
        request: RunRequest,
        commits: Sequence[CommitRef],
        executor: str,
        owner: str = "",
    ) -> None:
        await self._call(_create_run, run_id, request, commits, executor, owner)

    async def get_run(self, run_id: str) -> RunRow:
        """Raises NotFound."""
        return await self._call(_get_run, run_id)

    async def list_runs(self, user_id: str | None = None, limit: int = 50) -> list[RunSummary]:
        """Newest first; only `user_id`'s runs when given. `results` filled in, `counts` maps
        each commit status to how many commits have it."""
        return await self._call(_list_runs, user_id, limit)

    async def run_summary(self, run_id: str) -> RunSummary:
        """Raises NotFound."""
        return await self._call(_run_summary, run_id)

    async def unfinished_runs(self) -> list[RunRow]:
        """Runs whose status is not final (the server was stopped or killed mid-run)."""
        return await self._call(_unfinished_runs)

    async def set_run_status(
        self,
        run_id: str,
        status: RunStatus,
        first_bad_commit: str | None = None,
        newly_failing: Sequence[str] = (),
    ) -> None:
        """Sets finished_at when status is final. Raises NotFound."""
        await self._call(_set_run_status, run_id, status, first_bad_commit, newly_failing)

    async def set_commit_status(self, run_id: str, index: int, status: CommitStatus) -> None:
        """Also counts an attempt when status is running. Raises NotFound."""
        await self._call(_set_commit_status, run_id, index, status)

    async def set_commit_result(self, run_id: str, index: int, result: CommitResult) -> None:
        """Stores the result and its failures as test_cases rows. Raises NotFound."""
        await self._call(_set_commit_result, run_id, index, result)

    # ---- events (and the logs inside them)
    async def append_events(self, events: Sequence[AnyRunEvent]) -> None:
        """Persist events whose seq the caller assigned (contiguous per run); updates runs.last_seq.
        One transaction for the whole batch."""
        if events:
            await self._call(_append_events, events)

    async def events_after(
        self, run_id: str, after_seq: int, limit: int = 1000
    ) -> list[AnyRunEvent]:
        return await self._call(_events_after, run_id, after_seq, limit)

    async def commit_log(self, run_id: str, commit: str) -> AsyncIterator[str]:
        """Every stored log line of one commit of a run, in order (streams; logs can be huge)."""
        after_seq = 0
        while True:
            page = await self._call(_log_page, run_id, commit, after_seq, LOG_PAGE_EVENTS)
            for event in page:
                for line in event.lines:
                    yield line
            if len(page) < LOG_PAGE_EVENTS:
                return
            after_seq = page[-1].seq

    # ---- result cache
    async def cache_get(self, key: str) -> CommitResult | None:
        return await self._call(_cache_get, key)

    async def cache_put(self, key: str, result: CommitResult, run_id: str) -> None:
        await self._call(_cache_put, key, result, run_id)

    # ---- tokens (stored as SHA-256 hashes only)
    async def create_token(self, user_id: str, label: str = "") -> str:
        """Return a new random token (shown once); only its hash is stored."""
        return await self._call(_create_token, user_id, label)

    async def revoke_token(self, token_or_prefix: str) -> int:
        """Revoke by the token itself or by its id (the first 8 chars of its hash); return how
        many were revoked."""
        return await self._call(_revoke_token, token_or_prefix)

    async def user_for_token(self, token: str) -> str | None:
        return await self._call(_user_for_token, token)

    async def list_tokens(self) -> list[dict[str, object]]:
        """Every token's id, user, label, created_at and revoked_at (never the hash)."""
        return await self._call(_list_tokens)


# ---------------------------------------------------------------- on the store's thread


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; writes that need one open it explicitly.
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    try:
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    with _transaction(db):
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CommitteeError(
                f"the database has schema version {version}; this committee knows "
                f"{SCHEMA_VERSION}: upgrade committee"
            )
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so another process cannot make us retry midway.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _create_run(
    db: sqlite3.Connection,
    run_id: str,
    request: RunRequest,
    commits: Sequence[CommitRef],
    executor: str,
    owner: str,
) -> None:
    with _transaction(db):
        db.execute(
            "INSERT INTO runs (run_id, user_id, chat_id, repo_url, test_command, project_type,"
            " request_json, executor, status, created_at, owner)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                request.user_id,
                request.chat_id,
                request.repo_url,
                request.test_command,
                request.project_type,
                request.model_dump_json(),
                executor,
                RunStatus.queued.value,
                time.time(),
                owner,
            ),
        )
        db.executemany(
            "INSERT INTO commits (run_id, idx, sha, ref, subject, tree, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (run_id, i, c.sha, c.ref, c.subject, c.tree, CommitStatus.queued.value)
                for i, c in enumerate(commits)
            ],
        )


def _run_record(db: sqlite3.Connection, run_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no run {run_id}")
    return row


def _commit_rows(db: sqlite3.Connection, run_id: str) -> list[CommitRow]:
    rows = db.execute("SELECT * FROM commits WHERE run_id = ? ORDER BY idx", (run_id,))
    return [
        CommitRow(
            index=row["idx"],
            ref=CommitRef(sha=row["sha"], ref=row["ref"], subject=row["subject"], tree=row["tree"]),
            status=CommitStatus(row["status"]),
            result=CommitResult.model_validate_json(row["result_json"])
            if row["result_json"]
            else None,
            attempts=row["attempts"],
        )
        for row in rows
    ]


def _run_row(db: sqlite3.Connection, record: sqlite3.Row) -> RunRow:
    return RunRow(
        run_id=record["run_id"],
        request=RunRequest.model_validate_json(record["request_json"]),
        status=RunStatus(record["status"]),
        created_at=record["created_at"],
        finished_at=record["finished_at"],
        last_seq=record["last_seq"],
        executor=record["executor"],
        commits=_commit_rows(db, record["run_id"]),
        owner=record["owner"],
    )


def _get_run(db: sqlite3.Connection, run_id: str) -> RunRow:
    return _run_row(db, _run_record(db, run_id))


def _unfinished_runs(db: sqlite3.Connection) -> list[RunRow]:
    records = db.execute(
        "SELECT * FROM runs WHERE status IN (?, ?) ORDER BY created_at, rowid",
        (RunStatus.queued.value, RunStatus.running.value),
    ).fetchall()
    return [_run_row(db, record) for record in records]


def _result_of(row: CommitRow) -> CommitResult:
    """The stored result, or for a commit not finished yet a stand-in with its current status."""
    if row.result is not None:
        return row.result
    ref = row.ref
    return CommitResult(
        commit=ref.sha, ref=ref.ref, subject=ref.subject, status=row.status, reason=""
    )


def _summary(db: sqlite3.Connection, record: sqlite3.Row) -> RunSummary:
    results = [_result_of(row) for row in _commit_rows(db, record["run_id"])]
    return RunSummary(
        run_id=record["run_id"],
        status=RunStatus(record["status"]),
        repo_url=record["repo_url"],
        test_command=record["test_command"],
        project_type=record["project_type"],
        user_id=record["user_id"],
        chat_id=record["chat_id"],
        created_at=record["created_at"],
        finished_at=record["finished_at"],
        first_bad_commit=record["first_bad_commit"],
        newly_failing=json.loads(record["newly_failing_json"]),
        counts=dict(Counter(r.status.value for r in results)),
        results=results,
    )


def _run_summary(db: sqlite3.Connection, run_id: str) -> RunSummary:
    return _summary(db, _run_record(db, run_id))


def _list_runs(db: sqlite3.Connection, user_id: str | None, limit: int) -> list[RunSummary]:
    # rowid breaks ties between runs created within the clock's resolution.
    records = db.execute(
        "SELECT * FROM runs WHERE ?1 IS NULL OR user_id = ?1"
        " ORDER BY created_at DESC, rowid DESC LIMIT ?2",
        (user_id, limit),
    ).fetchall()
    return [_summary(db, record) for record in records]


def _set_run_status(
    db: sqlite3.Connection,
    run_id: str,
    status: RunStatus,
    first_bad_commit: str | None,
    newly_failing: Sequence[str],
) -> None:
    cursor = db.execute(
        "UPDATE runs SET status = ?, finished_at = ?, first_bad_commit = ?,"
        " newly_failing_json = ? WHERE run_id = ?",
        (
            status.value,
            time.time() if status.final else None,
            first_bad_commit,
            json.dumps(list(newly_failing)),
            run_id,
        ),
    )
    if cursor.rowcount == 0:
        raise NotFound(f"no run {run_id}")


def _set_commit_status(
    db: sqlite3.Connection, run_id: str, index: int, status: CommitStatus
) -> None:
    cursor = db.execute(
        "UPDATE commits SET status = ?, attempts = attempts + ? WHERE run_id = ? AND idx = ?",
        (status.value, int(status is CommitStatus.running), run_id, index),
    )
    if cursor.rowcount == 0:
        raise NotFound(f"no commit {index} in run {run_id}")


def _set_commit_result(
    db: sqlite3.Connection, run_id: str, index: int, result: CommitResult
) -> None:
    with _transaction(db):
        cursor = db.execute(
            "UPDATE commits SET status = ?, result_json = ? WHERE run_id = ? AND idx = ?",
            (result.status.value, result.model_dump_json(), run_id, index),
        )
        if cursor.rowcount == 0:
            raise NotFound(f"no commit {index} in run {run_id}")
        # A retried commit replaces its earlier failures rather than adding to them.
        db.execute("DELETE FROM test_cases WHERE run_id = ? AND idx = ?", (run_id, index))
        db.executemany(
            "INSERT INTO test_cases (run_id, idx, name, status, message, traceback)"
            " VALUES (?, ?, ?, 'failed', ?, ?)",
            [(run_id, index, f.name, f.message, f.traceback) for f in result.failures],
        )


def _append_events(db: sqlite3.Connection, events: Sequence[AnyRunEvent]) -> None:
    last_seq: dict[str, int] = {}
    with _transaction(db):
        db.executemany(
            "INSERT INTO events (run_id, seq, type, commit_sha, ts, payload_json)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (e.run_id, e.seq, e.type, getattr(e, "commit", None), e.ts, e.model_dump_json())
                for e in events
            ],
        )
        for event in events:
            last_seq[event.run_id] = max(event.seq, last_seq.get(event.run_id, 0))
        db.executemany(
            "UPDATE runs SET last_seq = MAX(last_seq, ?) WHERE run_id = ?",
            [(seq, run_id) for run_id, seq in last_seq.items()],
        )


def _events_after(
    db: sqlite3.Connection, run_id: str, after_seq: int, limit: int
) -> list[AnyRunEvent]:
    rows = db.execute(
        "SELECT payload_json FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (run_id, after_seq, limit),
    )
    return [run_event_adapter.validate_json(row[0]) for row in rows]


def _log_page(
    db: sqlite3.Connection, run_id: str, commit: str, after_seq: int, limit: int
) -> list[CommitLog]:
    rows = db.execute(
        "SELECT payload_json FROM events WHERE run_id = ? AND commit_sha = ?"
        " AND type = 'commit.log' AND seq > ? ORDER BY seq LIMIT ?",
        (run_id, commit, after_seq, limit),
    )
    return [CommitLog.model_validate_json(row[0]) for row in rows]


def _cache_get(db: sqlite3.Connection, key: str) -> CommitResult | None:
    row = db.execute("SELECT result_json FROM result_cache WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    return CommitResult.model_validate_json(row[0]).model_copy(update={"cached": True})


def _cache_put(db: sqlite3.Connection, key: str, result: CommitResult, run_id: str) -> None:
    db.execute(
        "INSERT OR REPLACE INTO result_cache (key, result_json, run_id, created_at)"
        " VALUES (?, ?, ?, ?)",
        (key, result.model_dump_json(), run_id, time.time()),
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _create_token(db: sqlite3.Connection, user_id: str, label: str) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = _token_hash(token)
    db.execute(
        "INSERT INTO tokens (token_hash, token_id, user_id, label, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (digest, digest[:8], user_id, label, time.time()),
    )
    return token


def _revoke_token(db: sqlite3.Connection, token_or_id: str) -> int:
    # A token never equals an id (47 chars against 8), so one query serves both forms.
    cursor = db.execute(
        "UPDATE tokens SET revoked_at = ?"
        " WHERE (token_hash = ? OR token_id = ?) AND revoked_at IS NULL",
        (time.time(), _token_hash(token_or_id), token_or_id),
    )
    return cursor.rowcount


def _user_for_token(db: sqlite3.Connection, token: str) -> str | None:
    row = db.execute(
        "SELECT user_id FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
        (_token_hash(token),),
    ).fetchone()
    return None if row is None else str(row[0])


def _list_tokens(db: sqlite3.Connection) -> list[dict[str, object]]:
    rows = db.execute(
        "SELECT token_id, user_id, label, created_at, revoked_at FROM tokens"
        " ORDER BY created_at, rowid"
    )
    return [dict(row) for row in rows]

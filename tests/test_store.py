from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from committee.errors import CommitteeError, NotFound
from committee.messages import (
    AnyRunEvent,
    CommitFinished,
    CommitLog,
    CommitQueued,
    RunAccepted,
    RunFinished,
)
from committee.models import (
    CommitRef,
    CommitResult,
    CommitStatus,
    Failure,
    RunRequest,
    RunStatus,
)
from committee.models import TestCounts as Counts  # a Test* name would be collected by pytest
from committee.store import LOG_PAGE_EVENTS, SCHEMA_VERSION, Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "committee.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(db_path)
    yield opened
    await opened.aclose()


def _request(user: str = "alice") -> RunRequest:
    return RunRequest(repo_url="/src/repo", test_command="pytest -q", user_id=user, chat_id="c1")


def _refs(count: int) -> list[CommitRef]:
    return [
        CommitRef(sha=f"{i:040x}", ref=f"HEAD~{count - 1 - i}", subject=f"commit {i}", tree="t")
        for i in range(count)
    ]


def _log(run_id: str, seq: int, commit: str, *lines: str) -> CommitLog:
    return CommitLog(run_id=run_id, seq=seq, commit=commit, stream="stdout", lines=list(lines))


def _raw(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(sql, params).fetchall()


async def test_create_and_get_run(store: Store) -> None:
    await store.create_run("r1", _request(), _refs(3), "local")

    run = await store.get_run("r1")

    assert run.request == _request()
    assert (run.status, run.executor, run.last_seq, run.finished_at) == (
        RunStatus.queued,
        "local",
        0,
        None,
    )
    assert [c.ref for c in run.commits] == _refs(3)
    assert [(c.index, c.status, c.attempts, c.result) for c in run.commits] == [
        (i, CommitStatus.queued, 0, None) for i in range(3)
    ]


async def test_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="no run nope"):
        await store.get_run("nope")
    with pytest.raises(NotFound):
        await store.run_summary("nope")
    with pytest.raises(NotFound):
        await store.set_run_status("nope", RunStatus.running)
    await store.create_run("r1", _request(), _refs(1), "local")
    with pytest.raises(NotFound):
        await store.set_commit_status("r1", 5, CommitStatus.running)


async def test_list_runs_newest_first_and_by_user(store: Store) -> None:
    for run_id, user in [("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("a3", "alice")]:
        await store.create_run(run_id, _request(user), _refs(2), "local")

    assert [s.run_id for s in await store.list_runs()] == ["a3", "a2", "b1", "a1"]
    assert [s.run_id for s in await store.list_runs("alice")] == ["a3", "a2", "a1"]
    assert [s.run_id for s in await store.list_runs("alice", limit=2)] == ["a3", "a2"]
    assert await store.list_runs("carol") == []
    newest = (await store.list_runs("bob"))[0]
    assert (newest.user_id, newest.chat_id, newest.counts) == ("bob", "c1", {"queued": 2})


async def test_status_transitions(store: Store) -> None:
    await store.create_run("r1", _request(), _refs(2), "local")

    await store.set_run_status("r1", RunStatus.running)
    await store.set_commit_status("r1", 0, CommitStatus.running)
    await store.set_commit_status("r1", 0, CommitStatus.queued)
    await store.set_commit_status("r1", 0, CommitStatus.running)
    running = await store.get_run("r1")
    assert (running.status, running.finished_at) == (RunStatus.running, None)
    assert [(c.status, c.attempts) for c in running.commits] == [
        (CommitStatus.running, 2),
        (CommitStatus.queued, 0),
    ]

    await store.set_run_status("r1", RunStatus.failed, _refs(2)[1].sha, ["test_a", "test_b"])
    summary = await store.run_summary("r1")
    assert summary.status is RunStatus.failed
    assert summary.finished_at is not None and summary.finished_at >= summary.created_at
    assert (summary.first_bad_commit, summary.newly_failing) == (
        _refs(2)[1].sha,
        ["test_a", "test_b"],
    )


async def test_commit_results_round_trip_through_summary(store: Store, db_path: Path) -> None:
    refs = _refs(4)
    await store.create_run("r1", _request(), refs, "local")
    passed = CommitResult(
        commit=refs[0].sha, ref=refs[0].ref, status=CommitStatus.passed, tests=Counts(total=2)
    )
    failures = [Failure(name="test_x", message="boom", traceback="tb"), Failure(name="test_y")]
    failed = CommitResult(
        commit=refs[1].sha,
        ref=refs[1].ref,
        subject="commit 1",
        status=CommitStatus.failed,
        exit_code=1,
        duration_s=1.5,
        tests=Counts(total=2, failed=2),
        failures=failures,
    )
    await store.set_commit_result("r1", 0, passed)
    await store.set_commit_result("r1", 1, failed.model_copy(update={"failures": [failures[1]]}))
    await store.set_commit_result("r1", 1, failed)  # a retry replaces, never adds
    await store.set_commit_status("r1", 2, CommitStatus.running)

    summary = await store.run_summary("r1")

    assert summary.results[:2] == [passed, failed]
    assert [(r.commit, r.ref, r.subject, r.status) for r in summary.results[2:]] == [
        (refs[2].sha, refs[2].ref, "commit 2", CommitStatus.running),
        (refs[3].sha, refs[3].ref, "commit 3", CommitStatus.queued),
    ]
    assert summary.counts == {"passed": 1, "failed": 1, "running": 1, "queued": 1}
    assert (await store.get_run("r1")).commits[1].result == failed
    assert _raw(db_path, "SELECT idx, name, status, message, traceback FROM test_cases") == [
        (1, "test_x", "failed", "boom", "tb"),
        (1, "test_y", "failed", "", ""),
    ]


async def test_events_replay_after_seq(store: Store) -> None:
    refs = _refs(2)
    await store.create_run("r1", _request(), refs, "local")
    accepted = RunAccepted(
        run_id="r1",
        seq=1,
        repo_url="/src/repo",
        test_command="pytest -q",
        project_type="python",
        user_id="alice",
        chat_id="c1",
        commits=refs,
    )
    queued = [
        CommitQueued(run_id="r1", seq=2 + i, commit=r.sha, ref=r.ref, index=i)
        for i, r in enumerate(refs)
    ]
    result = CommitResult(commit=refs[0].sha, ref=refs[0].ref, status=CommitStatus.passed)
    finished = CommitFinished(run_id="r1", seq=5, index=0, **result.model_dump())
    done = RunFinished(run_id="r1", seq=6, status=RunStatus.passed, results=[result])
    events: list[AnyRunEvent] = [
        accepted,
        *queued,
        _log("r1", 4, refs[0].sha, "hi"),
        finished,
        done,
    ]

    await store.append_events(events[:3])
    await store.append_events(events[3:])

    assert await store.events_after("r1", 0) == events
    assert [e.seq for e in await store.events_after("r1", 3)] == [4, 5, 6]
    assert [e.seq for e in await store.events_after("r1", 1, limit=2)] == [2, 3]
    assert await store.events_after("r1", 6) == []
    assert (await store.get_run("r1")).last_seq == 6


async def test_event_batch_is_one_transaction(store: Store) -> None:
    await store.create_run("r1", _request(), [], "local")
    await store.append_events([_log("r1", 1, "c", "a")])

    with pytest.raises(sqlite3.IntegrityError):  # seq 1 again: nothing of the batch is kept
        await store.append_events([_log("r1", 2, "c", "b"), _log("r1", 1, "c", "again")])
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are on: no events without a run
        await store.append_events([_log("ghost", 1, "c", "a")])

    assert [e.seq for e in await store.events_after("r1", 0)] == [1]
    assert (await store.get_run("r1")).last_seq == 1


async def test_commit_log_streams_pages_in_order(store: Store) -> None:
    await store.create_run("r1", _request(), [], "local")
    await store.create_run("r2", _request(), [], "local")
    events: list[CommitLog] = []
    for n in range(LOG_PAGE_EVENTS * 2 + 7):  # over two full pages and a partial one
        events.append(_log("r1", 2 * n + 1, "aaa", f"line {2 * n}", f"line {2 * n + 1}"))
        events.append(_log("r1", 2 * n + 2, "bbb", "other commit"))
    await store.append_events(events)
    await store.append_events([_log("r2", 1, "aaa", "other run")])

    lines = [line async for line in store.commit_log("r1", "aaa")]

    assert lines == [f"line {i}" for i in range(2 * (LOG_PAGE_EVENTS * 2 + 7))]
    assert [line async for line in store.commit_log("r1", "nothing")] == []


async def test_result_cache(store: Store) -> None:
    result = CommitResult(
        commit="c" * 40,
        ref="HEAD",
        status=CommitStatus.failed,
        failures=[Failure(name="t")],
        tests=Counts(total=1, failed=1),
    )
    assert await store.cache_get("k") is None

    await store.cache_put("k", result, "r1")
    hit = await store.cache_get("k")

    assert hit is not None and hit.cached
    assert hit == result.model_copy(update={"cached": True})


async def test_tokens(store: Store, db_path: Path) -> None:
    first = await store.create_token("alice", "laptop")
    second = await store.create_token("bob")
    assert first.startswith("cmt_") and len(first) > 40 and first != second
    assert await store.user_for_token(first) == "alice"
    assert await store.user_for_token(second) == "bob"
    assert await store.user_for_token("cmt_wrong") is None
    stored = _raw(db_path, "SELECT token_hash FROM tokens")
    assert all(first not in str(row) for row in stored)  # only hashes are kept

    listed = await store.list_tokens()
    assert [(t["user_id"], t["label"], t["revoked_at"]) for t in listed] == [
        ("alice", "laptop", None),
        ("bob", "", None),
    ]
    assert all(
        set(t) == {"token_id", "user_id", "label", "created_at", "revoked_at"} for t in listed
    )

    assert await store.revoke_token(first) == 1
    assert await store.revoke_token(first) == 0
    assert await store.user_for_token(first) is None
    second_id = str(listed[1]["token_id"])
    assert len(second_id) == 8
    assert await store.revoke_token(second_id) == 1
    assert await store.user_for_token(second) is None
    assert all(t["revoked_at"] is not None for t in await store.list_tokens())


async def test_unfinished_runs(store: Store) -> None:
    for run_id in ["done", "mid", "waiting"]:
        await store.create_run(run_id, _request(), _refs(1), "k8s")
    await store.set_run_status("done", RunStatus.passed)
    await store.set_run_status("mid", RunStatus.running)

    unfinished = await store.unfinished_runs()

    assert [(r.run_id, r.status, r.executor) for r in unfinished] == [
        ("mid", RunStatus.running, "k8s"),
        ("waiting", RunStatus.queued, "k8s"),
    ]


async def test_schema_is_versioned_and_reopens(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.create_run("r1", _request(), [], "local")
    await store.aclose()
    assert _raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _raw(db_path, "PRAGMA journal_mode") == [("wal",)]

    reopened = await Store.open(db_path)  # migrating again is a no-op that keeps the data
    assert (await reopened.get_run("r1")).run_id == "r1"
    await reopened.aclose()

    _raw(db_path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(CommitteeError, match="schema version"):
        await Store.open(db_path)


_KILLED_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from committee.messages import CommitLog
from committee.models import RunRequest
from committee.store import Store

async def main():
    store = await Store.open(Path(sys.argv[1]))
    await store.create_run("r1", RunRequest(repo_url="/r", test_command="t"), [], "local")
    for batch in range(20):
        await store.append_events([
            CommitLog(run_id="r1", seq=batch * 10 + i + 1, commit="c", stream="stdout",
                      lines=[f"line {batch * 10 + i}"])
            for i in range(10)
        ])
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_writes_survive_sigkill(db_path: Path) -> None:
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_WRITER, str(db_path), stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await writer.communicate()
    assert writer.returncode == -signal.SIGKILL and stdout == b"written\n"
    assert db_path.with_name(db_path.name + "-wal").stat().st_size > 0  # never closed cleanly

    store = await Store.open(db_path)
    try:
        events = await store.events_after("r1", 0)
        assert [e.seq for e in events] == list(range(1, 201))
        assert [line async for line in store.commit_log("r1", "c")] == [
            f"line {i}" for i in range(200)
        ]
        assert (await store.get_run("r1")).last_seq == 200
    finally:
        await store.aclose()


async def test_concurrent_appends_do_not_corrupt(store: Store, db_path: Path) -> None:
    run_ids = ["r0", "r1", "r2"]
    for run_id in run_ids:
        await store.create_run(run_id, _request(), [], "local")
    counters = {run_id: itertools.count(1) for run_id in run_ids}

    async def writer(task_no: int) -> None:
        run_id = run_ids[task_no % len(run_ids)]
        for batch in range(10):
            events = [
                _log(run_id, next(counters[run_id]), f"c{task_no}", f"{batch}.{i}")
                for i in range(5)
            ]
            await store.append_events(events)
            await store.events_after(run_id, 0, limit=10)  # reads interleave with writes

    async with asyncio.TaskGroup() as group:
        for task_no in range(30):
            group.create_task(writer(task_no))

    for run_id in run_ids:
        events = await store.events_after(run_id, 0, limit=10_000)
        assert [e.seq for e in events] == list(range(1, 501))
        assert (await store.get_run(run_id)).last_seq == 500
    lines = [line async for line in store.commit_log("r1", "c4")]
    assert lines == [f"{b}.{i}" for b in range(10) for i in range(5)]
    assert _raw(db_path, "PRAGMA integrity_check") == [("ok",)]

"""The engine with a scripted executor: scheduling, events, cache, cancel, resume, recovery.

Real git repositories and real SQLite files; only the executor is scripted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from committee import engine as engine_module
from committee.engine import Engine, SubscriberTooSlow, collect, process_owner
from committee.errors import BadInput, UnknownCommit, UnknownProjectType
from committee.executors import Job
from committee.executors.fake import FakeExecutor, FakeStep
from committee.messages import AnyRunEvent, CommitFinished, CommitLog, RunFinished
from committee.models import CommitStatus, RunRequest, RunStatus
from committee.store import Store
from repos import numbered_repo


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "committee.db")
    yield opened
    await opened.aclose()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "repo"
    return path, numbered_repo(path, 6)


def request(repo: Path | str, commits: list[str], **extra: object) -> RunRequest:
    return RunRequest.model_validate(
        {"repo_url": str(repo), "commits": commits, "test_command": "true", **extra}
    )


def failing_from(shas: list[str], first_bad: int) -> Callable[[Job], FakeStep]:
    def script(job: Job) -> FakeStep:
        bad = shas.index(job.commit) >= first_bad
        return FakeStep(lines=("running",), exit_code=1 if bad else 0)

    return script


async def all_events(engine: Engine, run_id: str, after: int = 0) -> list[AnyRunEvent]:
    return [event async for event in engine.subscribe(run_id, after)]


async def test_run_emits_contiguous_events_and_names_first_bad_commit(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, shas = repo
    executor = FakeExecutor(failing_from(shas, 3))
    async with Engine(store, executor, tmp_path / "data", max_concurrent=2) as engine:
        run_id = await engine.submit(request(path, ["HEAD~5..HEAD"]))
        events = await all_events(engine, run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "run.accepted"
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert [r.commit for r in finished.results] == shas[1:]
    assert finished.first_bad_commit == shas[3]
    assert finished.status is RunStatus.failed
    statuses = [r.status for r in finished.results]
    assert statuses == [CommitStatus.passed] * 2 + [CommitStatus.failed] * 3


async def test_unknown_commit_runs_nothing(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    executor = FakeExecutor()
    async with Engine(store, executor, tmp_path / "data") as engine:
        with pytest.raises(UnknownCommit, match="no-such-branch"):
            await engine.submit(request(path, ["HEAD", "no-such-branch"]))
        with pytest.raises(BadInput):
            await engine.submit(request(path, ["--output=/tmp/x"]))
    assert executor.started == []
    assert await store.list_runs() == []


async def test_fairness_single_commit_is_not_starved(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, shas = repo
    executor = FakeExecutor(lambda job: FakeStep(delay_s=0.1))
    async with Engine(store, executor, tmp_path / "data", max_concurrent=1) as engine:
        big = await engine.submit(request(path, shas, user_id="alice", no_cache=True))
        small = await engine.submit(request(path, ["HEAD"], user_id="bob", no_cache=True))
        started_before_bob_asked = len(executor.started)
        await collect(engine, big)
        await collect(engine, small)
    order = [job.user_id for job in executor.started]
    # Bob waits for the commit already running, never behind Alice's whole queue.
    assert order.index("bob") <= started_before_bob_asked, order
    assert len(order) == len(shas) + 1


async def test_cancel_kills_running_and_drops_queued(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, shas = repo
    executor = FakeExecutor(lambda job: FakeStep(delay_s=30))
    async with Engine(store, executor, tmp_path / "data", max_concurrent=2) as engine:
        run_id = await engine.submit(request(path, shas))
        for _ in range(100):
            if len(executor.started) == 2:
                break
            await asyncio.sleep(0.01)
        assert await engine.cancel(run_id)
        finished = await asyncio.wait_for(collect(engine, run_id), 5)
    assert finished.status is RunStatus.cancelled
    assert {r.status for r in finished.results} == {CommitStatus.cancelled}
    ran = [r for r in finished.results if r.commit in {job.commit for job in executor.started}]
    assert len(ran) == 2 and all(r.duration_s > 0 for r in ran)  # timed until the kill
    assert len(executor.cancelled) == 2
    assert len(executor.started) == 2


async def test_result_cache_hit_and_miss(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, shas = repo
    executor = FakeExecutor(failing_from(shas, 4))
    async with Engine(store, executor, tmp_path / "data") as engine:
        first = await collect(engine, await engine.submit(request(path, shas)))
        second = await collect(engine, await engine.submit(request(path, shas)))
        assert len(executor.started) == len(shas)
        assert all(r.cached for r in second.results)
        assert [r.status for r in second.results] == [r.status for r in first.results]
        assert second.first_bad_commit == first.first_bad_commit == shas[4]
        await collect(engine, await engine.submit(request(path, shas, no_cache=True)))
        assert len(executor.started) == 2 * len(shas)
        other = request(path, shas, test_command="make check")
        await collect(engine, await engine.submit(other))
        assert len(executor.started) == 3 * len(shas)


async def test_errors_are_never_cached(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    executor = FakeExecutor(lambda job: FakeStep(error="OOMKilled"))
    async with Engine(store, executor, tmp_path / "data") as engine:
        for _ in range(2):
            finished = await collect(engine, await engine.submit(request(path, ["HEAD"])))
            assert finished.results[0].status is CommitStatus.error
            assert finished.results[0].reason == "OOMKilled"
    assert len(executor.started) == 2


async def test_log_cap_truncates_visibly(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    lines = tuple(f"line {i:04d}" for i in range(200))
    executor = FakeExecutor(lambda job: FakeStep(lines=lines))
    async with Engine(store, executor, tmp_path / "data", log_cap_bytes=100) as engine:
        run_id = await engine.submit(request(path, ["HEAD"]))
        events = await all_events(engine, run_id)
    logged = [line for e in events if isinstance(e, CommitLog) for line in e.lines]
    assert logged[:10] == list(lines[:10])  # 10 bytes each: exactly 10 fit in 100
    assert "line 0010" not in logged
    assert "[committee] log truncated: 190 lines (1900 bytes)" in logged[-1]


async def test_resume_after_seq_has_no_gap_or_duplicate(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, shas = repo
    executor = FakeExecutor(lambda job: FakeStep(lines=("a", "b", "c"), delay_s=0.01))
    async with Engine(store, executor, tmp_path / "data", max_concurrent=1) as engine:
        run_id = await engine.submit(request(path, shas))
        partial: list[AnyRunEvent] = []
        async for event in engine.subscribe(run_id):
            partial.append(event)
            if len(partial) == 12:
                break
        rest = await all_events(engine, run_id, after=partial[-1].seq)
        replay = await all_events(engine, run_id)
    assert [e.seq for e in partial + rest] == [e.seq for e in replay]
    assert [e.seq for e in replay] == list(range(1, len(replay) + 1))


async def test_slow_subscriber_is_dropped_not_waited_for(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = repo
    monkeypatch.setattr(engine_module, "SUBSCRIBER_QUEUE_EVENTS", 5)
    executor = FakeExecutor(lambda job: FakeStep(lines=tuple(map(str, range(50))), delay_s=0.2))
    async with Engine(store, executor, tmp_path / "data", log_interval_s=0) as engine:
        run_id = await engine.submit(request(path, ["HEAD"]))
        stream = engine.subscribe(run_id)
        async for event in stream:  # follow live up to the start, then stop reading
            if event.type == "commit.started":
                break
        await asyncio.wait_for(engine.wait(run_id), 5)
        with pytest.raises(SubscriberTooSlow):
            async for _ in stream:
                pass
        # The run was not slowed, and a resumed subscriber gets everything.
        assert isinstance((await all_events(engine, run_id))[-1], RunFinished)


async def test_recover_finishes_runs_interrupted_by_a_stop(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, shas = repo
    slow = FakeExecutor(lambda job: FakeStep(lines=("started",), delay_s=30))
    engine = Engine(store, slow, tmp_path / "data", max_concurrent=2)
    async with engine:
        run_id = await engine.submit(request(path, shas[:4]))
        for _ in range(100):
            if len(slow.started) == 2:
                break
            await asyncio.sleep(0.01)
    assert not (await store.get_run(run_id)).status.final
    fast = FakeExecutor()
    async with Engine(store, fast, tmp_path / "data") as restarted:
        assert await restarted.recover() == [run_id]
        events = await all_events(restarted, run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert [r.status for r in finished.results] == [CommitStatus.passed] * 4
    assert len(fast.started) == 4
    # The two interrupted attempts were released before being run again as attempt 2.
    assert {job_id for job_id, _ in fast.released} >= {f"{run_id}-0-1", f"{run_id}-1-1"}
    assert {job.job_id for job in fast.started} >= {f"{run_id}-0-2", f"{run_id}-1-2"}
    finished_events = [e for e in events if isinstance(e, CommitFinished)]
    assert len(finished_events) == 4


async def test_local_repositories_inside_the_data_dir_or_when_disallowed_are_refused(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    executor = FakeExecutor()
    async with Engine(store, executor, path.parent) as engine:  # data dir holds the repo
        with pytest.raises(BadInput, match="data directory"):
            await engine.submit(request(path, ["HEAD"]))
    async with Engine(store, executor, tmp_path / "data", allow_local_repos=False) as engine:
        with pytest.raises(BadInput, match="by URL only"):
            await engine.submit(request(path, ["HEAD"]))
        with pytest.raises(BadInput, match="by URL only"):
            await engine.submit(request(f"file://{path}", ["HEAD"]))
    assert executor.started == []


async def test_chatty_output_is_batched_into_few_events_in_order(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    lines = tuple(f"line {i}" for i in range(300))
    executor = FakeExecutor(lambda job: FakeStep(lines=lines))
    async with Engine(store, executor, tmp_path / "data", log_interval_s=10) as engine:
        run_id = await engine.submit(request(path, ["HEAD"]))
        events = await all_events(engine, run_id)
    logs = [e for e in events if isinstance(e, CommitLog)]
    # The first line goes out at once; the other 299 wait for the interval or the end.
    assert [len(e.lines) for e in logs] == [1, 299]
    assert [line for e in logs for line in e.lines] == list(lines)


async def interrupted_run(store: Store, data_dir: Path, repo: Path, owner: str) -> str:
    """A run left unfinished by a process that stopped mid-run."""
    slow = FakeExecutor(lambda job: FakeStep(delay_s=30))
    async with Engine(store, slow, data_dir, owner=owner) as engine:
        run_id = await engine.submit(request(repo, ["HEAD~1", "HEAD"]))
        for _ in range(100):
            if slow.started:
                break
            await asyncio.sleep(0.01)
    assert (await store.get_run(run_id)).status is RunStatus.running
    return run_id


async def test_runs_of_a_dead_cli_process_are_closed_not_rerun(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    dead = f"cli:{socket.gethostname()}:999999999:1"
    run_id = await interrupted_run(store, tmp_path / "data", path, dead)
    fresh = FakeExecutor()
    async with Engine(store, fresh, tmp_path / "data") as server:
        assert await server.recover() == [run_id]
        finished = await asyncio.wait_for(collect(server, run_id), 5)
    assert fresh.started == []
    assert [job_id for job_id, _ in fresh.released] == [f"{run_id}-0-1", f"{run_id}-1-1"]
    assert finished.status is RunStatus.cancelled
    assert all("process running this commit ended" in r.reason for r in finished.results)


async def test_runs_of_a_live_cli_process_are_left_alone(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    run_id = await interrupted_run(store, tmp_path / "data", path, process_owner())
    async with Engine(store, FakeExecutor(), tmp_path / "data") as server:
        assert await server.recover() == []
    assert (await store.get_run(run_id)).status is RunStatus.running


async def test_a_cli_never_takes_over_a_servers_run(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    run_id = await interrupted_run(store, tmp_path / "data", path, owner="")
    cli = FakeExecutor()
    async with Engine(store, cli, tmp_path / "data", owner=process_owner()) as engine:
        assert await engine.recover() == []
    assert cli.started == []
    assert (await store.get_run(run_id)).status is RunStatus.running


async def test_a_project_type_the_executor_cannot_run_is_refused_before_anything_runs(
    tmp_path: Path, store: Store, repo: tuple[Path, list[str]]
) -> None:
    path, _ = repo
    executor = FakeExecutor(project_types=("python", "node"))
    async with Engine(store, executor, tmp_path / "data") as engine:
        with pytest.raises(UnknownProjectType):
            await engine.submit(request(path, ["HEAD"], project_type="cobol"))
        await collect(engine, await engine.submit(request(path, ["HEAD"], project_type="node")))
    assert len(executor.started) == 1
    assert len(await store.list_runs()) == 1

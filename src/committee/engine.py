"""The engine: one place that turns a RunRequest into events, shared by the CLI and the server.

It resolves commits before anything runs, records the run, schedules each commit on the
executor under a global limit with round-robin fairness between users, applies the result
cache and the log cap, and emits protocol events. Every event is persisted (with its per-run
`seq`) before it is published, so a subscriber can replay from the store and then follow live
with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from committee import git
from committee.errors import BadInput, CommitteeError, NotFound
from committee.executors import Executor, Job, Limits, Stream
from committee.messages import (
    AnyRunEvent,
    CommitFinished,
    CommitLog,
    CommitQueued,
    CommitStarted,
    RunAccepted,
    RunFinished,
)
from committee.models import (
    CommitRef,
    CommitResult,
    CommitStatus,
    RunRequest,
    RunStatus,
)
from committee.results import (
    cache_key,
    first_bad_commit,
    interpret,
    newly_failing,
    run_status,
)
from committee.store import Store

log = logging.getLogger("committee.engine")

DEFAULT_TIMEOUT_S = 900.0
DEFAULT_LOG_CAP_BYTES = 64 << 20
SUBSCRIBER_QUEUE_EVENTS = 4096
DEFAULT_LOG_INTERVAL_S = 0.05  # at most 20 commit.log events a second per commit


class SubscriberTooSlow(CommitteeError):
    """A subscriber's buffer overflowed: it must resume with `after_seq`."""

    code = "too_slow"


@dataclass(eq=False)  # identity-hashed: kept in a set
class _Subscriber:
    queue: asyncio.Queue[AnyRunEvent] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE_EVENTS)
    )
    overflowed: bool = False

    def offer(self, event: AnyRunEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Never let a slow reader slow the run: drop it and let it resume from the store.
            self.overflowed = True


@dataclass
class _LogBudget:
    remaining: int
    dropped_lines: int = 0
    dropped_bytes: int = 0

    def take(self, lines: list[str]) -> list[str]:
        kept: list[str] = []
        for index, line in enumerate(lines):
            size = len(line) + 1
            if size > self.remaining:
                rest = lines[index:]
                self.dropped_lines += len(rest)
                self.dropped_bytes += sum(len(x) + 1 for x in rest)
                break
            self.remaining -= size
            kept.append(line)
        return kept


class _LogBatcher:
    """At most one `commit.log` event per `interval` for a commit: output arriving sooner waits
    (never longer than `interval`) and goes out with the next. A chatty command then costs the
    store and every subscriber a bounded number of events, while a quiet one is not delayed."""

    def __init__(
        self, publish: Callable[[Stream, list[str]], Awaitable[None]], interval: float
    ) -> None:
        self._publish = publish
        self._interval = interval
        self._stream: Stream = "stdout"
        self._lines: list[str] = []
        self._last = 0.0
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    async def add(self, stream: Stream, lines: list[str]) -> None:
        async with self._lock:  # stdout and stderr are read (and added) concurrently
            if self._lines and stream != self._stream:
                await self._flush()  # keep the interleaving of stdout and stderr
            self._stream = stream
            self._lines.extend(lines)
            wait = self._last + self._interval - time.monotonic()
            if wait <= 0:
                await self._flush()
            elif self._timer is None:
                self._timer = asyncio.create_task(self._flush_after(wait))

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            self._timer = None
            await self._flush()

    async def _flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self._last = time.monotonic()
            await self._publish(self._stream, lines)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None
        async with self._lock:
            await self._flush()


@dataclass
class _Run:
    run_id: str
    request: RunRequest
    commits: list[CommitRef]
    mirror: Path
    seq: int = 0
    results: list[CommitResult | None] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    started: list[float | None] = field(default_factory=list)  # monotonic start of each commit
    subscribers: set[_Subscriber] = field(default_factory=set)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancelled: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Pending:
    run: _Run
    index: int


class Engine:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        data_dir: Path,
        *,
        max_concurrent: int | None = None,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        log_cap_bytes: int = DEFAULT_LOG_CAP_BYTES,
        limits: Limits | None = None,
        allow_local_repos: bool = True,
        allow_network: bool = True,
        log_interval_s: float | None = None,
        owner: str = "",
    ) -> None:
        self.store = store
        self.owner = owner  # "" for a server; process_owner() for a CLI run
        self.log_interval_s = DEFAULT_LOG_INTERVAL_S if log_interval_s is None else log_interval_s
        self.allow_local_repos = allow_local_repos
        self.allow_network = allow_network
        self.executor = executor
        self.data_dir = data_dir
        self.max_concurrent = max_concurrent or os.cpu_count() or 1
        self.default_timeout_s = default_timeout_s
        self.log_cap_bytes = log_cap_bytes
        self.limits = limits or Limits()
        self._runs: dict[str, _Run] = {}
        self._queues: dict[str, deque[_Pending]] = {}
        self._turns: deque[str] = deque()  # users with pending work, in round-robin order
        self._running = 0
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Engine:
        self._dispatcher = asyncio.create_task(self._dispatch(), name="committee-dispatcher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop dispatching and cancel running commits; unfinished work stays queued in the
        store and `recover()` picks it up on the next start."""
        tasks = [t for t in [self._dispatcher, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatcher = None

    # ------------------------------------------------------------------ public API

    async def submit(self, request: RunRequest, *, cwd: Path | None = None) -> str:
        """Resolve every commit (raising BadInput before anything runs), record the run and
        queue its commits. Returns the run id."""
        self.executor.check_project_type(request.project_type)
        repo_url = git.normalize_repo_url(request.repo_url, cwd)
        self._check_local_source(git.local_source(repo_url))
        if request.network and not self.allow_network:
            raise BadInput(
                "this server runs commands without network; it was not started with --allow-network"
            )
        request = request.model_copy(update={"repo_url": repo_url})
        mirror = await git.ensure_mirror(self.data_dir, repo_url, request.commits)
        commits = await git.resolve(mirror, request.commits, source=git.local_source(repo_url))
        run_id = secrets.token_hex(8)
        await self.store.create_run(run_id, request, commits, self.executor.name, self.owner)
        run = self._track(run_id, request, commits, mirror)
        await self._emit(
            run,
            RunAccepted(
                run_id=run_id,
                repo_url=repo_url,
                test_command=request.test_command,
                project_type=request.project_type,
                user_id=request.user_id,
                chat_id=request.chat_id,
                commits=commits,
            ),
        )
        for index, commit in enumerate(commits):
            await self._emit(
                run, CommitQueued(run_id=run_id, commit=commit.sha, ref=commit.ref, index=index)
            )
            self._enqueue(_Pending(run, index))
        log.info("run accepted", extra={"run_id": run_id, "commits": len(commits)})
        return run_id

    def _check_local_source(self, source: Path | None) -> None:
        """Local repositories are for local use: never committee's own data (another user's
        mirror, a job's checkout), and none at all when the engine serves remote users."""
        if source is None:
            return
        if not self.allow_local_repos:
            raise BadInput(
                "this server tests repositories by URL only: local paths and file:// URLs are "
                "refused (start it with --allow-local-repos to allow them)"
            )
        data_dir = self.data_dir.resolve()
        resolved = source.resolve()
        if resolved == data_dir or data_dir in resolved.parents:
            raise BadInput(f"{source} is inside committee's data directory, which is off limits")

    async def recover(self) -> list[str]:
        """Take over what the previous process left unfinished: a server re-queues the
        unfinished commits of server runs; anyone closes the runs of CLI processes that died
        (their commits cancelled). Runs of a live CLI process are left alone."""
        recovered = []
        for row in await self.store.unfinished_runs():
            if owner_alive(row.owner):
                continue
            if not row.owner and self.owner:
                continue  # a server's run: only a server takes it over
            mirror = git.mirror_path(self.data_dir, row.request.repo_url)
            run = self._track(row.run_id, row.request, [c.ref for c in row.commits], mirror)
            run.seq = row.last_seq
            for commit in row.commits:
                run.results[commit.index] = commit.result if commit.status.final else None
                run.attempts[commit.index] = commit.attempts
            pending = [c.index for c in row.commits if not c.status.final]
            for index in pending:
                if run.attempts[index]:
                    # What the interrupted attempt left (a checkout, a pod) goes first.
                    await self.executor.release(self._job(run, index), True)
                if row.owner:
                    reason = "the committee process running this commit ended"
                    await self._record(
                        run, index, self._final(run, index, CommitStatus.cancelled, reason)
                    )
                else:
                    await self._log(run, index, "committee restarted: testing this commit again")
                    self._enqueue(_Pending(run, index))
            if not pending:
                await self._finish(run)
            recovered.append(row.run_id)
        return recovered

    async def subscribe(self, run_id: str, after_seq: int = 0) -> AsyncIterator[AnyRunEvent]:
        """Events of `run_id` after `after_seq`: replayed from the store, then live, ending with
        `run.finished`. Raises NotFound, or SubscriberTooSlow if the reader falls behind."""
        run = self._runs.get(run_id)
        if run is None:
            await self.store.get_run(run_id)  # raises NotFound
        subscriber = _Subscriber()
        if run is not None:
            run.subscribers.add(subscriber)
        try:
            last = after_seq
            while True:
                page = await self.store.events_after(run_id, last, limit=1000)
                if not page:
                    break
                for event in page:
                    yield event
                    last = event.seq
                    if isinstance(event, RunFinished):
                        return
            if run is None:
                return
            while True:
                if subscriber.overflowed and subscriber.queue.empty():
                    raise SubscriberTooSlow(f"subscriber fell behind at seq {last}")
                event = await subscriber.queue.get()
                if event.seq <= last:
                    continue
                yield event
                last = event.seq
                if isinstance(event, RunFinished):
                    return
        finally:
            if run is not None:
                run.subscribers.discard(subscriber)

    async def cancel(self, run_id: str) -> bool:
        """Drop a run's queued commits and kill its running ones. False if already finished."""
        run = self._runs.get(run_id)
        if run is None:
            await self.store.get_run(run_id)  # raises NotFound
            return False
        run.cancelled = True
        for queue in self._queues.values():
            for pending in [p for p in queue if p.run is run]:
                queue.remove(pending)
                await self._record(run, pending.index, self._cancelled(run, pending.index))
        for task in list(run.tasks.values()):
            task.cancel()
        return True

    async def wait(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            await run.done.wait()

    def is_live(self, run_id: str) -> bool:
        return run_id in self._runs

    # ------------------------------------------------------------------ scheduling

    def _track(
        self, run_id: str, request: RunRequest, commits: list[CommitRef], mirror: Path
    ) -> _Run:
        run = _Run(run_id, request, commits, mirror)
        run.results = [None] * len(commits)
        run.attempts = [0] * len(commits)
        run.started = [None] * len(commits)
        self._runs[run_id] = run
        return run

    def _enqueue(self, pending: _Pending) -> None:
        user = pending.run.request.user_id
        queue = self._queues.setdefault(user, deque())
        if not queue and user not in self._turns:
            self._turns.appendleft(user)  # a newly waiting user goes next, ahead of long queues
        queue.append(pending)
        self._wakeup.set()

    def _next_pending(self) -> _Pending | None:
        # Round-robin: one commit per user per turn, so a 500-commit run cannot starve others.
        for _ in range(len(self._turns)):
            user = self._turns.popleft()
            queue = self._queues.get(user)
            if queue:
                pending = queue.popleft()
                if queue:
                    self._turns.append(user)
                return pending
        return None

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._running < self.max_concurrent:
                pending = self._next_pending()
                if pending is None:
                    break
                self._running += 1
                task = asyncio.create_task(self._guarded(pending))
                pending.run.tasks[pending.index] = task
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _guarded(self, pending: _Pending) -> None:
        run, index = pending.run, pending.index
        try:
            result = await self._test_commit(run, index)
        except asyncio.CancelledError:
            if not run.cancelled:
                raise  # the engine is shutting down: the commit stays queued in the store
            result = self._cancelled(run, index)
        except CommitteeError as exc:
            result = self._errored(run, index, exc.message)
        except Exception as exc:  # a bug must cost one commit, not the server
            log.exception("commit %s of run %s crashed", index, run.run_id)
            result = self._errored(run, index, f"internal error: {exc!r}")
        finally:
            run.tasks.pop(index, None)
            self._running -= 1
            self._wakeup.set()
        await self._record(run, index, result)

    # ------------------------------------------------------------------ one commit

    async def _test_commit(self, run: _Run, index: int) -> CommitResult:
        commit = run.commits[index]
        request = run.request
        run.attempts[index] += 1
        run.started[index] = time.monotonic()
        if not any(started is not None for i, started in enumerate(run.started) if i != index):
            await self.store.set_run_status(run.run_id, RunStatus.running)
        await self.store.set_commit_status(run.run_id, index, CommitStatus.running)
        await self._emit(
            run,
            CommitStarted(
                run_id=run.run_id,
                commit=commit.sha,
                ref=commit.ref,
                index=index,
                attempt=run.attempts[index],
            ),
        )
        key = cache_key(
            commit.tree,
            request.test_command,
            request.project_type,
            request.env,
            self.executor.name,
            request.network,
        )
        if not request.no_cache and (cached := await self.store.cache_get(key)):
            await self._log(run, index, "result reused from an earlier run of the same tree")
            return cached.model_copy(update={"commit": commit.sha, "ref": commit.ref})
        job = self._job(run, index)
        budget = _LogBudget(self.log_cap_bytes)

        async def publish(stream: Stream, lines: list[str]) -> None:
            event = CommitLog(run_id=run.run_id, commit=commit.sha, stream=stream, lines=lines)
            await self._emit(run, event)

        batcher = _LogBatcher(publish, self.log_interval_s)

        async def emit(stream: Stream, lines: list[str]) -> None:
            if kept := budget.take(lines):
                await batcher.add(stream, kept)

        started = time.monotonic()
        try:
            outcome = await self.executor.run(job, emit)
        finally:
            await batcher.close()
        result = interpret(commit, outcome, time.monotonic() - started)
        if result.status in (CommitStatus.error, CommitStatus.timeout):
            await self._log(run, index, f"{result.status.value}: {result.reason}")
        if budget.dropped_lines:
            await self._log(
                run,
                index,
                f"log truncated: {budget.dropped_lines} lines ({budget.dropped_bytes} bytes) "
                f"beyond the {self.log_cap_bytes} byte cap were not kept",
            )
        if result.status.cacheable:
            await self.store.cache_put(key, result, run.run_id)
        await self.executor.release(job, result.status is CommitStatus.passed)
        return result

    def _job(self, run: _Run, index: int) -> Job:
        request = run.request
        return Job(
            job_id=f"{run.run_id}-{index}-{run.attempts[index]}",
            run_id=run.run_id,
            repo_url=request.repo_url,
            mirror=run.mirror,
            commit=run.commits[index].sha,
            command=request.test_command,
            project_type=request.project_type,
            user_id=request.user_id,
            chat_id=request.chat_id,
            timeout_s=request.timeout_s or self.default_timeout_s,
            env=request.env,
            network=request.network,
            limits=self.limits,
        )

    def _cancelled(self, run: _Run, index: int) -> CommitResult:
        return self._final(run, index, CommitStatus.cancelled, "the run was cancelled")

    def _errored(self, run: _Run, index: int, reason: str) -> CommitResult:
        return self._final(run, index, CommitStatus.error, reason)

    @staticmethod
    def _final(run: _Run, index: int, status: CommitStatus, reason: str) -> CommitResult:
        """A result the engine decides on (cancelled, errored), timed from the commit's start."""
        commit = run.commits[index]
        started = run.started[index]
        return CommitResult(
            commit=commit.sha,
            ref=commit.ref,
            subject=commit.subject,
            status=status,
            reason=reason,
            duration_s=round(time.monotonic() - started, 3) if started is not None else 0.0,
        )

    # ------------------------------------------------------------------ events

    async def _record(self, run: _Run, index: int, result: CommitResult) -> None:
        run.results[index] = result
        await self.store.set_commit_result(run.run_id, index, result)
        await self._emit(run, CommitFinished(run_id=run.run_id, index=index, **result.model_dump()))
        if all(r is not None for r in run.results):
            await self._finish(run)

    async def _finish(self, run: _Run) -> None:
        results = [r for r in run.results if r is not None]
        bad = first_bad_commit(results)
        status = run_status(results, run.cancelled)
        failing = newly_failing(results, bad)
        first_bad = bad.commit if bad else None
        await self.store.set_run_status(run.run_id, status, first_bad, failing)
        await self._emit(
            run,
            RunFinished(
                run_id=run.run_id,
                status=status,
                first_bad_commit=first_bad,
                newly_failing=failing,
                results=results,
            ),
        )
        self._runs.pop(run.run_id, None)
        run.done.set()
        log.info("run finished", extra={"run_id": run.run_id, "status": status.value})

    async def _log(self, run: _Run, index: int, text: str) -> None:
        commit = run.commits[index].sha
        event = CommitLog(
            run_id=run.run_id, commit=commit, stream="system", lines=[f"[committee] {text}"]
        )
        await self._emit(run, event)

    async def _emit(self, run: _Run, event: AnyRunEvent) -> None:
        async with run.lock:
            run.seq += 1
            event.seq = run.seq
            await self.store.append_events([event])
            for subscriber in run.subscribers:
                subscriber.offer(event)


def process_owner() -> str:
    """Who drives a CLI run: this host, pid and process start time (pids are reused)."""
    return f"cli:{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def owner_alive(owner: str) -> bool:
    """Whether the CLI process that owns a run still runs. A server's run ("") has no owner
    process; another host's process cannot be checked, so it counts as alive."""
    if not owner.startswith("cli:"):
        return False
    _, host, pid, ticks = owner.rsplit(":", 3)
    if host != socket.gethostname():
        return True
    return _start_ticks(int(pid)) == ticks


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


async def collect(engine: Engine, run_id: str) -> RunFinished:
    """Follow a run to its end and return the closing event."""
    async for event in engine.subscribe(run_id):
        if isinstance(event, RunFinished):
            return event
    raise NotFound(f"run {run_id} ended without a run.finished event")

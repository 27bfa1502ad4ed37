"""The local executor, for real: a real git mirror, real processes, real bubblewrap and cgroups
(tests that need them are skipped, with the reason, where they do not work)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from committee.errors import CommitteeError, ExecutorError
from committee.executors import Job, Limits, Outcome, Stream
from committee.executors.local import (
    LocalExecutor,
    bwrap_problem,
    cgroup_problem,
    doctor_report,
)
from committee.sandbox import SANDBOX_UID
from repos import git, make_repo

needs_bwrap = pytest.mark.skipif(bool(bwrap_problem()), reason=bwrap_problem() or "ok")
needs_cgroups = pytest.mark.skipif(bool(cgroup_problem()), reason=cgroup_problem() or "ok")
Repo = tuple[Path, str]  # a bare mirror and its one commit


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Shared by every test, read only. The committed TEST-*.xml must never count as a result."""
    base = tmp_path_factory.mktemp("repo")
    files = {"hello.txt": "hello\n", "reports/TEST-committed.xml": "<testsuite name='old'/>"}
    (sha,) = make_repo(base / "work", [files])
    git(base, "clone", "-q", "--mirror", str(base / "work"), str(base / "mirror.git"))
    return base / "mirror.git", sha


MakeExecutor = Callable[..., LocalExecutor]


@pytest.fixture
async def make_executor(tmp_path: Path) -> AsyncIterator[MakeExecutor]:
    """LocalExecutor(tmp_path / "data", **options), closed (cgroup parents removed) at the end."""
    made: list[LocalExecutor] = []

    def make(**options: Any) -> LocalExecutor:
        made.append(LocalExecutor(options.pop("data_dir", tmp_path / "data"), **options))
        return made[-1]

    yield make
    for local in made:
        await local.aclose()


@pytest.fixture
def executor(make_executor: MakeExecutor) -> LocalExecutor:
    return make_executor()


class Recorder:
    """An emit callback that keeps the lines (or only counts them, for huge output)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.lines: dict[Stream, list[str]] = {"stdout": [], "stderr": [], "system": []}
        self.count = 0
        self.seen = asyncio.Event()

    async def __call__(self, stream: Stream, lines: list[str]) -> None:
        assert lines, "emit is only called with lines"
        self.count += len(lines)
        if self.keep:
            self.lines[stream].extend(lines)
        self.seen.set()


def make_job(repo: Repo, command: str, **changes: object) -> Job:
    fields: dict[str, object] = {
        "job_id": f"t-{uuid.uuid4().hex[:12]}",
        "run_id": "run",
        "repo_url": "file:///repo",
        "mirror": repo[0],
        "commit": repo[1],
        "command": command,
        "project_type": "python",
        "user_id": "u",
        "chat_id": "c",
        "timeout_s": 20.0,
    }
    return Job(**{**fields, **changes})  # type: ignore[arg-type]


def marked_processes(job: Job) -> list[int]:
    """Processes still carrying the job's marker, found independently of the executor."""
    marker = f"COMMITTEE_JOB={job.job_id}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(pid))
    return found


def processes_running(command_line: str) -> bool:
    wanted = command_line.encode().replace(b" ", b"\0")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") == wanted:
                return True
        except OSError:
            continue
    return False


async def run(executor: LocalExecutor, job: Job, keep: bool = True) -> tuple[Outcome, Recorder]:
    recorder = Recorder(keep)
    return await executor.run(job, recorder), recorder


# ---------------------------------------------------------------- output and exit codes


async def test_streams_lines_in_order_per_stream(executor: LocalExecutor, repo: Repo) -> None:
    job = make_job(repo, "echo one; echo two >&2; echo three; cat hello.txt; exit 3")
    outcome, out = await run(executor, job)
    assert out.lines["stdout"] == ["one", "three", "hello"]
    assert out.lines["stderr"] == ["two"]
    assert outcome.exit_code == 3 and not outcome.timed_out and outcome.error == ""
    assert set(outcome.output_tail.splitlines()) == {"one", "two", "three", "hello"}


async def test_exit_125_passes_through(executor: LocalExecutor, repo: Repo) -> None:
    outcome, _ = await run(executor, make_job(repo, "exit 125"))
    assert outcome.exit_code == 125


async def test_carriage_returns_keep_the_last_segment(executor: LocalExecutor, repo: Repo) -> None:
    _, out = await run(executor, make_job(repo, r"printf 'a\rb\rc\n'; printf 'no newline'"))
    assert out.lines["stdout"] == ["c", "no newline"]


async def test_binary_output_is_survived(executor: LocalExecutor, repo: Repo) -> None:
    outcome, out = await run(executor, make_job(repo, "head -c 100000 /dev/urandom"))
    assert outcome.exit_code == 0
    assert out.count > 0


@pytest.mark.timeout(60)
async def test_100_mb_of_output_is_drained_fast(executor: LocalExecutor, repo: Repo) -> None:
    command = r"head -c 100000000 /dev/zero | tr '\0' 'a' | fold -w 100"
    started = time.monotonic()
    outcome, out = await run(executor, make_job(repo, command), keep=False)
    assert outcome.exit_code == 0
    assert out.count == 1_000_000
    assert outcome.output_tail.splitlines()[-1] == "a" * 100
    assert time.monotonic() - started < 15


# ---------------------------------------------------------------- environment and sandbox


@pytest.mark.parametrize("isolation", ["auto", "none"])
async def test_environment_is_scrubbed(
    make_executor: MakeExecutor, repo: Repo, monkeypatch: pytest.MonkeyPatch, isolation: str
) -> None:
    monkeypatch.setenv("COMMITTEE_TEST_SECRET", "hunter2")
    local = make_executor(isolation=isolation)
    job = make_job(repo, "env", env={"EXTRA": "given"})
    outcome, out = await run(local, job)
    env = dict(line.split("=", 1) for line in out.lines["stdout"])
    assert "COMMITTEE_TEST_SECRET" not in env and "hunter2" not in outcome.output_tail
    home = local.data_dir / "jobs" / job.job_id / "home"
    assert env["HOME"] == str(home)
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert env["COMMITTEE_COMMIT"] == repo[1]
    assert env["EXTRA"] == "given" and env["CI"] == "true"


@pytest.fixture
def unmasked_dir() -> Iterator[Path]:
    """A directory outside /tmp, which the sandbox masks anyway, as a real data dir would be."""
    path = Path(tempfile.mkdtemp(prefix="committee-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_bwrap
async def test_sandbox_hides_the_data_dir_and_homes(
    make_executor: MakeExecutor, unmasked_dir: Path, repo: Repo
) -> None:
    data = unmasked_dir / "data"
    (data / "mirrors" / "x.git").mkdir(parents=True)
    (data / "store.db").write_text("tokens")
    (data / "jobs" / "other-job" / "src").mkdir(parents=True)
    local = make_executor(data_dir=data)
    probes = [data / "store.db", data / "mirrors", data / "jobs" / "other-job", Path("/root/.ssh")]
    checks = "; ".join(f"test -e {p} && echo VISIBLE {p}" for p in probes)
    command = (
        f"{checks}; touch /usr/committee-probe 2>/dev/null && echo WROTE-HOST; "
        "touch written-here && echo WROTE-SRC; "
        "python -c 'import sys, pytest; print(sys.prefix)'"
    )
    outcome, out = await run(local, make_job(repo, command))
    assert not [line for line in out.lines["stdout"] if "VISIBLE" in line or "HOST" in line]
    assert "WROTE-SRC" in out.lines["stdout"]
    assert out.lines["stdout"][-1] == sys.prefix  # the venv still works inside
    assert outcome.exit_code == 0


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop applies when committee runs as root")
async def test_command_never_runs_as_root(
    make_executor: MakeExecutor, unmasked_dir: Path, repo: Repo
) -> None:
    secret = unmasked_dir / "root-only"
    secret.write_text("server secret")
    secret.chmod(0o600)
    local = make_executor(data_dir=unmasked_dir / "data")
    command = f"id -u; cat {secret} || echo DENIED; touch mine && stat -c %u mine"
    outcome, out = await run(local, make_job(repo, command))
    assert out.lines["stdout"] == [str(SANDBOX_UID), "DENIED", str(SANDBOX_UID)]
    assert outcome.exit_code == 0


@needs_bwrap
@pytest.mark.parametrize("network", [False, True])
async def test_network_is_off_unless_asked(
    executor: LocalExecutor, repo: Repo, network: bool
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
        outcome, _ = await run(executor, make_job(repo, f'python -c "{connect}"', network=network))
    assert (outcome.exit_code == 0) is network


# ---------------------------------------------------------------- killing


@pytest.mark.parametrize(
    ("isolation", "use_cgroups"),
    [
        pytest.param("auto", True, marks=[needs_bwrap, needs_cgroups]),
        pytest.param("auto", False, marks=needs_bwrap),
        pytest.param("none", True, marks=needs_cgroups),
        ("none", False),
    ],
)
async def test_timeout_kills_the_whole_tree(
    make_executor: MakeExecutor, repo: Repo, isolation: str, use_cgroups: bool
) -> None:
    local = make_executor(isolation=isolation, use_cgroups=use_cgroups)
    # Only a cgroup or a pid namespace can catch a child that drops the environment marker.
    unmarked = f"sleep 300.{os.getpid()}{uuid.uuid4().int % 10**6}"
    hidden = f"env -i setsid {unmarked} & " if use_cgroups or isolation == "auto" else ""
    command = f"(sleep 300 &); setsid sleep 300 & {hidden}echo started; sleep 300"
    job = make_job(repo, command, timeout_s=0.5)
    started = time.monotonic()
    outcome, out = await run(local, job)
    assert outcome.timed_out and outcome.exit_code is None
    assert out.lines["stdout"] == ["started"]
    assert time.monotonic() - started < 5
    assert marked_processes(job) == []
    assert not processes_running(unmarked)


async def test_finished_command_does_not_wait_for_its_background_children(
    executor: LocalExecutor, repo: Repo
) -> None:
    """A daemon left behind holds the output pipes; the job still ends when the command does."""
    job = make_job(repo, "(sleep 300 &); setsid sleep 300 & echo done")
    started = time.monotonic()
    outcome, out = await run(executor, job)
    assert outcome.exit_code == 0 and not outcome.timed_out
    assert out.lines["stdout"] == ["done"]
    assert time.monotonic() - started < 5
    assert marked_processes(job) == []


async def test_cancellation_kills_the_tree_and_cleans_up(
    make_executor: MakeExecutor, repo: Repo
) -> None:
    local = make_executor()
    job = make_job(repo, "(sleep 300 &); setsid sleep 300 & echo started; sleep 300")
    recorder = Recorder()
    task = asyncio.create_task(local.run(job, recorder))
    await asyncio.wait_for(recorder.seen.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert marked_processes(job) == []
    assert not (local.data_dir / "jobs" / job.job_id).exists()


# ---------------------------------------------------------------- limits


@needs_cgroups
async def test_fork_bomb_is_contained_by_the_pids_limit(
    executor: LocalExecutor, repo: Repo
) -> None:
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 1000:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(n)\n"
    )
    job = make_job(repo, f"python -c '{bomb}'", limits=Limits(pids=32))
    outcome, out = await run(executor, job)
    forked = int(out.lines["stdout"][-1])
    assert 5 < forked < 32
    assert any("pids limit 32" in line for line in outcome.diagnostics)
    assert marked_processes(job) == []
    host = await asyncio.create_subprocess_exec("true")
    assert await host.wait() == 0  # the host can still fork


@needs_cgroups
async def test_memory_limit_gives_an_oom_error(executor: LocalExecutor, repo: Repo) -> None:
    job = make_job(
        repo, "python -c 'b = b\"x\" * (256 << 20)'", limits=Limits(memory_bytes=64 << 20)
    )
    outcome, _ = await run(executor, job)
    assert outcome.error == "OOMKilled: memory limit 64 MiB exceeded"
    assert outcome.exit_code != 0


async def test_without_cgroups_memory_is_capped_by_rlimit(
    make_executor: MakeExecutor, repo: Repo
) -> None:
    local = make_executor(use_cgroups=False)
    assert local.describe()["limits"] == "rlimit"
    job = make_job(
        repo,
        "python -c 'b = b\"x\" * (256 << 20)' 2>&1 | tail -1",
        limits=Limits(memory_bytes=128 << 20),
    )
    _, out = await run(local, job)
    assert out.lines["stdout"] == ["MemoryError"]


# ---------------------------------------------------------------- results and lifecycle


@pytest.mark.parametrize("checkout_mode", ["archive", "clone"])
async def test_junit_files_written_by_the_job_are_collected(
    make_executor: MakeExecutor, repo: Repo, checkout_mode: str
) -> None:
    """A clone writes the committed TEST-committed.xml just before the job starts: it must not
    count, whereas an archive dates it back to the commit."""
    executor = make_executor(checkout_mode=checkout_mode)
    command = (
        'echo \'<testsuite name="env"/>\' > "$COMMITTEE_JUNIT"; '
        "mkdir -p build/test-results && "
        "echo '<testsuite name=\"found\"/>' > build/test-results/junit-unit.xml; "
        "mkdir -p node_modules && echo '<testsuite/>' > node_modules/junit.xml"
    )
    outcome, _ = await run(executor, make_job(repo, command))
    assert outcome.junit_xml == ('<testsuite name="env"/>\n', '<testsuite name="found"/>\n')


async def test_release_deletes_the_workdir_unless_kept(
    make_executor: MakeExecutor, tmp_path: Path, repo: Repo
) -> None:
    for keep in (False, True):
        local = make_executor(data_dir=tmp_path / f"data-{keep}", keep_workdirs=keep)
        job = make_job(repo, "touch made-here")
        await run(local, job)
        src = tmp_path / f"data-{keep}" / "jobs" / job.job_id / "src"
        assert (src / "made-here").exists() and (src / "hello.txt").exists()
        await local.release(job, passed=True)
        assert src.exists() is keep


async def test_a_bad_commit_raises_and_leaves_nothing(executor: LocalExecutor, repo: Repo) -> None:
    job = make_job(repo, "true", commit="b" * 40)
    with pytest.raises(CommitteeError):
        await run(executor, job)
    assert not (executor.data_dir / "jobs" / job.job_id).exists()


async def test_without_bwrap_auto_falls_back_and_says_so(
    make_executor: MakeExecutor, repo: Repo
) -> None:
    local = make_executor(bwrap="/nonexistent/bwrap")
    described = local.describe()
    assert described["isolation"] == "none" and described["network"] == "host network"
    assert "/nonexistent/bwrap" in described["warning"]
    outcome, _ = await run(local, make_job(repo, "true"))
    assert outcome.exit_code == 0

    strict = make_executor(bwrap="/nonexistent/bwrap", isolation="bwrap")
    assert strict.describe()["isolation"] == "unavailable"
    with pytest.raises(ExecutorError, match="bwrap"):
        await run(strict, make_job(repo, "true"))


@needs_bwrap
@needs_cgroups
def test_describe_and_doctor_report_what_is_active(tmp_path: Path) -> None:
    described = LocalExecutor(tmp_path / "data").describe()
    assert described["executor"] == "local"
    assert (described["isolation"], described["limits"]) == ("bwrap", "cgroup v1")
    assert described["network"] == "off by default" and described["warning"] == ""
    report = {check: (ok, detail) for check, ok, detail in doctor_report(tmp_path / "data")}
    assert all(ok for ok, _ in report.values()), report
    assert sys.version.split()[0] in report["python inside the sandbox"][1]

"""The executor interface: where one commit's command actually runs.

An executor takes a `Job` (one commit, fully resolved) and runs it in isolation, handing output
to `emit` as it comes and returning an `Outcome`. It knows nothing of runs, stores or clients.
Cancelling the task that awaits `run` must stop the job and everything it started (the process
tree, the pod) before `run` returns. Implementations: `local` (sandbox on this machine),
`kubernetes` (a pod per commit), `fake` (scripted, for scheduler and server tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Stream = Literal["stdout", "stderr", "system"]


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 2 << 30
    pids: int = 512
    cpus: float = 1.0


@dataclass(frozen=True)
class Job:
    """One commit to test. `mirror` is the local bare mirror the local executor checks out from;
    remote executors fetch `commit` from `repo_url` themselves."""

    job_id: str  # unique and DNS-label safe: [a-z0-9-], at most 40 chars
    run_id: str
    repo_url: str
    mirror: Path
    commit: str
    command: str
    project_type: str
    user_id: str
    chat_id: str
    timeout_s: float
    env: Mapping[str, str] = field(default_factory=dict)
    network: bool = False
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Outcome:
    """What happened, before interpretation (the engine turns it into a CommitResult)."""

    exit_code: int | None
    timed_out: bool = False
    error: str = ""  # infrastructure failure in words (OOMKilled, ImagePullBackOff...); "" if none
    junit_xml: tuple[str, ...] = ()  # contents of the JUnit XML files the command wrote
    output_tail: str = ""  # the last lines of output, for summary-line parsing
    diagnostics: tuple[str, ...] = ()  # extra forensics (Kubernetes events, cgroup counters)


Emit = Callable[[Stream, list[str]], Awaitable[None]]


class Executor(Protocol):
    name: str

    async def run(self, job: Job, emit: Emit) -> Outcome:
        """Run the job to completion; raise ExecutorError if it cannot even start."""
        ...

    def check_project_type(self, project_type: str) -> None:
        """Raise UnknownProjectType, before anything runs, if this executor has no way to run
        that project type (the Kubernetes executor needs its template)."""
        ...

    async def release(self, job: Job, passed: bool) -> None:
        """Called once the job's result is stored: free what the job still holds."""
        ...

    def describe(self) -> dict[str, str]:
        """Which isolation is active and why, for `committee doctor` and /health."""
        ...

    async def aclose(self) -> None: ...


JUNIT_ENV = "COMMITTEE_JUNIT"


def create_executor(name: str, data_dir: Path, **options: object) -> Executor:
    """Build an executor by name; each implementation is imported only when chosen."""
    if name == "local":
        from committee.executors.local import LocalExecutor

        return LocalExecutor(data_dir, **options)  # type: ignore[arg-type]
    if name == "kubernetes":
        from committee.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor(**options)  # type: ignore[arg-type]
    from committee.errors import BadInput

    raise BadInput(f"unknown executor {name!r}: choose 'local' or 'kubernetes'")

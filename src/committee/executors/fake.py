"""A scripted executor for scheduler and server tests: no processes, exact control.

Each job's behaviour comes from `script(job) -> FakeStep`: how long to take, then the lines
to print and the exit code. It records which jobs started, in what order, and which were
cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from committee.errors import UnknownProjectType
from committee.executors import Emit, Job, Outcome


@dataclass(frozen=True)
class FakeStep:
    lines: tuple[str, ...] = ()
    delay_s: float = 0.0
    exit_code: int = 0
    error: str = ""
    junit_xml: tuple[str, ...] = ()


@dataclass
class FakeExecutor:
    script: Callable[[Job], FakeStep] = lambda job: FakeStep()
    name: str = "fake"
    started: list[Job] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    released: list[tuple[str, bool]] = field(default_factory=list)
    project_types: tuple[str, ...] | None = None  # None: any

    async def run(self, job: Job, emit: Emit) -> Outcome:
        self.started.append(job)
        step = self.script(job)
        try:
            await asyncio.sleep(step.delay_s)
            for line in step.lines:  # one event per line: tests count on many small events
                await emit("stdout", [line])
        except asyncio.CancelledError:
            self.cancelled.append(job.job_id)
            raise
        tail = "\n".join(step.lines[-200:])
        return Outcome(step.exit_code, error=step.error, junit_xml=step.junit_xml, output_tail=tail)

    def check_project_type(self, project_type: str) -> None:
        if self.project_types is not None and project_type not in self.project_types:
            raise UnknownProjectType(f"no template for {project_type!r}")

    async def release(self, job: Job, passed: bool) -> None:
        self.released.append((job.job_id, passed))

    def describe(self) -> dict[str, str]:
        return {"executor": self.name, "isolation": "none (scripted fake)"}

    async def aclose(self) -> None:
        return None

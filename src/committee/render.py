"""Showing a run in the terminal, from its protocol events: the same for `run`, `submit`, `watch`.

`RunView` is the pure state (what each commit is doing, its output tail); `TerminalReporter`
draws it with Rich — a live table on a terminal, plain lines otherwise — and prints the summary.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from committee.messages import (
    AnyRunEvent,
    CommitFinished,
    CommitLog,
    CommitStarted,
    RunAccepted,
    RunFinished,
)
from committee.models import CommitResult, CommitStatus

STATUS_STYLE = {
    CommitStatus.queued: ("·", "dim"),
    CommitStatus.running: ("▶", "cyan"),
    CommitStatus.passed: ("✔", "green"),
    CommitStatus.failed: ("✘", "red"),
    CommitStatus.error: ("!", "magenta"),
    CommitStatus.timeout: ("⏱", "yellow"),
    CommitStatus.cancelled: ("∅", "dim"),
    CommitStatus.skipped: ("↷", "blue"),
}
TAIL_LINES = 3


@dataclass
class CommitView:
    sha: str
    ref: str
    subject: str
    status: CommitStatus = CommitStatus.queued
    started_at: float | None = None
    result: CommitResult | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def elapsed(self, now: float) -> float:
        if self.result is not None:
            return self.result.duration_s
        return now - self.started_at if self.started_at else 0.0


@dataclass
class RunView:
    run_id: str = ""
    commits: dict[str, CommitView] = field(default_factory=dict)
    last_seq: int = 0
    finished: RunFinished | None = None

    def apply(self, event: AnyRunEvent) -> None:
        self.run_id, self.last_seq = event.run_id, event.seq
        if isinstance(event, RunAccepted):
            for ref in event.commits:
                self.commits.setdefault(ref.sha, CommitView(ref.sha, ref.ref, ref.subject))
        elif isinstance(event, CommitStarted) and (view := self.commits.get(event.commit)):
            view.status, view.started_at, view.result = CommitStatus.running, time.time(), None
        elif isinstance(event, CommitLog) and (view := self.commits.get(event.commit)):
            view.tail.extend(event.lines)
        elif isinstance(event, CommitFinished) and (view := self.commits.get(event.commit)):
            view.status, view.result = (
                event.status,
                CommitResult.model_validate(event, from_attributes=True),
            )
        elif isinstance(event, RunFinished):
            self.finished = event


def _status_text(status: CommitStatus, width: int = 0) -> Text:
    icon, style = STATUS_STYLE[status]
    return Text(f"{icon} {status.value:<{width}}", style=style)


def _counts(result: CommitResult | None) -> str:
    if result is None or result.tests.total == 0:
        return ""
    return f"{result.tests.passed}/{result.tests.failed}"


def live_table(view: RunView) -> RenderableType:
    now = time.time()
    rows: list[RenderableType] = []
    for commit in view.commits.values():
        line = Text.assemble(
            _status_text(commit.status, width=9),
            "  ",
            (commit.sha[:10], "bold"),
            f"  {commit.ref:<12.12}  {commit.subject[:50]:<50}  {commit.elapsed(now):6.1f}s",
            "  (cached)" if commit.result and commit.result.cached else "",
        )
        rows.append(line)
        if commit.status is CommitStatus.running:
            rows.extend(Text(f"      │ {tail[:140]}", style="dim") for tail in commit.tail)
    return Group(*rows)


def summary_table(results: list[CommitResult], first_bad: str | None) -> Table:
    table = Table(title="committee summary", title_justify="left")
    table.add_column("commit", no_wrap=True, min_width=10)
    table.add_column("ref", no_wrap=True, min_width=6, max_width=14, overflow="ellipsis")
    table.add_column("subject", no_wrap=True, overflow="ellipsis", max_width=36)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("pass/fail", no_wrap=True, justify="right", min_width=9)
    table.add_column("time", no_wrap=True, justify="right", min_width=6)
    for result in results:
        marker = " ← first bad" if result.commit == first_bad else ""  # not by colour alone
        table.add_row(
            result.commit[:10],
            result.ref,
            escape(result.subject[:60]),
            _status_text(result.status).append(" (cached)" if result.cached else "").append(marker),
            _counts(result),
            f"{result.duration_s:.2f}s",
        )
    return table


def verdict(finished: RunFinished) -> str:
    """One sentence on where the run stands, in words (the table has the details)."""
    statuses = [r.status for r in finished.results]
    if finished.first_bad_commit is not None:
        if CommitStatus.passed not in statuses[: statuses.index(CommitStatus.failed)]:
            return "every tested commit up to it fails: it may have broken earlier still"
        return ""
    if CommitStatus.failed in statuses:
        return "no commit broke after a passing one: the failures come before the passes"
    if finished.status.value == "passed":
        return "no commit broke"
    return f"no commit failed its tests, but the run {finished.status.value}"


def print_summary(console: Console, finished: RunFinished) -> None:
    console.print(summary_table(finished.results, finished.first_bad_commit))
    for result in finished.results:
        if result.status in (CommitStatus.error, CommitStatus.timeout) and result.reason:
            icon, style = STATUS_STYLE[result.status]
            why = escape(result.reason.splitlines()[0][:300])
            console.print(f"[{style}]{icon} {result.commit[:10]} {escape(result.ref)}:[/] {why}")
    note = verdict(finished)
    if finished.first_bad_commit is None:
        console.print(f"[bold]run {finished.run_id}: {finished.status.value}[/] — {note}")
        return
    bad = next(r for r in finished.results if r.commit == finished.first_bad_commit)
    console.print(
        f"[bold red]first bad commit: {bad.commit}[/] ({escape(bad.ref)}) {escape(bad.subject)}"
    )
    if note:
        console.print(f"  ({note})")
    failures = {f.name: f for f in bad.failures}
    for name in finished.newly_failing or list(failures):
        console.print(f"  [red]✘ {escape(name)}[/]")
        if (failure := failures.get(name)) and failure.message:
            console.print(f"    {escape(failure.message.splitlines()[0][:300])}")
    if not bad.failures:
        hint = f"committee show {finished.run_id} --log {bad.commit[:10]}"
        console.print(f"  exit code {bad.exit_code}; see `{hint}`")


def summary_json(finished: RunFinished) -> str:
    document: dict[str, Any] = {
        "run_id": finished.run_id,
        "status": finished.status.value,
        "first_bad_commit": finished.first_bad_commit,
        "newly_failing": finished.newly_failing,
        "results": [r.model_dump(mode="json") for r in finished.results],
    }
    return json.dumps(document, indent=2)


def exit_code(finished: RunFinished) -> int:
    return 0 if finished.status.value == "passed" else 1


class TerminalReporter:
    """Feeds events to a RunView and keeps the terminal up to date."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.view = RunView()
        self._quiet = quiet
        self._live: Live | None = None

    def __enter__(self) -> TerminalReporter:
        if not self._quiet and self.console.is_terminal:
            # A callable, so elapsed times tick between events too.
            self._live = Live(
                console=self.console,
                refresh_per_second=4,
                transient=False,
                get_renderable=lambda: live_table(self.view),
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(None, None, None)

    def handle(self, event: AnyRunEvent) -> None:
        self.view.apply(event)
        if self._quiet or self._live is not None:  # the live view draws itself
            return
        if isinstance(event, RunAccepted):
            self.console.print(
                f"run {event.run_id}: {len(event.commits)} commit(s) of {escape(event.repo_url)}"
            )
        elif isinstance(event, CommitFinished):
            self.console.print(
                _status_text(event.status),
                event.commit[:10],
                escape(event.ref),
                escape(event.subject[:60]),
                f"{event.duration_s:.2f}s",
                "(cached)" if event.cached else "",
            )

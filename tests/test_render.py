"""What the terminal says about a finished run: pure rendering, checked on recorded output."""

from __future__ import annotations

import pytest
from rich.console import Console

from committee.messages import RunFinished
from committee.models import CommitResult, CommitStatus, Failure, RunStatus
from committee.render import print_summary, verdict
from committee.results import first_bad_commit, run_status

S = CommitStatus


def finished(*statuses: CommitStatus, reason: str = "") -> RunFinished:
    results = [
        CommitResult(
            commit=f"{i:040x}",
            ref=f"HEAD~{len(statuses) - 1 - i}",
            subject=f"commit {i}",
            status=status,
            reason=reason,
            failures=[Failure(name="t::test_x", message="boom")] if status is S.failed else [],
        )
        for i, status in enumerate(statuses)
    ]
    bad = first_bad_commit(results)
    return RunFinished(
        run_id="r1",
        status=run_status(results),
        first_bad_commit=bad.commit if bad else None,
        results=results,
    )


@pytest.mark.parametrize(
    ("statuses", "words"),
    [
        ((S.passed, S.failed), ""),
        ((S.failed, S.failed), "may have broken earlier"),
        ((S.failed, S.passed), "failures come before the passes"),
        ((S.passed, S.passed), "no commit broke"),
        ((S.passed, S.error), "no commit failed its tests, but the run error"),
    ],
)
def test_verdict_says_why_a_commit_is_or_is_not_named(
    statuses: tuple[CommitStatus, ...], words: str
) -> None:
    said = verdict(finished(*statuses))
    assert said == words if not words else words in said


def text_of(run: RunFinished) -> str:
    console = Console(record=True, width=140, color_system=None)
    print_summary(console, run)
    return console.export_text()


def test_summary_names_first_bad_commit_and_its_failing_test() -> None:
    text = text_of(finished(S.passed, S.failed))
    assert f"first bad commit: {1:040x}" in text
    assert "t::test_x" in text and "boom" in text
    assert RunStatus.failed.value in text


def test_summary_explains_timeouts_and_keeps_brackets() -> None:
    text = text_of(finished(S.passed, S.timeout, reason="killed after 2 s [limit]"))
    assert "killed after 2 s [limit]" in text  # user text is not read as markup
    assert "no commit failed its tests" in text

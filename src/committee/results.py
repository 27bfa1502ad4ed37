"""From what an executor saw to what it means: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from committee.executors import Outcome
from committee.junit import ParsedTests, parse_junit, parse_summary
from committee.models import CommitRef, CommitResult, CommitStatus, RunStatus, TestCounts

SKIP_EXIT_CODE = 125  # as `git bisect run`: this commit cannot be tested
# The shell's own codes: the command itself could not run, which says nothing about the tests.
CANNOT_RUN = {
    126: "the test command could not be executed (exit 126: permission denied?)",
    127: "the test command was not found (exit 127): is it installed, or spelled right?",
}


def interpret(commit: CommitRef, outcome: Outcome, duration_s: float) -> CommitResult:
    parsed: ParsedTests | None = parse_junit(list(outcome.junit_xml)) or parse_summary(
        outcome.output_tail
    )
    counts = parsed.counts if parsed else TestCounts()
    failures = parsed.failures if parsed else []
    reason = outcome.error
    if outcome.timed_out:
        status = CommitStatus.timeout
        reason = reason or "the command ran past its timeout and was killed"
    elif outcome.error:
        status = CommitStatus.error
    elif outcome.exit_code in CANNOT_RUN:
        status = CommitStatus.error
        reason = CANNOT_RUN[outcome.exit_code]
    elif outcome.exit_code == SKIP_EXIT_CODE:
        status = CommitStatus.skipped
        reason = "the command exited 125: commit cannot be tested"
    elif outcome.exit_code == 0 and counts.failed == 0 and counts.errors == 0:
        status = CommitStatus.passed
    else:
        status = CommitStatus.failed
    if outcome.diagnostics and status in (CommitStatus.error, CommitStatus.timeout):
        # Forensics explain a failure to run; on an ordinary pass or fail they are noise.
        reason = "\n".join([reason, *outcome.diagnostics]).strip()
    return CommitResult(
        commit=commit.sha,
        ref=commit.ref,
        subject=commit.subject,
        status=status,
        exit_code=outcome.exit_code,
        duration_s=round(duration_s, 3),
        tests=counts,
        failures=failures,
        reason=reason,
    )


def first_bad_commit(results: Sequence[CommitResult]) -> CommitResult | None:
    """The first failing commit after a passing one; the first commit if all that ran failed.

    Skipped, errored, timed-out and cancelled commits neither pass nor fail: they are stepped over.
    """
    seen_pass = False
    first_fail: CommitResult | None = None
    for result in results:
        if result.status is CommitStatus.passed:
            seen_pass = True
        elif result.status is CommitStatus.failed:
            if seen_pass:
                return result
            first_fail = first_fail or result
    return None if seen_pass else first_fail


def newly_failing(results: Sequence[CommitResult], bad: CommitResult | None) -> list[str]:
    """Tests failing at `bad` that were not failing at the last passing commit before it."""
    if bad is None:
        return []
    index = next(i for i, r in enumerate(results) if r.commit == bad.commit)
    before = next((r for r in reversed(results[:index]) if r.status is CommitStatus.passed), None)
    already = {f.name for f in before.failures} if before else set()
    return [f.name for f in bad.failures if f.name not in already]


def run_status(results: Sequence[CommitResult], cancelled: bool = False) -> RunStatus:
    statuses = {r.status for r in results}
    if cancelled or CommitStatus.cancelled in statuses:
        return RunStatus.cancelled
    if CommitStatus.failed in statuses:
        return RunStatus.failed
    if statuses & {CommitStatus.error, CommitStatus.timeout}:
        return RunStatus.error
    return RunStatus.passed


def cache_key(
    tree: str, command: str, project_type: str, env: Mapping[str, str], executor: str, network: bool
) -> str:
    """Same tree, same command, same environment: same result."""
    material = json.dumps(
        [tree, command, project_type, sorted(env.items()), executor, network], sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()

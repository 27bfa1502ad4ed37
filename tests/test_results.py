from __future__ import annotations

from typing import Any

import pytest

from committee.executors import Outcome
from committee.models import (
    CommitRef,
    CommitResult,
    CommitStatus,
    Failure,
    RunStatus,
    TestCounts,
)
from committee.results import cache_key, first_bad_commit, interpret, newly_failing, run_status

COMMIT = CommitRef(sha="a" * 40, ref="HEAD~1", subject="Add widgets")

FAILING_JUNIT = """<testsuites><testsuite>
<testcase classname="tests.test_w" name="test_ok"/>
<testcase classname="tests.test_w" name="test_count"><failure message="off by one">trace</failure>
</testcase></testsuite></testsuites>"""


def test_exit_0_passes_with_counts_from_the_summary() -> None:
    outcome = Outcome(exit_code=0, output_tail="collected 3 items\n3 passed in 0.01s")
    result = interpret(COMMIT, outcome, duration_s=1.23456)
    assert result.status is CommitStatus.passed
    assert result.tests == TestCounts(total=3, passed=3)
    assert (result.commit, result.ref, result.subject) == (COMMIT.sha, "HEAD~1", "Add widgets")
    assert result.exit_code == 0
    assert result.duration_s == 1.235
    assert result.reason == ""


def test_exit_1_fails() -> None:
    tail = "FAILED tests/test_w.py::test_count - assert 1 == 2\n1 failed, 1 passed in 0.02s"
    result = interpret(COMMIT, Outcome(exit_code=1, output_tail=tail), 0.5)
    assert result.status is CommitStatus.failed
    assert result.exit_code == 1
    assert result.tests == TestCounts(total=2, passed=1, failed=1)
    assert [f.name for f in result.failures] == ["tests/test_w.py::test_count"]


def test_exit_1_without_any_report_still_fails() -> None:
    result = interpret(COMMIT, Outcome(exit_code=1, output_tail="Segmentation fault"), 0.1)
    assert result.status is CommitStatus.failed
    assert result.tests == TestCounts()


def test_exit_125_skips() -> None:
    result = interpret(COMMIT, Outcome(exit_code=125), 0.1)
    assert result.status is CommitStatus.skipped
    assert "125" in result.reason


def test_timeout_wins_over_the_exit_code() -> None:
    result = interpret(COMMIT, Outcome(exit_code=-9, timed_out=True), 30.0)
    assert result.status is CommitStatus.timeout
    assert "timeout" in result.reason


def test_infrastructure_error_is_an_error_with_its_reason() -> None:
    result = interpret(COMMIT, Outcome(exit_code=None, error="OOMKilled"), 2.0)
    assert result.status is CommitStatus.error
    assert result.reason == "OOMKilled"


def test_junit_failures_fail_a_command_that_exited_0() -> None:
    outcome = Outcome(exit_code=0, junit_xml=(FAILING_JUNIT,), output_tail="2 passed in 0.01s")
    result = interpret(COMMIT, outcome, 0.2)
    assert result.status is CommitStatus.failed
    # the JUnit report is preferred over the summary line
    assert result.tests == TestCounts(total=2, passed=1, failed=1)
    assert result.failures == [
        Failure(name="tests.test_w::test_count", message="off by one", traceback="trace")
    ]


def test_unreadable_junit_falls_back_to_the_summary() -> None:
    outcome = Outcome(exit_code=0, junit_xml=("<testsuites",), output_tail="4 passed in 0.1s")
    result = interpret(COMMIT, outcome, 0.2)
    assert result.status is CommitStatus.passed
    assert result.tests == TestCounts(total=4, passed=4)


def test_diagnostics_explain_errors_only() -> None:
    outcome = Outcome(
        exit_code=137, error="OOMKilled", diagnostics=("memory.failcnt 12", "pod evicted")
    )
    result = interpret(COMMIT, outcome, 1.0)
    assert result.reason == "OOMKilled\nmemory.failcnt 12\npod evicted"
    passed = interpret(COMMIT, Outcome(exit_code=0, diagnostics=("cpu throttled",)), 1.0)
    assert passed.status is CommitStatus.passed
    assert passed.reason == ""
    timeout = interpret(COMMIT, Outcome(None, timed_out=True, diagnostics=("peak 1 MiB",)), 1.0)
    assert timeout.reason.endswith("\npeak 1 MiB")


# ---------------------------------------------------------------- across commits


def result(name: str, status: CommitStatus, *failing: str) -> CommitResult:
    return CommitResult(
        commit=name * 40,
        ref=name,
        status=status,
        failures=[Failure(name=test) for test in failing],
    )


P, F, S, E, T = (
    CommitStatus.passed,
    CommitStatus.failed,
    CommitStatus.skipped,
    CommitStatus.error,
    CommitStatus.timeout,
)


@pytest.mark.parametrize(
    ("statuses", "bad"),
    [
        ([P, P, F, F], "c"),
        ([F, F, F], "a"),
        ([F, P, F], "c"),
        ([P, S, E, T, F], "e"),
        ([S, F, P, F], "d"),
        ([P, P, P], None),
        ([S, E], None),
        ([], None),
    ],
)
def test_first_bad_commit(statuses: list[CommitStatus], bad: str | None) -> None:
    results = [result(name, status) for name, status in zip("abcde", statuses, strict=False)]
    found = first_bad_commit(results)
    assert (found.ref if found else None) == bad


def test_newly_failing_leaves_out_what_already_failed_at_the_last_pass() -> None:
    results = [
        result("a", F, "t_old"),
        result("b", P, "t_flaky"),
        result("c", S),
        result("d", F, "t_flaky", "t_new", "t_old"),
    ]
    bad = first_bad_commit(results)
    assert bad is results[3]
    assert newly_failing(results, bad) == ["t_new", "t_old"]


def test_newly_failing_when_every_commit_fails_is_all_of_the_first() -> None:
    results = [result("a", F, "t_1", "t_2"), result("b", F, "t_1")]
    assert newly_failing(results, first_bad_commit(results)) == ["t_1", "t_2"]


def test_newly_failing_without_a_bad_commit() -> None:
    assert newly_failing([result("a", P)], None) == []


@pytest.mark.parametrize(
    ("statuses", "cancelled", "expected"),
    [
        ([P, P], False, RunStatus.passed),
        ([P, S], False, RunStatus.passed),
        ([], False, RunStatus.passed),
        ([P, F, E], False, RunStatus.failed),
        ([P, E], False, RunStatus.error),
        ([P, T], False, RunStatus.error),
        ([P, F, CommitStatus.cancelled], False, RunStatus.cancelled),
        ([P, F], True, RunStatus.cancelled),
    ],
)
def test_run_status(statuses: list[CommitStatus], cancelled: bool, expected: RunStatus) -> None:
    results = [result(str(i), status) for i, status in enumerate(statuses)]
    assert run_status(results, cancelled=cancelled) is expected


# ---------------------------------------------------------------- cache key

BASE: dict[str, Any] = {
    "tree": "t" * 40,
    "command": "pytest -q",
    "project_type": "python",
    "env": {"A": "1", "B": "2"},
    "executor": "local",
    "network": False,
}


def test_cache_key_is_stable() -> None:
    key = cache_key(**BASE)
    assert len(key) == 64
    assert cache_key(**BASE) == key
    # the order the variables were given in does not matter
    assert cache_key(**{**BASE, "env": {"B": "2", "A": "1"}}) == key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tree", "u" * 40),
        ("command", "pytest -x"),
        ("project_type", "node"),
        ("env", {"A": "1", "B": "3"}),
        ("env", {"A": "1"}),
        ("executor", "kubernetes"),
        ("network", True),
    ],
)
def test_cache_key_differs_when_any_input_differs(field: str, value: object) -> None:
    assert cache_key(**{**BASE, field: value}) != cache_key(**BASE)


def test_cache_key_does_not_confuse_fields() -> None:
    # joining naively would make these two the same string
    one = cache_key(**{**BASE, "command": "make", "project_type": "c test"})
    two = cache_key(**{**BASE, "command": "make c", "project_type": "test"})
    assert one != two


def test_a_command_that_cannot_run_is_an_error_not_a_failure() -> None:
    for code, words in ((127, "not found"), (126, "could not be executed")):
        result = interpret(COMMIT, Outcome(exit_code=code), 0.1)
        assert result.status is CommitStatus.error
        assert words in result.reason

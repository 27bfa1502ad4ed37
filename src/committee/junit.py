"""Reading test results: JUnit XML (pytest, jest-junit, Surefire...) and, failing that, the
closing summary line of pytest and friends. Pure functions over text."""

from __future__ import annotations

from dataclasses import dataclass, field

from committee.models import Failure, TestCounts


@dataclass(frozen=True)
class ParsedTests:
    counts: TestCounts
    failures: list[Failure] = field(default_factory=list)
    passed_names: frozenset[str] = frozenset()


def parse_junit(documents: list[str]) -> ParsedTests | None:
    """Merge one or more JUnit XML documents (<testsuites> or <testsuite> roots). None if none
    parse. Names are "classname::name" (pytest style). Malformed XML is skipped, not fatal;
    entity expansion is refused (untrusted input)."""
    raise NotImplementedError


def parse_summary(output_tail: str) -> ParsedTests | None:
    """Counts from a closing summary line: pytest's '== 1 failed, 2 passed in 0.1s ==',
    'N passed, N failed' lines, unittest's 'Ran N tests' + 'FAILED (failures=1)'. pytest's
    'FAILED path::name - message' short summary lines become failures. None if nothing found."""
    raise NotImplementedError

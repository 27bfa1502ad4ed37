"""Reading test results: JUnit XML (pytest, jest-junit, Surefire...) and, failing that, the
closing summary line of pytest and friends. Pure functions over text."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field

from committee.models import Failure, TestCounts


@dataclass(frozen=True)
class ParsedTests:
    counts: TestCounts
    failures: list[Failure] = field(default_factory=list)
    passed_names: frozenset[str] = frozenset()


# ---------------------------------------------------------------- JUnit XML

_OUTCOMES = ("failure", "error", "skipped")  # in this order: a failed test with a teardown
# error is one failed test, not one of each


class _NoDoctype(ET.TreeBuilder):
    """Entities can only be declared in a DTD, so refusing the DOCTYPE refuses them all
    (billion laughs, external files) while a literal '<!DOCTYPE' inside CDATA stays readable."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise ET.ParseError("a DOCTYPE is not accepted in a JUnit report")


def _read_root(document: str) -> ET.Element | None:
    """The root element, or None if the document is malformed, declares a DTD, or is not JUnit."""
    try:
        root = ET.fromstring(document, parser=ET.XMLParser(target=_NoDoctype()))
    except ET.ParseError:
        return None
    return root if root.tag in ("testsuites", "testsuite") else None


def _case_name(case: ET.Element) -> str:
    # jest-junit repeats the full title in both attributes; pytest gives "tests.test_x" + "test_y".
    name = case.get("name", "").strip()
    classname = case.get("classname", "").strip()
    return f"{classname}::{name}" if classname and classname != name else name


def _outcome(case: ET.Element) -> tuple[str, ET.Element | None]:
    for tag in _OUTCOMES:
        detail = case.find(tag)
        if detail is not None:
            return tag, detail
    return "passed", None


def _failure(name: str, detail: ET.Element) -> Failure:
    text = (detail.text or "").strip()
    message = detail.get("message") or next(iter(text.splitlines()), "")
    return Failure(name=name, message=message.strip(), traceback=text)


def parse_junit(documents: list[str]) -> ParsedTests | None:
    """Merge one or more JUnit XML documents (<testsuites> or <testsuite> roots). None if none
    parse. Names are "classname::name" (pytest style). Malformed XML is skipped, not fatal;
    entity expansion is refused (untrusted input)."""
    roots = [root for root in map(_read_root, documents) if root is not None]
    if not roots:
        return None
    tally: Counter[str] = Counter()
    failures: list[Failure] = []
    passed: set[str] = set()
    for case in (case for root in roots for case in root.iter("testcase")):
        name = _case_name(case)
        outcome, detail = _outcome(case)
        tally[outcome] += 1
        if detail is None:
            passed.add(name)
        elif outcome != "skipped":
            failures.append(_failure(name, detail))
    counts = TestCounts(
        total=tally.total(),
        passed=tally["passed"],
        failed=tally["failure"],
        skipped=tally["skipped"],
        errors=tally["error"],
    )
    return ParsedTests(counts=counts, failures=failures, passed_names=frozenset(passed))


# ---------------------------------------------------------------- summary lines

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# pytest "=== 1 failed, 2 passed in 0.1s ===" (or -q, bare), jest "Tests:  1 failed, 2 total".
_COUNTS_LINE = re.compile(
    r"^(?:=+ )?(?:Tests:\s+)?(?P<parts>\d+ [a-z]+(?:, \d+ [a-z]+)*)"
    r"(?: in [\d.]+m?s(?: \([\d:.]+\))?)?(?: =+)?$"
)
_NO_TESTS = re.compile(r"^(?:=+ )?no tests ran in [\d.]+m?s(?: =+)?$")
_COUNT_FIELD = {
    "passed": "passed",
    "xpassed": "passed",  # as pytest's JUnit report counts them
    "failed": "failed",
    "skipped": "skipped",
    "xfailed": "skipped",
    "todo": "skipped",
    "error": "errors",
    "errors": "errors",
    "total": "total",
    # not test outcomes: tallied under "" and never read
    "warning": "",
    "warnings": "",
    "deselected": "",
    "rerun": "",
}
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ")
_UNITTEST_END = re.compile(r"^(?:OK|FAILED)(?: \((?P<parts>.*)\))?$")
_UNITTEST_HEADER = re.compile(r"^(?:FAIL|ERROR): (\w+) \(([\w.]+)\)")
_PYTEST_SHORT = re.compile(
    r"^(?:FAILED|ERROR) (?P<name>[^\s\[]+(?:\[[^\]]*\])?)(?: - (?P<msg>.*))?$"
)
_GO_TEST = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+)")
_GO_PACKAGE = re.compile(r"^(?:ok|FAIL)\s+\S+\s+(?:\d[\d.]*m?s|\(cached\))")
_GO_FIELD = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}


def _counts(fields: Counter[str], total: int | None = None) -> TestCounts:
    done = fields["passed"] + fields["failed"] + fields["skipped"] + fields["errors"]
    return TestCounts(
        total=total if total is not None else fields["total"] or done,
        passed=fields["passed"],
        failed=fields["failed"],
        skipped=fields["skipped"],
        errors=fields["errors"],
    )


def _counts_line(line: str) -> TestCounts | None:
    """pytest's closing line, a plain 'N passed, N failed' line, jest's 'Tests:' line."""
    if _NO_TESTS.match(line):
        return TestCounts()
    match = _COUNTS_LINE.match(line)
    if not match:
        return None
    fields: Counter[str] = Counter()
    for part in match["parts"].split(", "):
        number, word = part.split(" ")
        if word not in _COUNT_FIELD:
            return None
        fields[_COUNT_FIELD[word]] += int(number)
    return _counts(fields)


def _unittest_counts(ran: int, parts: str) -> TestCounts:
    """From 'Ran N tests' and the parentheses of 'FAILED (failures=1, errors=2, skipped=1)'."""
    given = dict(part.split("=") for part in parts.split(", ") if "=" in part)
    fields: Counter[str] = Counter(
        failed=int(given.get("failures", 0)),
        errors=int(given.get("errors", 0)),
        skipped=int(given.get("skipped", 0)),
    )
    fields["passed"] = ran - fields["failed"] - fields["errors"] - fields["skipped"]
    return _counts(fields, total=ran)


def _failure_line(line: str) -> Failure | None:
    """A failing test named on one line: pytest's short summary, unittest's header, go's '---'."""
    if match := _PYTEST_SHORT.match(line):
        name = match["name"].replace("\\", "/").removeprefix("./")
        # "ERROR something went wrong" from any program is not a pytest node id
        if "::" in name or name.endswith(".py"):
            return Failure(name=name, message=match["msg"] or "")
    if match := _UNITTEST_HEADER.match(line):
        method, where = match.groups()
        # Python 3.11 prints "(module.Class.method)", older ones "(module.Class)"
        return Failure(name=where if where.endswith(f".{method}") else f"{where}.{method}")
    if (match := _GO_TEST.match(line)) and match[1] == "FAIL":
        return Failure(name=match[2])
    return None


class _SummaryScan:
    """Walks the tail once; the last summary seen wins, failures accumulate."""

    def __init__(self) -> None:
        self.counts: TestCounts | None = None
        self.failures: dict[str, Failure] = {}
        self._ran: int | None = None
        self._go: Counter[str] = Counter()

    def feed(self, line: str) -> None:
        counts = _counts_line(line.strip()) or self._unittest(line) or self._go_test(line)
        if counts is not None:
            self.counts = counts
        failure = _failure_line(line)
        if failure is not None:
            self.failures.setdefault(failure.name, failure)

    def _unittest(self, line: str) -> TestCounts | None:
        if match := _UNITTEST_RAN.match(line):
            self._ran = int(match[1])
        elif (match := _UNITTEST_END.match(line)) and self._ran is not None:
            counts, self._ran = _unittest_counts(self._ran, match["parts"] or ""), None
            return counts
        return None

    def _go_test(self, line: str) -> TestCounts | None:
        # go prints no totals: count the verdict lines seen so far (subtests included)
        if match := _GO_TEST.match(line):
            self._go[_GO_FIELD[match[1]]] += 1
        elif not _GO_PACKAGE.match(line):
            return None
        return _counts(self._go)

    def result(self) -> ParsedTests | None:
        if self.counts is None and not self.failures:
            return None
        # failures named but no summary (a cut tail): each of them at least failed
        counts = self.counts or TestCounts(total=len(self.failures), failed=len(self.failures))
        return ParsedTests(counts=counts, failures=list(self.failures.values()))


def parse_summary(output_tail: str) -> ParsedTests | None:
    """Counts from a closing summary line: pytest's '== 1 failed, 2 passed in 0.1s ==',
    'N passed, N failed' lines, jest's 'Tests:' line, unittest's 'Ran N tests' + 'FAILED
    (failures=1)', go's '--- FAIL: TestX' and 'ok pkg' lines; the last one found wins. pytest's
    'FAILED path::name - message' short summary lines become failures. None if nothing found."""
    scan = _SummaryScan()
    for line in _ANSI.sub("", output_tail).splitlines():
        scan.feed(line.rstrip())
    return scan.result()

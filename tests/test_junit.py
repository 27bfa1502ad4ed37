from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from committee.capture import LineSplitter, Tail
from committee.junit import parse_junit, parse_summary
from committee.models import Failure, TestCounts

PYTEST_XML = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">\
<testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="0.05">\
<testcase classname="tests.test_fail" name="test_ok" time="0.001" />\
<testcase classname="tests.test_fail" name="test_x" time="0.002">\
<failure message="AssertionError: boom&#10;assert 1 == 2">def test_x():
&gt;       assert 1 == 2, "boom"
E       AssertionError: boom

tests/test_fail.py:5: AssertionError</failure></testcase>\
<testcase classname="tests.test_fail" name="test_db" time="0.000">\
<error message="failed on setup with &quot;fixture 'db' not found&quot;">file tests/test_fail.py, \
line 8
E       fixture 'db' not found</error></testcase>\
<testcase classname="tests.test_fail" name="test_later" time="0.000">\
<skipped type="pytest.skip" message="not yet">tests/test_fail.py:11: not yet</skipped>\
</testcase></testsuite></testsuites>"""

# jest-junit's defaults: classname and name both "{describe blocks} {title}", no message attr.
JEST_XML = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="jest tests" tests="3" failures="1" errors="0" time="1.349">
  <testsuite name="Calculator" errors="0" failures="1" skipped="1" time="0.487" tests="3">
    <testcase classname="Calculator adds" name="Calculator adds" time="0.002">
    </testcase>
    <testcase classname="Calculator divides" name="Calculator divides" time="0.001">
      <failure>Error: expect(received).toBe(expected) // Object.is equality

Expected: 2
Received: 3
    at Object.toBe (/app/__tests__/calc.test.js:10:21)</failure>
    </testcase>
    <testcase classname="Calculator later" name="Calculator later" time="0">
      <skipped/>
    </testcase>
  </testsuite>
</testsuites>
"""

# Maven Surefire: one <testsuite> root per class, properties, CDATA output, flaky reruns.
SUREFIRE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="3.0"
    name="com.example.AppTest" time="0.051" tests="4" errors="0" skipped="1" failures="1">
  <properties>
    <property name="java.version" value="17.0.9"/>
  </properties>
  <testcase name="addsNumbers" classname="com.example.AppTest" time="0.004"/>
  <testcase name="rendersPage" classname="com.example.AppTest" time="0.010">
    <failure message="expected: &lt;4&gt; but was: &lt;5&gt;"
        type="org.opentest4j.AssertionFailedError"><![CDATA[org.opentest4j.AssertionFailedError: \
expected: <4> but was: <5>
\tat com.example.AppTest.rendersPage(AppTest.java:21)
]]></failure>
    <system-out><![CDATA[<!DOCTYPE html><html><body>rendered</body></html>
]]></system-out>
  </testcase>
  <testcase name="retriesNetwork" classname="com.example.AppTest" time="0.020">
    <flakyFailure message="timed out" type="java.net.SocketTimeoutException"/>
  </testcase>
  <testcase name="ignored" classname="com.example.AppTest" time="0">
    <skipped message="@Disabled"/>
  </testcase>
</testsuite>
"""


def test_pytest_report_names_counts_and_failures() -> None:
    parsed = parse_junit([PYTEST_XML])
    assert parsed is not None
    assert parsed.counts == TestCounts(total=4, passed=1, failed=1, skipped=1, errors=1)
    assert [f.name for f in parsed.failures] == [
        "tests.test_fail::test_x",
        "tests.test_fail::test_db",
    ]
    failure = parsed.failures[0]
    assert failure.message == "AssertionError: boom\nassert 1 == 2"
    assert failure.traceback.startswith("def test_x():")
    assert "tests/test_fail.py:5: AssertionError" in failure.traceback
    assert parsed.failures[1].message == "failed on setup with \"fixture 'db' not found\""
    assert parsed.passed_names == {"tests.test_fail::test_ok"}


def test_jest_junit_report_uses_the_title_once_and_first_line_as_message() -> None:
    parsed = parse_junit([JEST_XML])
    assert parsed is not None
    assert parsed.counts == TestCounts(total=3, passed=1, failed=1, skipped=1)
    assert parsed.failures[0].name == "Calculator divides"
    assert (
        parsed.failures[0].message == "Error: expect(received).toBe(expected) // Object.is equality"
    )
    assert "calc.test.js:10:21" in parsed.failures[0].traceback
    assert parsed.passed_names == {"Calculator adds"}


def test_surefire_report_with_cdata_and_flaky_rerun() -> None:
    parsed = parse_junit([SUREFIRE_XML])
    assert parsed is not None
    # a flaky failure passed on rerun; a DOCTYPE inside CDATA output is just text
    assert parsed.counts == TestCounts(total=4, passed=2, failed=1, skipped=1)
    assert parsed.failures == [
        Failure(
            name="com.example.AppTest::rendersPage",
            message="expected: <4> but was: <5>",
            traceback="org.opentest4j.AssertionFailedError: expected: <4> but was: <5>\n"
            "\tat com.example.AppTest.rendersPage(AppTest.java:21)",
        )
    ]
    assert "com.example.AppTest::retriesNetwork" in parsed.passed_names


def test_nested_suites_are_counted_once_per_case() -> None:
    nested = """<testsuites tests="3">
      <testsuite name="outer" tests="3">
        <testsuite name="inner" tests="2">
          <testcase name="a" classname="pkg.Inner"/>
          <testcase name="b"><error>RuntimeError: down
  more detail</error></testcase>
        </testsuite>
        <testcase name="c" classname="pkg.Outer"/>
      </testsuite>
    </testsuites>"""
    parsed = parse_junit([nested])
    assert parsed is not None
    assert parsed.counts == TestCounts(total=3, passed=2, errors=1)
    assert parsed.failures == [
        Failure(
            name="b", message="RuntimeError: down", traceback="RuntimeError: down\n  more detail"
        )
    ]
    assert parsed.passed_names == {"pkg.Inner::a", "pkg.Outer::c"}


def test_a_failure_with_a_teardown_error_is_one_failed_test() -> None:
    doc = (
        '<testsuite><testcase name="t"><failure message="f"/><error message="e"/>'
        "</testcase></testsuite>"
    )
    parsed = parse_junit([doc])
    assert parsed is not None
    assert parsed.counts == TestCounts(total=1, failed=1)
    assert [f.message for f in parsed.failures] == ["f"]


def test_documents_are_merged_and_malformed_ones_skipped() -> None:
    cut_short = PYTEST_XML[: len(PYTEST_XML) // 2]
    parsed = parse_junit([JEST_XML, cut_short, "", SUREFIRE_XML])
    assert parsed is not None
    assert parsed.counts == TestCounts(total=7, passed=3, failed=2, skipped=2)
    assert [f.name for f in parsed.failures] == [
        "Calculator divides",
        "com.example.AppTest::rendersPage",
    ]


@pytest.mark.parametrize(
    "documents",
    [[], ["not xml at all"], ["<testsuite><testcase>"], ["<html><body>report</body></html>"]],
)
def test_none_when_no_document_parses(documents: list[str]) -> None:
    assert parse_junit(documents) is None


def test_an_empty_report_parses_to_zero_counts() -> None:
    parsed = parse_junit(['<testsuites name="pytest tests"/>'])
    assert parsed is not None
    assert parsed.counts == TestCounts()


LAUGHS = "&lol;" * 10
BILLION_LAUGHS = f"""<?xml version="1.0"?>
<!DOCTYPE testsuite [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "{LAUGHS}">
  <!ENTITY lol3 "{LAUGHS.replace("lol", "lol2")}">
]>
<testsuite><testcase name="&lol3;"/></testsuite>"""
INTERNAL_ENTITY = """<!DOCTYPE testsuite [<!ENTITY who "alice">]>
<testsuite><testcase name="&who;"/></testsuite>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE testsuite [<!ENTITY leak SYSTEM "file:///etc/hostname">]>
<testsuite><testcase name="x"><failure>&leak;</failure></testcase></testsuite>"""


@pytest.mark.parametrize(
    "document",
    [BILLION_LAUGHS, INTERNAL_ENTITY, EXTERNAL_ENTITY],
    ids=["billion-laughs", "internal-entity", "external-entity"],
)
def test_documents_with_a_dtd_are_refused(document: str) -> None:
    assert parse_junit([document]) is None
    # the rest of a batch still counts
    parsed = parse_junit([document, JEST_XML])
    assert parsed is not None
    assert parsed.counts.total == 3


# ---------------------------------------------------------------- summaries


def test_pytest_summary_with_short_summary_lines() -> None:
    tail = """
=========================== short test summary info ============================
FAILED tests/test_x.py::test_y - AssertionError: msg
FAILED tests/test_x.py::TestThing::test_z[a - b]
ERROR tests/test_db.py::test_conn - fixture 'db' not found
ERROR tests/test_broken.py - ModuleNotFoundError: No module named 'nope'
===== 2 failed, 3 passed, 1 skipped, 2 errors, 1 xfailed, 2 warnings in 0.12s =====
"""
    parsed = parse_summary(tail)
    assert parsed is not None
    assert parsed.counts == TestCounts(total=9, passed=3, failed=2, skipped=2, errors=2)
    assert parsed.failures == [
        Failure(name="tests/test_x.py::test_y", message="AssertionError: msg"),
        Failure(name="tests/test_x.py::TestThing::test_z[a - b]"),
        Failure(name="tests/test_db.py::test_conn", message="fixture 'db' not found"),
        Failure(name="tests/test_broken.py", message="ModuleNotFoundError: No module named 'nope'"),
    ]


@pytest.mark.parametrize(
    ("line", "counts"),
    [
        ("1 failed, 1 passed in 0.03s", TestCounts(total=2, passed=1, failed=1)),
        (
            "== 1 passed, 1 xpassed, 4 deselected in 65.32s (0:01:05) ==",
            TestCounts(total=2, passed=2),
        ),
        ("= 1 error in 0.10s =", TestCounts(total=1, errors=1)),
        ("=== no tests ran in 0.01s ===", TestCounts()),
        ("12 passed, 1 failed", TestCounts(total=13, passed=12, failed=1)),
        (
            "\x1b[31m==== \x1b[31m\x1b[1m1 failed\x1b[0m, \x1b[32m2 passed\x1b[0m"
            "\x1b[31m in 0.04s\x1b[0m\x1b[31m ====\x1b[0m",
            TestCounts(total=3, passed=2, failed=1),
        ),
    ],
)
def test_count_lines(line: str, counts: TestCounts) -> None:
    parsed = parse_summary(f"collected stuff\n{line}\n")
    assert parsed is not None
    assert parsed.counts == counts


def test_jest_tests_line_not_test_suites() -> None:
    tail = """
Test Suites: 1 failed, 2 passed, 3 total
Tests:       1 failed, 1 skipped, 1 todo, 3 passed, 6 total
Snapshots:   0 total
Time:        1.21 s
Ran all test suites.
"""
    parsed = parse_summary(tail)
    assert parsed is not None
    assert parsed.counts == TestCounts(total=6, passed=3, failed=1, skipped=2)


def test_unittest_failed() -> None:
    tail = """
======================================================================
FAIL: test_sub (tests.test_calc.CalcTest.test_sub)
----------------------------------------------------------------------
Traceback (most recent call last):
AssertionError: 1 != 2

======================================================================
ERROR: test_div (tests.test_calc.CalcTest)
----------------------------------------------------------------------
ZeroDivisionError: division by zero

----------------------------------------------------------------------
Ran 7 tests in 0.003s

FAILED (failures=1, errors=2, skipped=1)
"""
    parsed = parse_summary(tail)
    assert parsed is not None
    assert parsed.counts == TestCounts(total=7, passed=3, failed=1, skipped=1, errors=2)
    assert [f.name for f in parsed.failures] == [
        "tests.test_calc.CalcTest.test_sub",
        "tests.test_calc.CalcTest.test_div",
    ]


@pytest.mark.parametrize(
    ("end", "counts"),
    [
        ("OK", TestCounts(total=4, passed=4)),
        ("OK (skipped=1, expected failures=1)", TestCounts(total=4, passed=3, skipped=1)),
    ],
)
def test_unittest_ok(end: str, counts: TestCounts) -> None:
    parsed = parse_summary(f"....\n----\nRan 4 tests in 0.001s\n\n{end}\n")
    assert parsed is not None
    assert parsed.counts == counts


def test_an_ok_line_without_ran_is_not_a_summary() -> None:
    assert parse_summary("Checking dependencies...\nOK\n") is None


def test_go_test_verbose() -> None:
    tail = """=== RUN   TestAdd
--- PASS: TestAdd (0.00s)
=== RUN   TestSub
    calc_test.go:12: got 1 want 2
--- FAIL: TestSub (0.00s)
=== RUN   TestTable
    --- FAIL: TestTable/negative (0.00s)
    --- SKIP: TestTable/huge (0.00s)
--- FAIL: TestTable (0.00s)
FAIL
FAIL\texample.com/calc\t0.002s
ok  \texample.com/other\t(cached)
"""
    parsed = parse_summary(tail)
    assert parsed is not None
    assert parsed.counts == TestCounts(total=5, passed=1, failed=3, skipped=1)
    assert [f.name for f in parsed.failures] == ["TestSub", "TestTable/negative", "TestTable"]


def test_go_package_line_alone_is_recognised() -> None:
    parsed = parse_summary("ok  \texample.com/calc\t0.004s\n")
    assert parsed is not None
    assert parsed.counts == TestCounts()
    assert parsed.failures == []


def test_the_last_summary_wins() -> None:
    tail = """== 3 failed in 0.2s ==
Ran 2 tests in 0.001s

OK
== 1 failed, 4 passed in 0.1s =="""
    parsed = parse_summary(tail)
    assert parsed is not None
    assert parsed.counts == TestCounts(total=5, passed=4, failed=1)


def test_failures_without_a_summary_count_as_failed() -> None:
    parsed = parse_summary("FAILED tests/test_a.py::test_b - assert 0\n")
    assert parsed is not None
    assert parsed.counts == TestCounts(total=1, failed=1)


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "Building wheel...\nERROR Failed to connect to the database\nDone",
        "3 apples, 2 oranges",
        "Snapshots:   0 total",
        "Test Suites: 1 failed, 1 total",
    ],
)
def test_none_when_nothing_recognised(tail: str) -> None:
    assert parse_summary(tail) is None


# ---------------------------------------------------------------- a real pytest run


def test_real_pytest_run(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sample.py").write_text(
        "def test_ok():\n"
        "    assert 1 + 1 == 2\n\n\n"
        "def test_broken():\n"
        "    value = 3\n"
        '    assert value == 4, "widget count is off"\n'
    )
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", f"--junitxml={report}", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout.decode()
    splitter, tail = LineSplitter(), Tail()
    tail.extend(splitter.feed(proc.stdout) + splitter.flush())

    from_xml = parse_junit([report.read_text()])
    from_tail = parse_summary(tail.text())
    assert from_xml is not None
    assert from_tail is not None
    expected = TestCounts(total=2, passed=1, failed=1)
    assert from_xml.counts == expected
    assert from_tail.counts == expected

    [failure] = from_xml.failures
    assert failure.name == "tests.test_sample::test_broken"
    assert failure.message.startswith("AssertionError: widget count is off")
    assert 'assert value == 4, "widget count is off"' in failure.traceback
    assert from_xml.passed_names == {"tests.test_sample::test_ok"}
    assert from_tail.failures == [
        Failure(
            name="tests/test_sample.py::test_broken", message="AssertionError: widget count is off"
        )
    ]

"""`committee run`, `runs`, `show` and `demo` as a user runs them: real processes, real repos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from repos import git, make_repo

COMMITTEE = [sys.executable, "-m", "committee.cli"]
README = Path(__file__).parent.parent / "README.md"

PASSING_TEST = "def test_ok():\n    assert 1 + 1 == 2\n"
FAILING_TEST = "def test_math():\n    assert 1 + 1 == 3, 'arithmetic broke'\n"
PYTEST = 'python -m pytest -q -p no:cacheprovider --junitxml="$COMMITTEE_JUNIT"'


def committee(
    *args: str, cwd: Path, data_dir: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMITTEE, *args[:1], "--data-dir", str(data_dir), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, list[str]]:
    """Five commits: two good, the third breaks test_math, two more on top."""
    repo = tmp_path / "project"
    shas = make_repo(
        repo,
        [
            {"test_a.py": PASSING_TEST},
            {"README": "docs\n"},
            {"test_b.py": FAILING_TEST},
            {"README": "more docs\n"},
            {"other.txt": "x\n"},
        ],
    )
    return repo, shas


def run_json(repo: Path, data_dir: Path, *args: str) -> dict[str, object]:
    done = committee("run", "--json", *args, cwd=repo, data_dir=data_dir)
    assert done.returncode in (0, 1), done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    return document


def test_range_json_names_first_bad_commit_and_failing_test(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, shas = project
    done = committee(
        "run", "--json", "HEAD~4..HEAD", "--", PYTEST, cwd=repo, data_dir=tmp_path / "d"
    )
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["status"] == "failed"
    assert document["first_bad_commit"] == shas[2]
    results = document["results"]
    assert [r["commit"] for r in results] == shas[1:]  # A..B excludes A, oldest first
    assert [r["status"] for r in results] == ["passed", "failed", "failed", "failed"]
    bad = results[1]
    assert bad["tests"] == {"total": 2, "passed": 1, "failed": 1, "skipped": 0, "errors": 0}
    assert bad["failures"][0]["name"].endswith("test_math")
    assert "arithmetic broke" in bad["failures"][0]["message"]
    assert document["newly_failing"] == [bad["failures"][0]["name"]]
    assert set(results[0]) >= {"exit_code", "duration_s", "cached", "tests", "failures"}


def test_list_of_short_shas_and_names_keeps_given_order(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, shas = project
    git(repo, "tag", "v1", shas[1])
    document = run_json(repo, tmp_path / "d", "HEAD", shas[0][:7], "v1", "--", "true")
    assert [r["commit"] for r in document["results"]] == [shas[4], shas[0], shas[1]]  # type: ignore[index]
    assert [r["ref"] for r in document["results"]] == ["HEAD", shas[0][:7], "v1"]  # type: ignore[index]


@pytest.mark.parametrize("bad_ref", ["no-such-branch", "--upload-pack=touch /tmp/pwned", "-x"])
def test_unknown_or_option_like_commit_is_exit_2_and_runs_nothing(
    project: tuple[Path, list[str]], tmp_path: Path, bad_ref: str
) -> None:
    repo, _ = project
    data_dir = tmp_path / "d"
    marker = tmp_path / "ran"
    done = committee("run", "HEAD", bad_ref, "--", f"touch {marker}", cwd=repo, data_dir=data_dir)
    assert done.returncode == 2
    assert "error" in done.stderr
    assert not marker.exists()
    assert "no runs yet" in committee("runs", cwd=repo, data_dir=data_dir).stdout


def test_bad_repository_is_exit_2(tmp_path: Path) -> None:
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    done = committee(
        "run", "--repo", str(not_a_repo), "--", "true", cwd=tmp_path, data_dir=tmp_path / "d"
    )
    assert done.returncode == 2
    assert "git" in done.stderr.lower() and str(not_a_repo) in done.stderr


def test_run_from_a_subdirectory_tests_the_whole_repository(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, shas = project
    deep = repo / "src" / "pkg"
    deep.mkdir(parents=True)
    document = run_json(deep, tmp_path / "d", "HEAD~1", "HEAD", "--", "test -f test_b.py")
    assert [r["commit"] for r in document["results"]] == shas[3:]  # type: ignore[index]
    assert document["status"] == "passed"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = committee("run", "HEAD", "--", "true", cwd=outside, data_dir=tmp_path / "d")
    assert done.returncode == 2
    assert f"{outside} is not inside a git repository" in done.stderr and "--repo" in done.stderr


def test_a_forgotten_double_dash_says_where_the_command_goes(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, _ = project
    done = committee("run", "HEAD~2..HEAD", "pytest", "-q", cwd=repo, data_dir=tmp_path / "d")
    assert done.returncode == 2
    assert (
        "unexpected argument(s) '-q': put the test command after `--`, "
        "e.g. committee run HEAD~2..HEAD -- pytest -q"
    ) in done.stderr
    usage = committee("run", "--help", cwd=repo, data_dir=tmp_path / "d").stdout
    assert "[COMMIT ...] [-- COMMAND ...]" in usage


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_must_be_positive(project: tuple[Path, list[str]], tmp_path: Path, jobs: str) -> None:
    repo, _ = project
    done = committee("run", f"--jobs={jobs}", "HEAD", "--", "true", cwd=repo, data_dir=tmp_path)
    assert done.returncode == 2
    assert f"{jobs!r} is not a positive whole number" in done.stderr


def test_error_messages_keep_their_brackets(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, _ = project
    done = committee("run", "foo[bold]x", "--", "true", cwd=repo, data_dir=tmp_path / "d")
    assert done.returncode == 2 and "foo[bold]x" in done.stderr
    # As if lightkube were not installed: an install away, so bad input, and the extra is named.
    no_lightkube = "import sys; sys.modules['lightkube'] = None; from committee.cli import main; "
    done = subprocess.run(
        [sys.executable, "-c", no_lightkube + "sys.exit(main())", "run", "--data-dir",
         str(tmp_path / "d"), "--executor", "kubernetes", "HEAD", "--", "true"],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'committee[kubernetes]'" in done.stderr


def test_missing_command_is_exit_2(project: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, _ = project
    done = committee("run", "HEAD", cwd=repo, data_dir=tmp_path / "d")
    assert done.returncode == 2
    assert "no test command" in done.stderr


def test_exit_125_means_skipped(project: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, _ = project
    document = run_json(repo, tmp_path / "d", "HEAD~1", "HEAD", "--", "exit 125")
    assert [r["status"] for r in document["results"]] == ["skipped", "skipped"]  # type: ignore[index]
    assert document["status"] == "passed"


def test_cache_hit_then_no_cache(project: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, _ = project
    data_dir = tmp_path / "d"
    first = run_json(repo, data_dir, "HEAD~2..HEAD", "--", PYTEST)
    second = run_json(repo, data_dir, "HEAD~2..HEAD", "--", PYTEST)
    third = run_json(repo, data_dir, "--no-cache", "HEAD~2..HEAD", "--", PYTEST)
    assert [r["cached"] for r in first["results"]] == [False, False]  # type: ignore[index]
    assert [r["cached"] for r in second["results"]] == [True, True]  # type: ignore[index]
    assert [r["cached"] for r in third["results"]] == [False, False]  # type: ignore[index]
    assert second["results"][0]["failures"] == first["results"][0]["failures"]  # type: ignore[index]


def test_parallel_results_stay_in_given_order(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, shas = project
    # Older commits sleep longer, so they finish last.
    command = 'n=$(ls | wc -l); sleep "0.$((5 - n))"'
    document = run_json(
        repo,
        tmp_path / "d",
        "--jobs",
        "5",
        "HEAD~4",
        "HEAD~3",
        "HEAD~2",
        "HEAD~1",
        "HEAD",
        "--",
        command,
    )
    assert [r["commit"] for r in document["results"]] == shas  # type: ignore[index]


def test_timeout_reports_timeout(project: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, _ = project
    document = run_json(repo, tmp_path / "d", "--timeout", "1", "HEAD", "--", "sleep 30")
    result = document["results"][0]  # type: ignore[index]
    assert result["status"] == "timeout"
    assert result["duration_s"] < 15


def test_config_json_of_the_original_design(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, shas = project
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "ws_url": "ws://127.0.0.1:9/ws",
                "repo_url": str(repo),
                "user_id": 42,
                "chat_id": 7,
                "project_type": "python",
                "test_command": PYTEST,
                "commits": ["HEAD~3", "HEAD~2"],
            }
        )
    )
    done = committee(
        "run", "--json", "--config", str(config), cwd=tmp_path, data_dir=tmp_path / "d"
    )
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert [r["commit"] for r in document["results"]] == [shas[1], shas[2]]
    assert document["first_bad_commit"] == shas[2]
    # Flags win over the file.
    override = committee(
        "run", "--json", "--config", str(config), "HEAD~4", cwd=tmp_path, data_dir=tmp_path / "d"
    )
    assert json.loads(override.stdout)["results"][0]["commit"] == shas[0]
    config.write_text('{"repo_url": "x", "test_comand": "typo"}')
    bad = committee("run", "--config", str(config), cwd=tmp_path, data_dir=tmp_path / "d")
    assert bad.returncode == 2 and "test_comand" in bad.stderr


def test_runs_and_show_log_keep_everything(project: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, shas = project
    data_dir = tmp_path / "d"
    document = run_json(
        repo, data_dir, "HEAD", "--", "for i in $(seq 1 500); do echo line-$i; done; echo oops >&2"
    )
    run_id = str(document["run_id"])
    listing = committee("runs", "--json", cwd=repo, data_dir=data_dir)
    assert [r["run_id"] for r in json.loads(listing.stdout)] == [run_id]
    log = committee("show", run_id, "--log", shas[4][:8], cwd=repo, data_dir=data_dir)
    lines = log.stdout.splitlines()
    assert [x for x in lines if x.startswith("line-")] == [f"line-{i}" for i in range(1, 501)]
    assert "oops" in lines
    by_name = committee("show", run_id, "--log", "HEAD", cwd=repo, data_dir=data_dir)
    assert by_name.returncode == 0 and by_name.stdout == log.stdout  # the name it was given
    unknown = committee("show", run_id, "--log", "main", cwd=repo, data_dir=data_dir)
    assert unknown.returncode == 2 and "a name the run was given (HEAD)" in unknown.stderr
    missing = committee("show", "0" * 16, cwd=repo, data_dir=data_dir)
    assert missing.returncode == 2 and f"no run {'0' * 16}" in missing.stderr
    shown = json.loads(committee("show", run_id, "--json", cwd=repo, data_dir=data_dir).stdout)
    assert shown["status"] == "passed" and shown["results"][0]["commit"] == shas[4]


def test_hundred_megabytes_of_output_is_capped_visibly(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, shas = project
    data_dir = tmp_path / "d"
    command = "head -c 100000000 /dev/zero | tr '\\0' 'a' | fold -w 99; echo done"
    document = run_json(repo, data_dir, "--log-cap", "1000000", "HEAD", "--", command)
    assert document["results"][0]["status"] == "passed"  # type: ignore[index]
    log = committee("show", str(document["run_id"]), "--log", shas[4], cwd=repo, data_dir=data_dir)
    lines = log.stdout.splitlines()
    assert len(lines) == 10_000 + 1  # 1 MB of 100-byte lines, then the notice
    assert "log truncated" in lines[-1] and "1000000 byte cap" in lines[-1]


def test_binary_output_does_not_break_capture(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, shas = project
    data_dir = tmp_path / "d"
    command = "head -c 300000 /dev/urandom; printf '\\nbar\\r50%%\\r100%%\\n'"
    document = run_json(repo, data_dir, "HEAD", "--", command)
    assert document["results"][0]["status"] == "passed"  # type: ignore[index]
    log = committee("show", str(document["run_id"]), "--log", shas[4], cwd=repo, data_dir=data_dir)
    assert log.stdout.splitlines()[-1] == "100%"


def signalled_run(repo: Path, data_dir: Path, signum: int, *commits: str) -> str:
    """Start `committee run ... -- sleep 60`, wait until its commits run, send `signum`;
    return what it printed on stderr."""
    argv = [*COMMITTEE, "run", "--data-dir", str(data_dir), *commits, "--", "sleep 60"]
    process = subprocess.Popen(
        argv, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(200):  # until the run is recorded
            listing = committee("runs", "--json", cwd=repo, data_dir=data_dir)
            if listing.returncode == 0 and json.loads(listing.stdout):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # and its commits have started
        process.send_signal(signum)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == (130 if signum != signal.SIGKILL else -signal.SIGKILL)
    return err


def stored_runs(repo: Path, data_dir: Path) -> list[dict[str, object]]:
    runs: list[dict[str, object]] = json.loads(
        committee("runs", "--json", cwd=repo, data_dir=data_dir).stdout
    )
    return runs


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_is_recorded_as_cancelled(
    project: tuple[Path, list[str]], tmp_path: Path, signum: int
) -> None:
    repo, _ = project
    data_dir = tmp_path / "d"
    err = signalled_run(repo, data_dir, signum, "HEAD~1", "HEAD")
    assert "interrupted: the run was cancelled" in err
    (run,) = stored_runs(repo, data_dir)
    assert run["status"] == "cancelled"
    assert run["counts"] == {"cancelled": 2}


def test_a_killed_run_is_closed_by_the_next_run_and_not_rerun(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, _ = project
    data_dir = tmp_path / "d"
    signalled_run(repo, data_dir, signal.SIGKILL, "HEAD")  # no chance to record anything
    (killed,) = stored_runs(repo, data_dir)
    assert killed["status"] == "running"
    run_json(repo, data_dir, "HEAD", "--", "true")
    closed = next(r for r in stored_runs(repo, data_dir) if r["run_id"] == killed["run_id"])
    assert closed["status"] == "cancelled"
    assert closed["counts"] == {"cancelled": 1}


def test_output_cut_short_by_a_pipe_is_not_an_error(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, _ = project
    data_dir = tmp_path / "d"
    document = run_json(repo, data_dir, "HEAD", "--", "seq 1 200000")
    argv = [
        *COMMITTEE,
        "show",
        "--data-dir",
        str(data_dir),
        str(document["run_id"]),
        "--log",
        "HEAD",
    ]
    done = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -n 1', "_", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "1\n"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.returncode == 0


def test_demo_finds_its_regression(tmp_path: Path) -> None:
    done = committee("demo", cwd=tmp_path, data_dir=tmp_path / "d", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "first bad commit" in done.stdout
    assert "Simplify the stock filter" in done.stdout
    assert "test_in_stock_filter_hides_sold_out_items" in done.stdout


def readme_block(heading: str) -> list[str]:
    """The lines of the first shell block after `heading` in README.md, without comments."""
    block = README.read_text().split(heading, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].rstrip() for line in block.splitlines()]


def test_the_readme_server_example_works_as_written(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Its token, serve and submit lines, run by a shell as they are (on a free port), from a
    subdirectory of the repository."""
    repo, shas = project
    port = str(free_port())
    token, serve, submit = (
        line.replace("8080", port) for line in readme_block("## The server")[:3]
    )
    wait = f"until (echo > /dev/tcp/127.0.0.1/{port}) 2>/dev/null; do sleep 0.1; done"
    script = "\n".join([token, serve, "trap 'kill $!' EXIT", wait, submit])
    (repo / "sub").mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "COMMITTEE_DATA_DIR": str(tmp_path / "server-data"),
    }
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=repo / "sub", env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = shell.communicate(timeout=120)
    finally:
        if shell.returncode is None:
            os.killpg(shell.pid, signal.SIGTERM)  # the shell and the server it started
    assert shell.returncode == 1, err  # HEAD~3..HEAD holds the commit that breaks test_math
    assert "committee summary" in out and shas[2][:10] in out and shas[1][:10] not in out

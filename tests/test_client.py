"""The reconnecting client and `committee submit / watch / token`, against a real server on
127.0.0.1 (in a thread, scripted executor) — through a TCP proxy when connections must break."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from committee.cli import main
from committee.client import stream_run
from committee.errors import AuthError, CommitteeError, UnknownCommit
from committee.executors.fake import FakeExecutor, FakeStep
from committee.messages import AnyRunEvent, RunFinished, Submit, Subscribe
from conftest import Proxy, RunningServer, ServerFactory, free_port
from repos import numbered_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    numbered_repo(path, 5)
    return path


def scripted(delay_s: float = 0.0) -> FakeExecutor:
    """Commits fail when the command says "fail"; each prints one line."""
    return FakeExecutor(
        lambda job: FakeStep(
            lines=(f"testing {job.commit[:7]}",),
            delay_s=delay_s,
            exit_code=1 if "fail" in job.command else 0,
        )
    )


def submission(repo: Path, commits: list[str], command: str = "pytest") -> Submit:
    return Submit(repo_url=str(repo), commits=commits, test_command=command)


async def collect(
    events: object, cut_after: int = 0, proxy: Proxy | None = None
) -> list[AnyRunEvent]:
    seen: list[AnyRunEvent] = []
    async for event in events:  # type: ignore[attr-defined]
        seen.append(event)
        if proxy is not None and len(seen) == cut_after:
            proxy.cut()
    return seen


async def test_stream_run_reconnects_after_a_cut_and_misses_nothing(
    start_server: ServerFactory, repo: Path, proxy_to: Callable[[int], Awaitable[Proxy]]
) -> None:
    server = start_server(scripted(0.1), max_concurrent=1)
    token = await server.token("alice")
    proxy = await proxy_to(server.port)
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    events = stream_run(url, token, submission(repo, ["HEAD~4..HEAD"]), backoff_s=0.05)
    seen = await collect(events, cut_after=5, proxy=proxy)
    assert proxy.connections >= 2
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert isinstance(seen[-1], RunFinished) and seen[-1].status.value == "passed"
    replay = stream_run(server.ws_url, token, Subscribe(run_id=seen[0].run_id))
    assert await collect(replay) == seen


async def test_a_refused_token_is_an_auth_error_at_once(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server()
    started = time.monotonic()
    with pytest.raises(AuthError):
        await collect(stream_run(server.ws_url, "cmt_wrong", submission(repo, ["HEAD"])))
    assert time.monotonic() - started < 2  # not retried


async def test_an_error_event_raises_what_it_stands_for(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(auth=False)
    with pytest.raises(UnknownCommit, match="no-such-ref"):
        await collect(stream_run(server.ws_url, None, submission(repo, ["no-such-ref"])))


async def test_no_server_at_all_fails_at_once_without_retrying() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    started = time.monotonic()
    with pytest.raises(CommitteeError, match=r"cannot connect to .*: is `committee serve` running"):
        await collect(stream_run(url, None, Subscribe(run_id="0123456789abcdef")))
    assert time.monotonic() - started < 2


async def test_retries_are_bounded_once_a_connected_server_goes_away(
    start_server: ServerFactory, repo: Path, proxy_to: Callable[[int], Awaitable[Proxy]]
) -> None:
    server = start_server(scripted(5.0), auth=False)
    proxy = await proxy_to(server.port)
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    events = stream_run(url, None, submission(repo, ["HEAD"]), retries=2, backoff_s=0.01)
    with pytest.raises(CommitteeError, match=r"gave up .* after 2 retries"):
        async for _ in events:
            await proxy.aclose()  # connected once: then the server vanishes
    assert proxy.connections == 1


# ---------------------------------------------------------------- the commands


def run_cli(*argv: str) -> int:
    return main(list(argv))


def test_submit_shows_the_run_and_exits_like_run(
    start_server: ServerFactory,
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = start_server(scripted())
    token = create_token(server, "alice", capsys)
    monkeypatch.setenv("COMMITTEE_TOKEN", token)
    base = ("submit", "--server", server.ws_url, "--repo", str(repo), "--json")
    assert run_cli(*base, "HEAD~1", "HEAD", "--", "pytest -q") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "passed" and len(summary["results"]) == 2
    assert run_cli(*base, "HEAD", "--", "fail") == 1
    assert json.loads(capsys.readouterr().out)["status"] == "failed"
    assert run_cli(*base, "no-such-ref", "--", "pytest") == 2
    assert "no-such-ref" in capsys.readouterr().err


def test_submit_reads_the_server_from_config_json(
    start_server: ServerFactory,
    repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = start_server(scripted(), auth=False)
    config = tmp_path / "config.json"
    fields = {"repo_url": str(repo), "commits": "HEAD~2 HEAD", "test_command": "pytest"}
    config.write_text(json.dumps({**fields, "ws_url": server.ws_url, "user_id": 42}))
    assert run_cli("submit", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "committee summary" in out and "no commit broke" in out


def test_watch_attaches_to_a_run_submitted_elsewhere(
    start_server: ServerFactory, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(scripted(0.2))
    token = create_token(server, "bob", capsys)
    body = {"repo_url": str(repo), "commits": ["HEAD~1", "HEAD"], "test_command": "fail"}
    created = httpx.post(f"{server.http_url}/api/runs", json=body, params={"token": token})
    run_id = created.json()["run_id"]
    assert run_cli("watch", run_id, "--server", server.ws_url, "--token", token, "--json") == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["run_id"] == run_id and summary["status"] == "failed"
    other = create_token(server, "eve", capsys)
    assert run_cli("watch", run_id, "--server", server.ws_url, "--token", other) == 2
    assert f"no run {run_id}" in capsys.readouterr().err
    assert run_cli("watch", "0" * 16, "--server", server.ws_url, "--token", token) == 2


def test_token_commands_create_list_and_revoke(
    start_server: ServerFactory, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(scripted())
    data_dir = ("--data-dir", str(server.settings.data_dir))
    token = create_token(server, "carol", capsys, label="laptop")
    assert run_cli("token", "list", "--json", *data_dir) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["user_id"] == "carol" and listed["label"] == "laptop"
    assert not listed["revoked_at"] and token not in json.dumps(listed)
    submit = ("submit", "--server", server.ws_url, "--token", token, "--repo", str(repo), "HEAD")
    assert run_cli(*submit, "--", "pytest") == 0
    assert run_cli("token", "revoke", listed["token_id"], *data_dir) == 0
    assert run_cli("token", "revoke", listed["token_id"], *data_dir) == 2  # nothing left
    capsys.readouterr()
    assert run_cli(*submit, "--", "pytest") == 2
    assert "refused the token of --token: it is unknown or revoked" in capsys.readouterr().err


def test_a_missing_token_names_the_flag_and_the_variable(
    start_server: ServerFactory,
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("COMMITTEE_TOKEN", raising=False)
    server = start_server(scripted())
    assert run_cli("submit", "--server", server.ws_url, "--repo", str(repo), "--", "t") == 2
    err = capsys.readouterr().err
    assert "give --token TOKEN or set $COMMITTEE_TOKEN" in err
    assert "Authorization" not in err
    monkeypatch.setenv("COMMITTEE_TOKEN", "cmt_wrong")
    assert run_cli("watch", "0" * 16, "--server", server.ws_url) == 2
    assert "refused the token of $COMMITTEE_TOKEN" in capsys.readouterr().err


def test_a_server_url_without_a_path_means_its_ws_endpoint(
    start_server: ServerFactory, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(scripted(), auth=False)
    bare = f"ws://127.0.0.1:{server.port}"
    assert run_cli("submit", "--server", bare, "--repo", str(repo), "--json", "--", "t") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "passed"


def test_no_server_listening_is_one_clear_error_at_once(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    started = time.monotonic()
    assert run_cli("submit", "--server", url, "--repo", str(repo), "--", "pytest") == 1
    assert time.monotonic() - started < 2
    err = capsys.readouterr().err
    assert f"cannot connect to {url}: is `committee serve` running there?" in err
    assert "resuming" not in err


def test_submit_without_dashes_says_where_the_command_goes(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("submit", "--server", "ws://127.0.0.1:9/ws", "--repo", str(repo), "HEAD", "pytest")
    assert run_cli(*argv, "-q") == 2
    assert (
        "unexpected argument(s) '-q': put the test command after `--`, "
        "e.g. committee submit HEAD~2..HEAD -- pytest -q"
    ) in capsys.readouterr().err


def test_submit_without_a_server_is_bad_input(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("submit", "--repo", str(repo), "HEAD", "--", "pytest") == 2
    assert "--server" in capsys.readouterr().err


def test_ctrl_c_leaves_the_run_on_the_server_and_cancel_stops_it(
    start_server: ServerFactory, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(scripted(30.0))
    token = create_token(server, "alice", capsys)
    server_options = ("--server", server.ws_url, "--token", token)
    argv = [sys.executable, "-m", "committee.cli", "submit", *server_options, "--repo", str(repo)]
    process = subprocess.Popen(
        [*argv, "HEAD~1", "HEAD", "--", "pytest"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        assert select.select([process.stdout], [], [], 20)[0], "no output from submit"
        first_line = process.stdout.readline()
        run_id = first_line.split()[1].rstrip(":")  # "run ID: 2 commit(s) of ..."
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130
    assert f"the run goes on on the server: `committee watch {run_id}` to follow it" in err
    assert f"`committee cancel {run_id}` to stop it" in err
    api = f"{server.http_url}/api/runs/{run_id}"
    assert httpx.get(api, params={"token": token}).json()["status"] == "running"
    assert run_cli("cancel", run_id, *server_options) == 0
    assert capsys.readouterr().out == f"run {run_id} cancelled\n"
    assert httpx.get(api, params={"token": token}).json()["status"] == "cancelled"
    assert run_cli("cancel", run_id, *server_options) == 1
    assert "had already finished" in capsys.readouterr().out


def test_cancel_of_an_unknown_or_someone_elses_run_is_bad_input(
    start_server: ServerFactory, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(scripted(30.0))
    owner = create_token(server, "alice", capsys)
    body = {"repo_url": str(repo), "test_command": "pytest"}
    run_id = httpx.post(f"{server.http_url}/api/runs", json=body, params={"token": owner}).json()[
        "run_id"
    ]
    other = create_token(server, "eve", capsys)
    for run, token in ((run_id, other), ("0" * 16, owner)):
        assert run_cli("cancel", run, "--server", server.ws_url, "--token", token) == 2
        assert f"no run {run}" in capsys.readouterr().err
    assert run_cli("cancel", run_id, "--server", f"ws://127.0.0.1:{free_port()}") == 1
    assert "is `committee serve` running there?" in capsys.readouterr().err
    assert run_cli("cancel", run_id, "--server", server.ws_url, "--token", owner) == 0


def create_token(
    server: RunningServer, user: str, capsys: pytest.CaptureFixture[str], label: str = ""
) -> str:
    data_dir = str(server.settings.data_dir)
    assert run_cli("token", "create", user, "--label", label, "--data-dir", data_dir) == 0
    return capsys.readouterr().out.strip()

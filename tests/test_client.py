"""The reconnecting client and `committee submit / watch / token`, against a real server on
127.0.0.1 (in a thread, scripted executor) — through a TCP proxy when connections must break."""

from __future__ import annotations

import json
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


async def test_retries_are_bounded_when_no_server_answers(repo: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    events = stream_run(url, None, Subscribe(run_id="0123456789abcdef"), retries=2, backoff_s=0.01)
    with pytest.raises(CommitteeError, match=r"gave up .* after 2 retries"):
        await collect(events)


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
    assert run_cli("watch", run_id, "--server", server.ws_url, "--token", other) == 1
    assert f"no run {run_id}" in capsys.readouterr().err


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
    assert run_cli("token", "revoke", listed["token_id"], *data_dir) == 1  # nothing left
    capsys.readouterr()
    assert run_cli(*submit, "--", "pytest") == 1
    assert "refused the token" in capsys.readouterr().err


def test_submit_without_a_server_is_bad_input(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("submit", "--repo", str(repo), "HEAD", "--", "pytest") == 2
    assert "--server" in capsys.readouterr().err


def create_token(
    server: RunningServer, user: str, capsys: pytest.CaptureFixture[str], label: str = ""
) -> str:
    data_dir = str(server.settings.data_dir)
    assert run_cli("token", "create", user, "--label", label, "--data-dir", data_dir) == 0
    return capsys.readouterr().out.strip()

"""Restart safety, for real: `committee serve` as a subprocess with the local executor, killed
with SIGKILL mid-run and started again on the same port and data dir."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from committee.client import stream_run
from committee.messages import (
    AnyRunEvent,
    CommitFinished,
    CommitLog,
    CommitStarted,
    RunFinished,
    Submit,
)
from committee.store import Store
from conftest import free_port
from repos import numbered_repo

COMMAND = "echo start; sleep 2; echo ok"
START_TIMEOUT_S = 20.0


def serve_command(data_dir: Path, port: int, *extra: str) -> list[str]:
    script = "import sys; from committee.cli import main; sys.exit(main())"
    return [
        sys.executable,
        "-c",
        script,
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--allow-local-repos",
        *extra,
    ]


async def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(int(START_TIMEOUT_S / 0.1)):
            assert process.poll() is None, "the server exited"
            try:
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the server did not come up")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, log_name: str = "server.log") -> subprocess.Popen[bytes]:
        with (tmp_path / log_name).open("wb") as log:
            process = subprocess.Popen(list(argv), stdout=log, stderr=log)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def is_commit_log(event: AnyRunEvent, commit: str, text: str) -> bool:
    return isinstance(event, CommitLog) and event.commit == commit and text in event.lines


async def test_kill_9_mid_run_then_restart_loses_nothing(
    tmp_path: Path, servers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    repo, data_dir, port = tmp_path / "repo", tmp_path / "data", free_port()
    shas = numbered_repo(repo, 2)
    data_dir.mkdir()
    store = await Store.open(data_dir / "committee.db")
    token = await store.create_token("alice")
    await store.aclose()
    argv = serve_command(
        data_dir, port, "--executor", "local", "--max-concurrent", "1", "--log-json"
    )
    first = servers(*argv, log_name="first.log")
    await wait_healthy(port, first)

    request = Submit(repo_url=str(repo), commits=shas, test_command=COMMAND, no_cache=True)
    events: list[AnyRunEvent] = []
    async for event in stream_run(
        f"ws://127.0.0.1:{port}/ws", token, request, backoff_s=0.1, retries=12
    ):
        events.append(event)
        if is_commit_log(event, shas[1], "start") and first.poll() is None:
            first.kill()  # SIGKILL: no shutdown, no flush, mid-commit
            first.wait(timeout=10)
            servers(*argv, log_name="second.log")

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status.value == "passed"
    started = [e.commit for e in events if isinstance(e, CommitStarted)]
    assert started == [shas[0], shas[1], shas[1]]  # the finished commit was not run again
    assert [e.commit for e in events if isinstance(e, CommitFinished)] == shas
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", params={"token": token}
    ) as http:
        logs = [
            (await http.get(f"/api/runs/{finished.run_id}/commits/{sha}/log")).text for sha in shas
        ]
    assert logs[0].splitlines() == ["start", "ok"]
    lines = logs[1].splitlines()
    assert lines[0] == "start" and lines[-2:] == ["start", "ok"]  # before and after the kill
    assert any("restarted" in line for line in lines)
    logged = [
        json.loads(line)["event"] for line in (tmp_path / "first.log").read_text().splitlines()
    ]
    assert {"server starting", "server ready", "client connected", "run accepted"} <= set(logged)


async def test_serve_without_auth_warns(
    tmp_path: Path, servers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    process = servers(*serve_command(tmp_path / "data", port, "--no-auth", "--executor", "local"))
    await wait_healthy(port, process)
    async with httpx.AsyncClient() as http:
        listed = await http.get(f"http://127.0.0.1:{port}/api/runs")
    assert listed.status_code == 200 and listed.json() == []
    assert "authentication is off" in (tmp_path / "server.log").read_text()

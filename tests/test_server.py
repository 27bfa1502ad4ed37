"""The server over a real socket: a uvicorn server on 127.0.0.1 in a thread, real WebSocket and
HTTP clients, real git repositories and SQLite; only the executor is scripted."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from committee.executors import Emit, Job, Outcome
from committee.executors.fake import FakeExecutor, FakeStep
from committee.messages import CLOSE_TOO_SLOW, CLOSE_UNAUTHORIZED, MAX_FRAME_BYTES, json_schema
from committee.server import WEB_DIR
from conftest import RunningServer, ServerFactory
from repos import numbered_repo

Json = dict[str, Any]
RECV_TIMEOUT_S = 10.0
SCHEMA_FILE = Path(__file__).parent.parent / "docs" / "protocol.schema.json"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    numbered_repo(path, 6)
    return path


def submit(repo: Path | str, commits: list[str], **extra: object) -> str:
    message = {"type": "submit", "repo_url": str(repo), "commits": commits, "test_command": "t"}
    return json.dumps({**message, **extra})


def slow(delay_s: float) -> FakeExecutor:
    return FakeExecutor(lambda job: FakeStep(lines=(f"testing {job.commit[:7]}",), delay_s=delay_s))


def connect_as(server: RunningServer, token: str | None = None, **options: Any) -> connect:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(server.ws_url, additional_headers=headers, **options)


async def recv(websocket: ClientConnection) -> Json:
    message: Json = json.loads(await asyncio.wait_for(websocket.recv(), RECV_TIMEOUT_S))
    return message


async def recv_type(websocket: ClientConnection, kind: str, limit: int = 1000) -> Json:
    for _ in range(limit):
        message = await recv(websocket)
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} in {limit} messages")


async def run_events(websocket: ClientConnection, limit: int = 5000) -> list[Json]:
    """Run events up to run.finished, skipping acknowledgements."""
    events: list[Json] = []
    for _ in range(limit):
        message = await recv(websocket)
        assert message["type"] != "error", message
        if "seq" in message:
            events.append(message)
            if message["type"] == "run.finished":
                return events
    raise AssertionError("no run.finished")


def seqs(events: list[Json]) -> list[int]:
    return [event["seq"] for event in events]


# ---------------------------------------------------------------- streaming


async def test_submit_streams_live_events_up_to_run_finished(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(slow(0.05))
    token = await server.token("alice")
    async with connect_as(server, token) as websocket:
        await websocket.send(submit(repo, ["HEAD~3..HEAD"], user_id="mallory"))
        ack = await recv(websocket)
        events = await run_events(websocket)
    assert ack["type"] == "subscribed" and ack["after_seq"] == 0
    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run.accepted" and events[0]["run_id"] == ack["run_id"]
    assert events[0]["user_id"] == "alice"  # from the token, whatever the message claimed
    logs = [line for e in events if e["type"] == "commit.log" for line in e["lines"]]
    assert len([line for line in logs if line.startswith("testing ")]) == 3
    assert events[-1]["status"] == "passed" and len(events[-1]["results"]) == 3


async def test_two_clients_on_one_run_see_the_same_events(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(slow(0.2), auth=False)
    async with connect_as(server) as first, connect_as(server) as second:
        await first.send(submit(repo, ["HEAD~2..HEAD"]))
        run_id = (await recv(first))["run_id"]
        await second.send(json.dumps({"type": "subscribe", "run_id": run_id}))
        seen = await asyncio.gather(run_events(first), run_events(second))
    assert seen[0] == seen[1]
    assert seqs(seen[0]) == list(range(1, len(seen[0]) + 1))


async def test_resume_after_a_forced_disconnect_has_no_gap_and_no_duplicate(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(slow(0.15), auth=False, max_concurrent=1)
    async with connect_as(server) as websocket:
        await websocket.send(submit(repo, ["HEAD~4..HEAD"]))
        run_id = (await recv(websocket))["run_id"]
        before = [await recv(websocket) for _ in range(7)]
        websocket.transport.abort()  # no close handshake: as a network failure
    await asyncio.sleep(0.3)  # events keep coming while nobody watches
    async with connect_as(server) as websocket:
        resume = {"type": "subscribe", "run_id": run_id, "after_seq": before[-1]["seq"]}
        await websocket.send(json.dumps(resume))
        after = await run_events(websocket)
    events = before + after
    assert seqs(events) == list(range(1, len(events) + 1))
    assert after[-1]["status"] == "passed"
    async with connect_as(server) as websocket:  # the whole run, replayed from the store
        await websocket.send(json.dumps({"type": "subscribe", "run_id": run_id}))
        assert await run_events(websocket) == events


async def test_finished_run_replays_from_after_seq(start_server: ServerFactory, repo: Path) -> None:
    server = start_server(auth=False)
    async with connect_as(server) as websocket:
        await websocket.send(submit(repo, ["HEAD~1", "HEAD"]))
        events = await run_events(websocket)
        await websocket.send(
            json.dumps({"type": "subscribe", "run_id": events[0]["run_id"], "after_seq": 3})
        )
        assert (await recv(websocket))["after_seq"] == 3
        assert await run_events(websocket) == events[3:]


# ---------------------------------------------------------------- scheduling


async def test_cancel_stops_running_commits_and_drops_queued_ones(
    start_server: ServerFactory, repo: Path
) -> None:
    executor = slow(30)
    server = start_server(executor, auth=False, max_concurrent=1)
    async with connect_as(server) as websocket:
        await websocket.send(submit(repo, ["HEAD~3..HEAD"]))
        run_id = (await recv(websocket))["run_id"]
        await recv_type(websocket, "commit.started")
        await websocket.send(json.dumps({"type": "cancel", "run_id": run_id}))
        events = await run_events(websocket)
    finished = events[-1]
    assert finished["status"] == "cancelled"
    assert [r["status"] for r in finished["results"]] == ["cancelled"] * 3
    assert len(executor.started) == 1 and executor.cancelled == [executor.started[0].job_id]


@dataclass
class Gated(FakeExecutor):
    """Jobs wait for the gate: the test decides when the first commit may end."""

    gate: threading.Event = field(default_factory=threading.Event)

    async def run(self, job: Job, emit: Emit) -> Outcome:
        for _ in range(1000):
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        return await super().run(job, emit)


async def test_one_users_long_run_does_not_starve_anothers_single_commit(
    start_server: ServerFactory, repo: Path
) -> None:
    executor = Gated()
    server = start_server(executor, max_concurrent=1)
    alice, bob = await server.token("alice"), await server.token("bob")
    async with connect_as(server, alice) as long_run, connect_as(server, bob) as short_run:
        await long_run.send(submit(repo, ["HEAD~5..HEAD"]))
        await recv_type(long_run, "commit.started")
        await short_run.send(submit(repo, ["HEAD~5"]))
        await recv_type(short_run, "subscribed")  # bob's commit is queued behind alice's five
        executor.gate.set()
        bob_finished = (await run_events(short_run))[-1]
        alice_finished = (await run_events(long_run))[-1]
    assert bob_finished["status"] == "passed" and alice_finished["status"] == "passed"
    order = [job.user_id for job in executor.started]
    assert len(order) == 6 and order[0] == "alice"
    assert order.index("bob") <= 2, order  # in arrival order it would have been last (5)


# ---------------------------------------------------------------- auth


async def test_another_users_token_cannot_subscribe_or_cancel(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(slow(0.5))
    alice, bob = await server.token("alice"), await server.token("bob")
    async with connect_as(server, alice) as owner:
        await owner.send(submit(repo, ["HEAD"]))
        run_id = (await recv(owner))["run_id"]
        async with connect_as(server, bob) as other:
            for kind in ("subscribe", "cancel"):
                await other.send(json.dumps({"type": kind, "run_id": run_id}))
                refused = await recv(other)
                assert refused == {
                    "type": "error",
                    "code": "not_found",
                    "message": f"no run {run_id}",
                    "run_id": run_id,
                }
                await other.send(json.dumps({"type": kind, "run_id": "0123456789abcdef"}))
                assert (await recv(other))["code"] == "not_found"  # same answer as a missing run
        assert (await run_events(owner))[-1]["status"] == "passed"  # bob's cancel did nothing
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        bobs = {"Authorization": f"Bearer {bob}"}
        assert (await http.get(f"/api/runs/{run_id}", headers=bobs)).status_code == 404
        assert (await http.post(f"/api/runs/{run_id}/cancel", headers=bobs)).status_code == 404
        assert (await http.get("/api/runs", headers=bobs)).json() == []
        mine = await http.get("/api/runs", params={"token": alice})
        assert [run["run_id"] for run in mine.json()] == [run_id]


@pytest.mark.parametrize("token", [None, "cmt_not-a-real-token", "revoked"])
async def test_websocket_without_a_valid_token_is_closed_unauthorized(
    start_server: ServerFactory, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    if token == "revoked":
        token = await server.token("carol")
        async with connect_as(server, token) as websocket:  # works before the revocation
            await websocket.send('{"type": "ping"}')
            assert (await recv(websocket))["type"] == "pong"
        await revoke(server, token)
    async with connect_as(server, token) as websocket:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(websocket)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_UNAUTHORIZED
    assert any(record.getMessage() == "auth failure" for record in caplog.records)


async def revoke(server: RunningServer, token: str) -> None:
    from committee.store import Store

    store = await Store.open(server.settings.db_path)
    try:
        assert await store.revoke_token(token) == 1
    finally:
        await store.aclose()


async def test_revoking_a_token_closes_its_open_connections(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(slow(30), token_check_s=0.1)
    token, other = await server.token("erin"), await server.token("erin")
    async with connect_as(server, token) as revoked, connect_as(server, other) as kept:
        await revoked.send(submit(repo, ["HEAD"]))
        run_id = (await recv(revoked))["run_id"]
        await server.revoke(token)
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(1000):
                await recv(revoked)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_UNAUTHORIZED
        # The user's other token, and the run itself, carry on.
        await kept.send(json.dumps({"type": "ping"}))
        assert (await recv(kept))["type"] == "pong"
        await kept.send(json.dumps({"type": "subscribe", "run_id": run_id}))
        await kept.send(json.dumps({"type": "cancel", "run_id": run_id}))
        assert (await run_events(kept))[-1]["status"] == "cancelled"


async def test_http_needs_a_token_except_health_and_the_page(start_server: ServerFactory) -> None:
    server = start_server()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        refused = await http.get("/api/runs")
        health = await http.get("/health")
        page = await http.get("/runs/0123456789abcdef")
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert health.status_code == 200
    assert health.json()["executor"] == "fake" and health.json()["version"]
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


async def test_the_dashboard_is_served_from_the_package(start_server: ServerFactory) -> None:
    server = start_server()
    script = sorted(WEB_DIR.glob("*.js"))[0]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        home, page = await http.get("/"), await http.get("/runs/0123456789abcdef")
        served = await http.get(f"/static/{script.name}")
        missing = await http.get("/static/no-such-file.js")
    assert home.text == page.text == (WEB_DIR / "index.html").read_text()
    assert served.status_code == 200 and served.content == script.read_bytes()
    assert missing.status_code == 404


# ---------------------------------------------------------------- bad input


def bad_messages(repo: Path, tmp_path: Path, run_id: str) -> list[tuple[str | bytes, str]]:
    not_git = tmp_path / "not-git"
    not_git.mkdir()
    return [
        ("{not json", "bad_request"),
        ("[]", "bad_request"),
        ('"submit"', "bad_request"),
        ('{"type": "launch"}', "bad_request"),
        ('{"run_id": "x"}', "bad_request"),
        ('{"type": "submit"}', "bad_request"),
        ('{"type": "subscribe", "run_id": 7}', "bad_request"),
        ('{"type": "subscribe", "run_id": "x", "after_seq": -1}', "bad_request"),
        (json.dumps({"type": "subscribe", "run_id": run_id, "after_seq": 10_000}), "bad_request"),
        ('{"type": "ping", "extra": 1}', "bad_request"),
        (b'{"type": "ping"}', "bad_request"),
        (submit(repo, ["HEAD"], colour="red"), "bad_request"),
        (submit(repo, ["no-such-branch"]), "unknown_commit"),
        (submit(repo, ["--output=/tmp/owned"]), "bad_request"),
        (submit(not_git, ["HEAD"]), "bad_repository"),
        (submit(Path("/nonexistent/repo"), ["HEAD"]), "bad_repository"),
        (
            json.dumps(
                {"type": "submit", "repo_url": "http://127.0.0.1:9/x.git", "test_command": "t"}
            ),
            "bad_repository",
        ),
        (
            json.dumps({"type": "submit", "repo_url": "-oProxyCommand=x", "test_command": "t"}),
            "bad_repository",
        ),
        ('{"type": "subscribe", "run_id": "0123456789abcdef"}', "not_found"),
        ('{"type": "cancel", "run_id": "0123456789abcdef"}', "not_found"),
    ]


async def test_bad_input_is_answered_with_an_error_and_the_connection_carries_on(
    start_server: ServerFactory, repo: Path, tmp_path: Path
) -> None:
    server = start_server(auth=False)
    async with connect_as(server) as websocket:
        await websocket.send(submit(repo, ["HEAD"]))
        run_id = (await run_events(websocket))[0]["run_id"]
        for message, code in bad_messages(repo, tmp_path, run_id):
            await websocket.send(message)
            answer = await recv(websocket)
            assert (answer["type"], answer["code"]) == ("error", code), (message, answer)
            assert answer["message"]
        await websocket.send('{"type": "ping"}')
        assert (await recv(websocket))["type"] == "pong"


async def test_config_json_fields_as_the_original_design_sends_them(
    start_server: ServerFactory, repo: Path
) -> None:
    """Numeric user_id / chat_id and the ws_url of its config.json, by WebSocket and by REST."""
    server = start_server(auth=False)
    design = {"user_id": 42, "chat_id": 7, "ws_url": server.ws_url}
    async with connect_as(server) as websocket:
        await websocket.send(submit(repo, ["HEAD"], **design))
        accepted = (await run_events(websocket))[0]
        await websocket.send(submit(repo, ["HEAD"], user_id=4.2))
        refused = await recv(websocket)
    assert (accepted["user_id"], accepted["chat_id"]) == ("42", "7")
    assert refused["code"] == "bad_request"
    assert (
        "user_id: must be a string or a whole number, not a fractional number"
        in (refused["message"])
    )
    body = {"repo_url": str(repo), "test_command": "t", **design}
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        created = await http.post("/api/runs", json=body)
        assert created.status_code == 201, created.text
        shown = (await http.get(f"/api/runs/{created.json()['run_id']}")).json()
        null_id = await http.post("/api/runs", json={**body, "chat_id": None})
    assert (shown["user_id"], shown["chat_id"]) == ("42", "7")
    assert null_id.status_code == 400 and "not null" in null_id.json()["message"]


async def test_paths_on_the_server_are_refused_unless_allowed(
    start_server: ServerFactory, repo: Path
) -> None:
    strict = start_server(auth=False, allow_local_repos=False)
    async with connect_as(strict) as websocket:
        for url in (str(repo), f"file://{repo}"):
            await websocket.send(submit(url, ["HEAD"]))
            answer = await recv(websocket)
            assert (answer["type"], answer["code"]) == ("error", "bad_request"), answer
            assert "URL only" in answer["message"]
    lenient = start_server(auth=False, allow_local_repos=True)
    inside = lenient.settings.data_dir / "mirrors" / "someone-elses.git"
    numbered_repo(inside, 1)
    async with connect_as(lenient) as websocket:
        await websocket.send(submit(inside, ["HEAD"]))
        answer = await recv(websocket)
        assert (answer["type"], answer["code"]) == ("error", "bad_request"), answer
        assert "data directory" in answer["message"]


async def test_network_is_refused_unless_the_server_allows_it(
    start_server: ServerFactory, repo: Path
) -> None:
    strict = start_server(auth=False)
    async with connect_as(strict) as websocket:
        await websocket.send(submit(repo, ["HEAD"], network=True))
        answer = await recv(websocket)
        assert (answer["type"], answer["code"]) == ("error", "bad_request"), answer
        assert "--allow-network" in answer["message"]
    lenient = start_server(auth=False, allow_network=True)
    async with connect_as(lenient) as websocket:
        await websocket.send(submit(repo, ["HEAD"], network=True))
        assert (await run_events(websocket))[-1]["status"] == "passed"


async def test_an_oversized_frame_closes_with_1009_and_the_server_carries_on(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(auth=False)
    async with connect_as(server, max_size=None) as websocket:
        await websocket.send(submit(repo, ["HEAD"], test_command="x" * MAX_FRAME_BYTES))
        with pytest.raises(ConnectionClosed) as closed:
            await recv(websocket)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with connect_as(server) as websocket:
        await websocket.send(submit(repo, ["HEAD"]))
        assert (await run_events(websocket))[-1]["status"] == "passed"


# ---------------------------------------------------------------- backpressure


def small_window(server: RunningServer) -> socket.socket:
    """A connected socket with a small, fixed receive buffer: once its reader stops, the
    server's sends block after a few MB (10 MB of output is more than enough)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    return sock


class Firehose:
    """An executor that prints `chunks` batches of `lines` lines of `width` bytes, fast."""

    name = "firehose"

    def __init__(self, chunks: int, lines: int, width: int) -> None:
        self.chunks, self.lines, self.width = chunks, lines, width

    async def run(self, job: Job, emit: Emit) -> Outcome:
        for chunk in range(self.chunks):
            await emit("stdout", [f"{chunk:06d} " + "x" * self.width] * self.lines)
        return Outcome(0)

    def check_project_type(self, project_type: str) -> None:
        return None

    async def release(self, job: Job, passed: bool) -> None:
        return None

    def describe(self) -> dict[str, str]:
        return {"executor": self.name}

    async def aclose(self) -> None:
        return None


async def test_a_stalled_client_is_dropped_too_slow_while_the_run_and_others_go_on(
    start_server: ServerFactory, repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(Firehose(100, 100, 1000), auth=False, send_timeout_s=0.5)
    async with connect_as(server, sock=small_window(server), max_queue=1, max_size=None) as stalled:
        await stalled.send(submit(repo, ["HEAD"], no_cache=True))
        run_id = (await recv(stalled))["run_id"]
        async with connect_as(server, max_size=None) as healthy:
            await healthy.send(json.dumps({"type": "subscribe", "run_id": run_id}))
            events = await run_events(healthy)  # while `stalled` reads nothing
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            assert (await http.get("/health")).status_code == 200
        await wait_for(lambda: "client dropped: too slow" in caplog.messages)
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(1000):
                await recv(stalled)
    assert events[-1]["status"] == "passed"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_SLOW


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_an_overflowing_subscriber_is_dropped_and_resumes_from_its_last_seq(
    start_server: ServerFactory, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from committee import engine

    monkeypatch.setattr(engine, "SUBSCRIBER_QUEUE_EVENTS", 4)
    monkeypatch.setattr(engine, "DEFAULT_LOG_INTERVAL_S", 0)  # every chunk an event
    server = start_server(Firehose(100, 100, 1000), auth=False, send_timeout_s=30)
    async with connect_as(
        server, sock=small_window(server), max_queue=1, max_size=None
    ) as websocket:
        await websocket.send(submit(repo, ["HEAD"], no_cache=True))
        run_id = (await recv(websocket))["run_id"]
        await asyncio.sleep(1.0)  # the engine queues up to 4 events for us, then gives up
        received: list[Json] = []
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(1000):
                received.append(await recv(websocket))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_SLOW
    async with connect_as(server, max_size=None) as websocket:
        resume = {"type": "subscribe", "run_id": run_id, "after_seq": received[-1]["seq"]}
        await websocket.send(json.dumps(resume))
        events = received + await run_events(websocket)
    assert seqs(events) == list(range(1, len(events) + 1))


# ---------------------------------------------------------------- REST


async def test_rest_api_submits_lists_shows_logs_and_cancels(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(slow(0.05))
    token = await server.token("dana")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=auth) as http:
        body = {"repo_url": str(repo), "commits": ["HEAD~1..HEAD"], "test_command": "t"}
        created = await http.post("/api/runs", json=body)
        assert created.status_code == 201
        run_id = created.json()["run_id"]
        async with connect_as(server, token) as websocket:
            await websocket.send(json.dumps({"type": "subscribe", "run_id": run_id}))
            finished = (await run_events(websocket))[-1]
        shown = (await http.get(f"/api/runs/{run_id}")).json()
        sha = finished["results"][0]["commit"]
        log = await http.get(f"/api/runs/{run_id}/commits/{sha[:8]}/log")
        listed = (await http.get("/api/runs")).json()
        cancelled = (await http.post(f"/api/runs/{run_id}/cancel")).json()
    assert shown["status"] == "passed" and shown["user_id"] == "dana"
    assert log.text == f"testing {sha[:7]}\n"
    assert [run["run_id"] for run in listed] == [run_id]
    assert cancelled == {"run_id": run_id, "cancelled": False}  # it had finished already


async def test_rest_api_answers_bad_requests_with_error_bodies(
    start_server: ServerFactory, repo: Path
) -> None:
    server = start_server(auth=False)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        answers = [
            await http.post("/api/runs", content=b"{nope"),
            await http.post("/api/runs", json={"repo_url": str(repo)}),
            await http.post("/api/runs", content=b" " * (MAX_FRAME_BYTES + 1)),
            await http.post(
                "/api/runs", json={"repo_url": str(repo), "commits": ["zzz"], "test_command": "t"}
            ),
            await http.get("/api/runs/0123456789abcdef"),
            await http.get("/api/runs", params={"limit": "many"}),
        ]
    got = [(answer.status_code, answer.json()["code"]) for answer in answers]
    assert got == [
        (400, "bad_request"),
        (400, "bad_request"),
        (413, "message_too_large"),
        (400, "unknown_commit"),
        (404, "not_found"),
        (400, "bad_request"),
    ]


# ---------------------------------------------------------------- protocol document


def test_committed_protocol_schema_is_the_generated_one() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json_schema(), "regenerate: committee schema > docs/protocol.schema.json"


def test_json_log_lines_carry_the_events_fields() -> None:
    from committee.server_cli import JsonFormatter

    record = logging.LogRecord("committee.server", logging.INFO, "", 0, "run accepted", None, None)
    record.run_id = "abc"
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "run accepted" and line["run_id"] == "abc" and line["level"] == "info"

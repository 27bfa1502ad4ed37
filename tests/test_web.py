"""The web dashboard, driven in Debian's headless Chromium against a real `committee serve`.

One server (a subprocess, local executor, auth on) and one browser serve the whole module; each
test gets a fresh browser context, so nothing is shared through localStorage. Screenshots go to
artifacts/screenshots/.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Locator, Page, expect, sync_playwright

from repos import git

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}"),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
RUN_TIMEOUT_MS = 60_000
# Every WebSocket the page opens, so a test can cut one.
RECORD_SOCKETS = (
    "const Native = WebSocket; window.sockets = [];"
    "window.WebSocket = class extends Native {"
    "  constructor(...a) { super(...a); window.sockets.push(this); } };"
)
TEST_COMMAND = 'sleep 1; python -m pytest -q -p no:cacheprovider --junitxml="$COMMITTEE_JUNIT"'

CALC = "def add(a, b):\n    return a + b\n"
TESTS = "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
MUL = "\n\ndef mul(a, b):\n    return a + b\n"
MUL_TEST = (
    "\n\ndef test_mul():\n    from calc import mul\n\n"
    '    assert mul(3, 4) == 12, "multiplication is broken"\n'
)


@dataclass(frozen=True)
class Server:
    url: str
    token: str  # alice's
    data_dir: Path

    def post(self, path: str, body: dict[str, object]) -> dict[str, str]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, str] = json.load(response)
            return result

    def get(self, path: str, token: str = "") -> tuple[int, dict[str, object]]:
        """The status and JSON body of a GET, errors included."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)


@dataclass(frozen=True)
class Repo:
    path: Path
    shas: list[str]  # oldest first: add, docs, broken mul, readme


def committee(data_dir: Path, *args: str) -> str:
    """The CLI's output, run against the server's data directory."""
    command = [sys.executable, "-m", "committee.cli", *args, "--data-dir", str(data_dir)]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout


def new_token(server: Server, user: str, label: str = "") -> str:
    return committee(server.data_dir, "token", "create", user, "--label", label).strip()


def token_ids(server: Server) -> dict[str, str]:
    """Each token's id by its label, as `committee token list` shows them."""
    listed = json.loads(committee(server.data_dir, "token", "list", "--json"))
    return {token["label"]: token["token_id"] for token in listed}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("committee serve exited at start-up")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError("committee serve did not become healthy")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("server-data")
    token = committee(data_dir, "token", "create", "alice").strip()
    port = _free_port()
    log = (data_dir / "server.log").open("wb")
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    serve.append("--allow-local-repos")
    process = subprocess.Popen(
        [sys.executable, "-m", "committee.cli", *serve, "--executor", "local"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield Server(url, token, data_dir)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _commit(path: Path, subject: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", subject)
    return git(path, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Four commits; the third adds a broken mul() and its test, which fails from then on."""
    path = tmp_path_factory.mktemp("calc")
    git(path, "init", "-q", "-b", "main")
    shas = [
        _commit(path, "Add calculator", {"calc.py": CALC, "test_calc.py": TESTS}),
        _commit(path, "Document add", {"calc.py": '"""Arithmetic."""\n\n' + CALC}),
        _commit(
            path,
            "Add multiplication",
            {"calc.py": '"""Arithmetic."""\n\n' + CALC + MUL, "test_calc.py": TESTS + MUL_TEST},
        ),
        _commit(path, "Add a README", {"README.md": "# calc\n"}),
    ]
    return Repo(path, shas)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def submit(server: Server, repo: Repo, command: str, **options: object) -> str:
    body = {"repo_url": str(repo.path), "commits": repo.shas, "test_command": command, **options}
    return server.post("/api/runs", body)["run_id"]


def open_run(page: Page, server: Server, run_id: str) -> None:
    page.goto(f"{server.url}/runs/{run_id}?token={server.token}")
    expect(page.locator(".commit")).to_have_count(4)


def card(page: Page, sha: str) -> Locator:
    return page.locator(".commit").filter(has=page.locator(".sha", has_text=sha[:8]))


def wait_run_final(page: Page, status: str) -> None:
    badge = page.locator(".run-title-line .badge")
    expect(badge).to_have_class(f"badge status-{status}", timeout=RUN_TIMEOUT_MS)


# ---------------------------------------------------------------- sign-in


def test_asks_for_a_token_once_and_keeps_it(server: Server, page: Page) -> None:
    page.goto(server.url + "/")
    dialog = page.get_by_role("dialog", name="Sign in")
    expect(dialog).to_be_visible()
    shot(page, "sign-in")
    page.get_by_label("Token").fill("cmt_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(dialog.get_by_role("alert")).to_contain_text("not accepted")

    page.get_by_label("Token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(dialog).to_be_hidden()


def test_token_in_the_url_is_stored_and_dropped_from_the_address_bar(
    server: Server, page: Page
) -> None:
    page.goto(f"{server.url}/?token={server.token}")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('committee.token')") == server.token
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()


# ---------------------------------------------------------------- a run, live


def test_submit_through_the_form_and_watch_it_live(server: Server, repo: Repo, page: Page) -> None:
    page.goto(f"{server.url}/?token={server.token}")
    page.get_by_label("Repository", exact=True).fill(str(repo.path))
    page.get_by_label("Commits", exact=True).fill("no-such-branch")
    page.get_by_label("Test command").fill(TEST_COMMAND)
    page.get_by_label("Project type").fill("python")
    page.get_by_role("button", name="Start run").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown commits: no-such-branch")
    shot(page, "submit-form-error")

    page.get_by_label("Commits", exact=True).fill(" ".join(sha[:10] for sha in repo.shas))
    page.get_by_role("button", name="Start run").click()

    page.wait_for_url("**/runs/*")
    expect(page.locator(".commit")).to_have_count(4)
    # Seen live: a commit running, later every commit final, without reloading.
    expect(page.locator(".commit.status-running").first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shot(page, "run-live")
    wait_run_final(page, "failed")
    statuses = [card(page, sha).get_attribute("class") for sha in repo.shas]
    assert [s.split()[1] if s else "" for s in statuses] == [
        "status-passed",
        "status-passed",
        "status-failed",
        "status-failed",
    ]

    first_bad = card(page, repo.shas[2])
    expect(first_bad).to_have_class("commit status-failed first-bad")
    expect(first_bad).to_contain_text("First bad commit")
    expect(page.locator(".first-bad")).to_have_count(1)
    banner = page.get_by_role("note")
    expect(banner).to_contain_text(repo.shas[2][:8])
    expect(banner).to_contain_text("1 test began failing here")
    # The first bad commit opens by itself: which test began failing, and why.
    detail = page.locator(".detail")
    expect(detail.locator(".newly")).to_contain_text("test_calc::test_mul")
    expect(detail.locator(".failure-message")).to_contain_text("multiplication is broken")
    shot(page, "run-finished")

    card(page, repo.shas[3]).click()
    expect(detail.get_by_role("heading", level=2)).to_contain_text(repo.shas[3][:8])
    expect(detail.locator(".failure-message")).to_contain_text("multiplication is broken")
    expect(detail.locator(".newly")).to_be_hidden()
    expect(detail.locator(".log-row").first).to_be_visible()


def test_reload_and_dropped_connection_mid_run_carry_on(
    server: Server, repo: Repo, page: Page
) -> None:
    page.add_init_script(RECORD_SOCKETS)
    run_id = submit(server, repo, "sleep 2; " + TEST_COMMAND, no_cache=True)
    open_run(page, server, run_id)
    expect(page.locator(".commit.status-passed").first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator(".run-title-line .badge")).to_have_class("badge status-running")

    page.reload()
    expect(page.locator(".commit.status-passed").first).to_be_visible()
    shot(page, "run-after-reload")
    page.evaluate("window.sockets.at(-1).close()")
    expect(page.locator("#connection")).to_have_text("Live")
    wait_run_final(page, "failed")
    assert page.evaluate("window.sockets.length") == 2
    expect(card(page, repo.shas[2])).to_have_class("commit status-failed first-bad")
    card(page, repo.shas[2]).click()
    lines_seen_live = page.locator(".log-info").inner_text().split()[0]
    assert int(lines_seen_live) > 5

    # Resuming after the cut neither lost nor repeated a line: the stored log agrees.
    page.reload()
    card(page, repo.shas[2]).click()
    expect(page.locator(".log-info")).to_contain_text(f"Stored log: {lines_seen_live} lines")


# ---------------------------------------------------------------- keyboard, narrow, big logs


def test_keyboard_reaches_commits_and_opens_their_log(
    server: Server, repo: Repo, page: Page
) -> None:
    run_id = submit(server, repo, TEST_COMMAND)  # cached by now, or soon
    open_run(page, server, run_id)
    wait_run_final(page, "failed")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('commit-button')"):
            break
    focused = page.locator(".commit-button:focus")
    expect(focused).to_contain_text(repo.shas[0][:8])
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator(".commit-button:focus")).to_contain_text(repo.shas[2][:8])
    page.keyboard.press("Enter")
    detail = page.locator(".detail")
    expect(detail.get_by_role("heading", level=2)).to_contain_text(repo.shas[2][:8])
    expect(page.locator(".commit-button[aria-pressed=true]")).to_contain_text(repo.shas[2][:8])
    expect(detail.get_by_role("region", name=f"Log of {repo.shas[2][:8]}")).to_be_visible()
    expect(detail.locator(".failure-message")).to_contain_text("multiplication is broken")
    # A cached result's log says where the result came from.
    expect(detail.locator(".log-row").first).to_contain_text("result reused")
    # Status is told in words as well as colour.
    expect(page.locator(".commit-button:focus .badge")).to_contain_text("failed")
    shot(page, "keyboard")


def test_runs_list_updates_live_and_fits_a_narrow_screen(
    server: Server, repo: Repo, page: Page
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.url}/?token={server.token}")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    run_id = submit(server, repo, TEST_COMMAND)  # from the CLI, say, while the page is open
    row = page.locator(".run-row", has=page.locator(f"a[href='/runs/{run_id}']"))
    expect(row).to_be_visible(timeout=15_000)
    newest = page.locator(".run-row").first.get_by_role("link")
    expect(newest).to_have_attribute("href", f"/runs/{run_id}")
    expect(row).to_have_class("run-row status-failed", timeout=RUN_TIMEOUT_MS)
    expect(row).to_contain_text("2 failed · 2 passed")
    expect(row).to_contain_text("alice")
    width = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    scroll_width, client_width = page.evaluate(width)
    assert scroll_width <= client_width
    shot(page, "narrow-runs")

    row.get_by_role("link").click()
    page.wait_for_url(f"**/runs/{run_id}")
    expect(page.locator(".detail .failure-message")).to_contain_text("multiplication is broken")
    scroll_width, client_width = page.evaluate(width)
    assert scroll_width <= client_width
    shot(page, "narrow-run")


def test_big_log_is_virtualised_coloured_and_streamed_from_the_store(
    server: Server, repo: Repo, page: Page
) -> None:
    lines = 40_000
    command = (
        r"sleep 1; printf '\033[32mgreen\033[0m <b>not markup</b>\n'; "
        f"seq 1 {lines} | sed 's/^/line number /'"
    )
    run_id = submit(server, repo, command, commits=[repo.shas[0]])
    page.goto(f"{server.url}/runs/{run_id}?token={server.token}")
    wait_run_final(page, "passed")
    page.locator(".commit-button").click()
    info = page.locator(".log-info")
    expect(info).to_have_text(f"{lines + 1:,} lines")  # kept live, in the page
    log = page.locator(".log-scroll")
    # Only the rows in sight exist, whatever the log's length.
    assert page.locator(".log-row").count() < 60
    log.evaluate("e => { e.scrollTop = 0; }")
    expect(log.locator(".ansi-fg-2")).to_have_text("green")
    expect(log.locator("b")).to_have_count(0)
    expect(log.locator(".log-row").first).to_contain_text("<b>not markup</b>")

    # Opened after the run, a log streams from the store, still only the rows in sight.
    page.reload()
    page.locator(".commit-button").click()
    expect(info).to_contain_text(f"Stored log: {lines + 1:,} lines", timeout=30_000)
    expect(info).not_to_contain_text("so far")
    log.evaluate("e => { e.scrollTop = e.scrollHeight / 2; }")
    middle = re.compile(r"line number (19|20)\d{3}$")
    expect(log.locator(".log-row").first).to_have_text(middle)
    assert page.locator(".log-row").count() < 60
    shot(page, "big-log")


# ---------------------------------------------------------------- who may see what, and cancel


def test_another_users_run_is_not_found_and_shows_nothing(
    server: Server, repo: Repo, page: Page
) -> None:
    bob = new_token(server, "bob")
    run_id = submit(server, repo, "true", commits=[repo.shas[0]])  # alice's
    status, body = server.get(f"/api/runs/{run_id}", token=bob)
    assert (status, body["code"]) == (404, "not_found")

    page.goto(f"{server.url}/runs/{run_id}?token={bob}")
    expect(page.get_by_role("alert")).to_have_text(
        f"Run not found: there is no run {run_id}, or it is not yours."
    )
    expect(page).to_have_title(re.compile("^Run not found"))
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()
    expect(page.locator(".commit")).to_have_count(0)
    expect(page.locator(".run-head")).to_be_hidden()
    text = page.locator("body").inner_text()
    assert repo.shas[0][:8] not in text
    assert str(repo.path) not in text
    shot(page, "run-not-yours")


def test_a_revoked_token_asks_to_sign_in_again(server: Server, repo: Repo, page: Page) -> None:
    page.add_init_script(RECORD_SOCKETS)
    dialog = page.get_by_role("dialog", name="Sign in")
    first = new_token(server, "alice", "revoked while listing")
    second = new_token(server, "alice", "revoked while watching")
    ids = token_ids(server)
    page.goto(f"{server.url}/?token={first}")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    committee(server.data_dir, "token", "revoke", ids["revoked while listing"])
    # The list's next refresh (every 5 s at most) is refused: the page asks, it does not go blank.
    expect(dialog).to_be_visible(timeout=10_000)
    expect(dialog.get_by_role("alert")).to_contain_text("not accepted")
    shot(page, "token-revoked")

    page.get_by_label("Token").fill(second)
    page.get_by_role("button", name="Sign in").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("alert")).to_be_hidden()  # the refused refresh went through this time

    run_id = submit(server, repo, "sleep 3", commits=[repo.shas[0]], no_cache=True)
    page.goto(f"{server.url}/runs/{run_id}")
    expect(page.locator("#connection")).to_have_text("Live")
    committee(server.data_dir, "token", "revoke", ids["revoked while watching"])
    page.evaluate("window.sockets.at(-1).close()")  # a dropped connection: the page reconnects
    expect(dialog).to_be_visible(timeout=10_000)
    expect(dialog.get_by_role("alert")).to_contain_text("live connection needs a valid token")
    expect(page.locator("#connection")).to_have_text("Signed out")

    page.get_by_label("Token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#connection")).to_have_text("Live")
    wait_run_final(page, "passed")
    assert page.evaluate("localStorage.getItem('committee.token')") == server.token


def test_cancel_stops_a_run_at_once(server: Server, repo: Repo, page: Page) -> None:
    run_id = submit(server, repo, "sleep 30", no_cache=True)
    open_run(page, server, run_id)
    expect(page.locator(".commit.status-running").first).to_be_visible(timeout=15_000)
    asked: list[str] = []

    def accept(confirm: Dialog) -> None:
        asked.append(confirm.message)
        confirm.accept()

    page.once("dialog", accept)
    started = time.monotonic()
    page.get_by_role("button", name="Cancel run").click()

    wait_run_final(page, "cancelled")
    took = time.monotonic() - started
    assert asked and "Cancel this run?" in asked[0]
    expect(page.locator(".run-title-line .badge")).to_contain_text("cancelled")
    for sha in repo.shas:
        expect(card(page, sha)).to_have_class("commit status-cancelled")
        expect(card(page, sha).locator(".badge")).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    # The commit that was running stays in view, saying why it stopped; none claims "0.0 s".
    detail = page.locator(".detail")
    expect(detail.locator(".reason")).to_have_text("the run was cancelled")
    expect(detail.locator(".detail-meta .badge")).to_contain_text("cancelled")
    expect(page.locator(".commit-button[aria-pressed=true]")).to_have_count(1)
    expect(page.locator(".commits")).not_to_contain_text("0.0 s")
    shot(page, "run-cancelled")

    status, summary = server.get(f"/api/runs/{run_id}")
    assert (status, summary["status"]) == (200, "cancelled")
    results = summary["results"]
    assert isinstance(results, list)
    assert [r["status"] for r in results] == ["cancelled"] * 4
    assert took < 10, f"cancelling took {took:.1f} s"

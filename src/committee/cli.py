"""The `committee` command. It only builds a request or a config and hands it to the engine,
the server or the client; exit codes: 0 all passed, 1 something failed, 2 bad input."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from committee import __version__
from committee.config import build_request, default_data_dir, read_config
from committee.engine import DEFAULT_LOG_CAP_BYTES, Engine, process_owner
from committee.errors import (
    AuthError,
    BadInput,
    BadRepository,
    CommitteeError,
    ExecutorError,
    NotFound,
)
from committee.executors import Executor, create_executor
from committee.messages import json_schema
from committee.models import RunRequest, RunSummary
from committee.render import TerminalReporter, exit_code, print_summary, summary_json
from committee.store import Store

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# What the user of the command can fix: their input, a run id that is not theirs, their token.
BAD_INPUT_ERRORS = (BadInput, NotFound, AuthError)
DB_NAME = "committee.db"
COMMAND_USAGE = " [-- COMMAND ...]"


def split_command(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """Split `... -- COMMAND ...` off the arguments. One word after `--` is a shell string as
    given (`-- "make test && coverage report"`); several are quoted and joined."""
    if "--" not in argv:
        return list(argv), None
    at = list(argv).index("--")
    words = list(argv[at + 1 :])
    if not words:
        return list(argv[:at]), None
    return list(argv[:at]), words[0] if len(words) == 1 else shlex.join(words)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def show_command_in_usage(parser: argparse.ArgumentParser) -> None:
    """Append `[-- COMMAND ...]` to the generated usage line; call it once all options are in."""
    parser.usage = parser.format_usage().removeprefix("usage: ").rstrip() + COMMAND_USAGE


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("commits", nargs="*", metavar="COMMIT", help="SHAs, names, HEAD~N, A..B")
    parser.add_argument(
        "--repo", help="repository path or URL (default: the repository of the current directory)"
    )
    parser.add_argument("--config", type=Path, help="config.json of the original design")
    parser.add_argument("--timeout", type=float, help="seconds per commit before it is killed")
    parser.add_argument("--no-cache", action="store_true", help="never reuse stored results")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--project-type", help="template to use (python, fastapi, node, ...)")
    parser.add_argument("--user-id")
    parser.add_argument("--chat-id")
    parser.add_argument("--network", action="store_true", help="let the command use the network")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment"
    )


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, help="where committee keeps state")


def request_from_args(args: argparse.Namespace, command: str | None) -> RunRequest:
    config = read_config(args.config) if args.config else {}
    env = dict(config.get("env") or {})
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadInput(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    overrides = {
        "repo_url": args.repo or (None if "repo_url" in config else repository_here(Path.cwd())),
        "commits": args.commits or None,
        "test_command": command,
        "project_type": args.project_type,
        "user_id": args.user_id,
        "chat_id": args.chat_id,
        "timeout_s": args.timeout,
        "env": env or None,
        "network": args.network or None,
        "no_cache": args.no_cache or None,
    }
    if command is None and "test_command" not in config:
        raise BadInput("no test command: give it after `--` (committee run -- pytest -q)")
    return build_request(config, overrides)


def repository_here(cwd: Path) -> str:
    """The top-level directory of the repository `cwd` is in, however deep (the repository
    itself when it is bare)."""
    top = _rev_parse(cwd, "--show-toplevel")
    if top.returncode == 0:
        return top.stdout.rstrip("\n")
    bare = _rev_parse(cwd, "--is-bare-repository", "--absolute-git-dir")
    if bare.returncode == 0 and bare.stdout.startswith("true\n"):
        return bare.stdout.splitlines()[1]
    reason = (top.stderr.strip().splitlines() or [""])[0]
    detail = "" if "not a git repository" in reason else f" ({reason})"  # e.g. unsafe owner
    raise BadRepository(
        f"{cwd} is not inside a git repository{detail}: run committee in one, "
        "or give --repo PATH_OR_URL"
    )


def _rev_parse(cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "rev-parse", *options], cwd=cwd, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise BadInput("git is not installed (or not on PATH)") from None


def make_executor(name: str, data_dir: Path) -> Executor:
    """`create_executor`, with an executor whose optional packages are missing told as bad
    input: it is one `pip install` away."""
    if name == "kubernetes":
        try:
            importlib.import_module("committee.executors.kubernetes")
        except ExecutorError as exc:  # raised at import when lightkube is missing
            raise BadInput(exc.message) from None
    return create_executor(name, data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="committee",
        description="Test Git commits one by one, each in its own sandbox.",
        epilog="The test command goes after `--`: committee run HEAD~3..HEAD -- pytest -q",
    )
    parser.add_argument("--version", action="version", version=f"committee {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True)

    run = sub.add_parser("run", help="test commits here, each in a local sandbox")
    _add_request_options(run)
    _add_data_dir(run)
    run.add_argument(
        "--jobs", "-j", type=positive_int, default=None, help="commits at once (default: CPUs)"
    )
    run.add_argument("--executor", default="local", choices=["local", "kubernetes"])
    run.add_argument(
        "--log-cap", type=positive_int, default=None, help="bytes of log kept per commit"
    )
    run.set_defaults(func=lambda a: asyncio.run(cmd_run(a)))
    show_command_in_usage(run)

    runs = sub.add_parser("runs", help="list stored runs")
    _add_data_dir(runs)
    runs.add_argument("--json", action="store_true")
    runs.add_argument("--limit", type=positive_int, default=20)
    runs.set_defaults(func=lambda a: asyncio.run(cmd_runs(a)))

    show = sub.add_parser("show", help="show one run, or the full log of one of its commits")
    _add_data_dir(show)
    show.add_argument("run_id", metavar="RUN")
    show.add_argument("--json", action="store_true")
    show.add_argument("--log", metavar="COMMIT", help="print this commit's whole stored log")
    show.set_defaults(func=lambda a: asyncio.run(cmd_show(a)))

    doctor = sub.add_parser("doctor", help="which isolation is active here, and why")
    _add_data_dir(doctor)
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo", help="build a demo repository with a regression and test it")
    _add_data_dir(demo)
    demo.add_argument("--jobs", "-j", type=positive_int, default=None)
    demo.set_defaults(func=lambda a: asyncio.run(cmd_demo(a)))

    schema = sub.add_parser("schema", help="print the protocol's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """Subcommands that live with what they drive (server, Kubernetes)."""
    registers: list[Callable[[Any], None]] = []
    for module in ("committee.server_cli", "committee.k8s_cli"):
        try:
            imported = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        registers.append(imported.register)
    return registers


def data_dir_of(args: argparse.Namespace) -> Path:
    path: Path = args.data_dir or default_data_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def open_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    """The store of the command's data dir, closed when the block ends."""
    store = await Store.open(data_dir_of(args) / DB_NAME)
    try:
        yield store
    finally:
        await store.aclose()


def _console(args: argparse.Namespace) -> Console:
    # With --json, stdout carries exactly one JSON document; everything else goes to stderr.
    console = Console(stderr=bool(getattr(args, "json", False)), highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 110  # logs and pipes are not 80 columns wide; keep the table whole
    return console


def error_console() -> Console:
    # soft_wrap: a message is one line, however narrow; the terminal folds it, logs keep it whole.
    return Console(stderr=True, highlight=False, soft_wrap=True)


async def cmd_run(args: argparse.Namespace) -> int:
    request = request_from_args(args, args.command)
    data_dir = data_dir_of(args)
    executor = make_executor(args.executor, data_dir)
    console = _console(args)
    if warning := executor.describe().get("warning"):
        error_console().print(f"[yellow]warning:[/] {escape(warning)}")
    store = await Store.open(data_dir / DB_NAME)
    cap = args.log_cap or DEFAULT_LOG_CAP_BYTES
    try:
        engine = Engine(
            store,
            executor,
            data_dir,
            max_concurrent=args.jobs,
            log_cap_bytes=cap,
            owner=process_owner(),
        )
        async with engine:
            await engine.recover()  # close runs whose committee process was killed
            run_id = await engine.submit(request, cwd=Path.cwd())
            args.interrupt_note = "the run was cancelled"
            _cancel_on_termination()
            try:
                return await follow(engine.subscribe(run_id), console, as_json=args.json)
            except asyncio.CancelledError:  # Ctrl-C, kill, hang-up: record the run as cancelled
                await engine.cancel(run_id)
                await engine.wait(run_id)
                raise
    finally:
        await store.aclose()
        await executor.aclose()


def _cancel_on_termination() -> None:
    """SIGTERM and SIGHUP end a run the way Ctrl-C does: its commits killed, it kept as
    cancelled, instead of the process dying with the run left 'running' in the store."""
    task = asyncio.current_task()
    if task is not None:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)


async def follow(events: Any, console: Console, *, as_json: bool) -> int:
    """Render a stream of run events to the end; print the summary; return the exit code."""
    with TerminalReporter(console, quiet=as_json) as reporter:
        async for event in events:
            reporter.handle(event)
    finished = reporter.view.finished
    if finished is None:
        raise CommitteeError("the run's event stream ended before run.finished")
    if as_json:
        print(summary_json(finished))
    else:
        print_summary(console, finished)
    return exit_code(finished)


async def cmd_runs(args: argparse.Namespace) -> int:
    async with open_store(args) as store:
        runs = await store.list_runs(limit=args.limit)
    if args.json:
        print(json.dumps([r.model_dump(mode="json", exclude={"results"}) for r in runs], indent=2))
        return 0
    console = _console(args)
    for run in runs:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(run.counts.items()))
        bad = f" first bad {run.first_bad_commit[:10]}" if run.first_bad_commit else ""
        line = f"{run.run_id}  {run.status.value:<9} {run.repo_url}  [{counts}]{bad}"
        console.print(line, markup=False)
    if not runs:
        console.print("no runs yet: try `committee demo`")
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    async with open_store(args) as store:
        summary = await store.run_summary(args.run_id)
        if args.log:
            async for line in store.commit_log(args.run_id, commit_named(summary, args.log)):
                sys.stdout.write(line + "\n")
            return 0
    if args.json:
        print(summary.model_dump_json(indent=2))
        return 0
    from committee.messages import RunFinished
    from committee.render import summary_table

    console = _console(args)
    console.print(
        f"run {summary.run_id}: {summary.status.value} — {summary.repo_url}", markup=False
    )
    console.print(f"command: {summary.test_command}", markup=False)
    finished = RunFinished(
        run_id=summary.run_id,
        status=summary.status,
        first_bad_commit=summary.first_bad_commit,
        newly_failing=summary.newly_failing,
        results=summary.results,
    )
    if summary.status.final:
        print_summary(console, finished)
    else:
        console.print(summary_table(summary.results, summary.first_bad_commit))
    return 0


def commit_named(summary: RunSummary, name: str) -> str:
    """The commit of the run that `name` names: the name it was given (HEAD, v1.2), else a
    SHA prefix."""
    by_name = {r.commit for r in summary.results if r.ref == name}
    matches = by_name or {r.commit for r in summary.results if r.commit.startswith(name.lower())}
    if len(matches) == 1:
        return matches.pop()
    if matches:
        raise BadInput(f"{name!r} starts {len(matches)} SHAs of run {summary.run_id}: give more")
    given = ", ".join(r.ref for r in summary.results[:10])
    more = ", ..." if len(summary.results) > 10 else ""
    raise BadInput(
        f"{name!r} names no commit of run {summary.run_id}: give a SHA prefix or a name "
        f"the run was given ({given}{more})"
    )


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from committee.executors.local import doctor_report

    console = _console(args)
    data_dir = data_dir_of(args)
    executor = create_executor("local", data_dir)
    for key, value in executor.describe().items():
        if value:
            console.print(f"{key:>10}: {value}", markup=False)
    all_ok = True
    for check, ok, detail in doctor_report(data_dir):
        all_ok &= ok
        console.print(
            f"[{'green' if ok else 'yellow'}]{'ok ' if ok else 'no '}[/] "
            f"{escape(check)}: {escape(detail)}"
        )
    return 0 if all_ok else 1


async def cmd_demo(args: argparse.Namespace) -> int:
    from committee.demo import DEMO_COMMAND, DEMO_COMMITS, build_demo_repo

    # Outside the data dir: committee refuses to test repositories inside its own data.
    demo_dir = Path(tempfile.gettempdir()) / f"committee-demo-{os.getuid()}"
    repo = await asyncio.to_thread(build_demo_repo, demo_dir)
    console = _console(args)
    console.print(f"demo repository with a regression built at {repo}", markup=False)
    console.print(f"testing every commit with: {DEMO_COMMAND}\n", markup=False)
    args.repo, args.config, args.commits = str(repo), None, DEMO_COMMITS
    args.timeout, args.no_cache, args.json, args.project_type = 300.0, True, False, "fastapi"
    args.user_id = args.chat_id = None
    args.network, args.env, args.executor, args.log_cap = False, [], "local", None
    args.command = DEMO_COMMAND
    code = await cmd_run(args)
    return 0 if code == 1 else 1  # the demo is meant to find its regression


def print_error(message: str) -> None:
    # Escaped: messages quote user text ('foo[bold]x', "committee[kubernetes]") that Rich
    # would otherwise read as markup and swallow.
    error_console().print(f"[red]committee: error:[/] {escape(message)}")


def _unexpected(args: argparse.Namespace, extra: list[str], command: str | None) -> int:
    """Words argparse did not take: for run and submit, most likely a command without `--`."""
    words = ", ".join(repr(word) for word in extra)
    if args.subcommand not in ("run", "submit") or command is not None:
        print_error(f"unrecognized argument(s) {words}")
    else:
        print_error(
            f"unexpected argument(s) {words}: put the test command after `--`, "
            f"e.g. committee {args.subcommand} HEAD~2..HEAD -- pytest -q"
        )
    return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    words, command = split_command(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(words)
    if extra:
        return _unexpected(args, extra, command)
    args.command = command
    args.interrupt_note = ""  # what became of the run if Ctrl-C comes; commands set it
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        code = handler(args)
    except CommitteeError as exc:
        print_error(exc.message)
        return EXIT_BAD_INPUT if isinstance(exc, BAD_INPUT_ERRORS) else 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        note = f": {args.interrupt_note}" if args.interrupt_note else ""
        error_console().print(f"interrupted{note}", markup=False)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `committee runs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())

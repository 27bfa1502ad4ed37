"""The local executor: each job runs on this machine, in a bubblewrap sandbox when it works.

Per job: the commit is materialised into `<data_dir>/jobs/<job_id>/src`; `sh -c <command>`
runs there with a scrubbed environment, in its own session, inside a cgroup v1 pair (memory,
pids) joined before exec so nothing it starts can escape the limits or the final kill. The
output pipes are ours, not asyncio's, so the exit of the command is seen even while a leftover
grandchild still holds them. See sandbox.py for what the sandbox is made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from committee import git
from committee.capture import LineSplitter, Tail
from committee.errors import ExecutorError
from committee.executors import Emit, Job, Limits, Outcome, Stream
from committee.sandbox import (
    JOB_MARKER_ENV,
    JUNIT_MAX_BYTES,
    JUNIT_SKIP_DIRS,
    SANDBOX_UID,
    SETPRIV,
    JobDirs,
    bwrap_argv,
    cgroup_parents,
    interpreter_roots,
    is_junit_name,
    job_dirs,
    limit_files,
    oom_error,
    oom_killed,
    parse_proc_cgroup,
    sandbox_env,
)

log = logging.getLogger(__name__)

Isolation = Literal["auto", "bwrap", "none"]
BWRAP = "/usr/bin/bwrap"
CGROUP_MOUNT = Path("/sys/fs/cgroup")
KILL_ROUNDS = 100  # x 10 ms: how long a process tree may resist SIGKILL before we give up
DRAIN_GRACE_S = 1.0  # after a kill, how long the last buffered output may take to arrive
JUNIT_MAX_FILES = 50
JUNIT_MAX_ENTRIES = 100_000


# ---------------------------------------------------------------- probes (once per process)


@functools.cache
def bwrap_problem(bwrap: str = BWRAP) -> str:
    """'' when bubblewrap can build a sandbox here, else why it cannot."""
    if not os.access(bwrap, os.X_OK):
        return f"{bwrap} is not installed"
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all"]
    try:
        done = subprocess.run(
            [*probe, "--cap-drop", "ALL", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} did not run: {exc}"
    if done.returncode != 0:
        return f"{bwrap} cannot create namespaces: {done.stderr.decode(errors='replace').strip()}"
    return ""


@functools.cache
def _own_cgroup_parents() -> dict[str, Path]:
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    return cgroup_parents(CGROUP_MOUNT, own)


@functools.cache
def cgroup_problem() -> str:
    """'' when per-job cgroup v1 memory and pids groups can be made here, else why not."""
    try:
        parents = _own_cgroup_parents()
    except OSError as exc:
        return f"cannot read /proc/self/cgroup: {exc}"
    for controller, parent in parents.items():
        if not (CGROUP_MOUNT / controller / "cgroup.procs").is_file():
            return f"no cgroup v1 {controller} hierarchy at {CGROUP_MOUNT / controller}"
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            return f"cannot create {parent}: {exc.strerror}"
        with contextlib.suppress(OSError):  # busy when jobs run: fine, it is made per job anyway
            parent.rmdir()
    return ""


# ---------------------------------------------------------------- cgroups of one job


@dataclass(frozen=True)
class JobCgroups:
    dirs: dict[str, Path]  # controller -> this job's cgroup directory

    @classmethod
    def create(cls, job_id: str, limits: Limits) -> JobCgroups:
        cgroups = cls({c: parent / job_id for c, parent in _own_cgroup_parents().items()})
        try:
            for path in cgroups.dirs.values():
                path.mkdir(parents=True, exist_ok=True)
            for controller, name, value in limit_files(limits.memory_bytes, limits.pids):
                target = cgroups.dirs[controller] / name
                if target.exists():  # memsw only exists with swap accounting
                    target.write_text(value)
        except OSError as exc:
            cgroups.remove_now()
            raise ExecutorError(f"cannot set up the job's cgroups: {exc}") from exc
        return cgroups

    def procs_files(self) -> list[bytes]:
        return [os.fsencode(path / "cgroup.procs") for path in self.dirs.values()]

    def pids(self) -> set[int]:
        """Every process in the job's cgroups, sub-cgroups included (cgroup.procs lists direct
        members only)."""
        found: set[int] = set()
        for top in self.dirs.values():
            for here, _, _ in os.walk(top):
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in Path(here, "cgroup.procs").read_text().split())
        return found

    def read(self, controller: str, name: str) -> str:
        try:
            return (self.dirs[controller] / name).read_text()
        except OSError:
            return ""

    def remove_now(self) -> bool:
        """True once every directory is gone (rmdir fails with EBUSY while a process is in)."""
        busy = False
        for path in self.dirs.values():
            for here, _, _ in sorted(os.walk(path), reverse=True):  # children first
                try:
                    os.rmdir(here)
                except FileNotFoundError:
                    pass
                except OSError:
                    busy = True
        return not busy

    async def remove(self) -> None:
        # The last process of a killed sandbox can linger a few ms after it left cgroup.procs.
        for _ in range(50):
            if self.remove_now():
                return
            await asyncio.sleep(0.01)
        log.warning("could not remove cgroups %s", list(self.dirs.values()))


def _preexec(procs_files: list[bytes], rlimits: list[tuple[int, int]]) -> Callable[[], None] | None:
    """Runs in the child between fork and exec: joining the cgroups there means nothing the
    command starts can be outside them. Kept tiny (no imports, no logging) for fork safety."""

    def enter() -> None:
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" is the writing process itself
            finally:
                os.close(fd)
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))

    return enter if procs_files or rlimits else None


def _fallback_rlimits(limits: Limits) -> list[tuple[int, int]]:
    """Without cgroups: address space always; process count only for a non-root uid (root
    ignores RLIMIT_NPROC, and for others it counts the user's processes system-wide)."""
    rlimits = [(resource.RLIMIT_AS, limits.memory_bytes)]
    if os.geteuid() != 0:
        rlimits.append((resource.RLIMIT_NPROC, limits.pids))
    return rlimits


# ---------------------------------------------------------------- killing a process tree


def _marked_pids(job_id: str) -> set[int]:
    """Processes whose environment carries this job's marker: the sweep of last resort, for
    processes that left the session (setsid) when there are no cgroups."""
    marker = f"\0{JOB_MARKER_ENV}={job_id}\0".encode()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in b"\0" + Path(entry.path, "environ").read_bytes():
                    found.add(int(entry.name))
    return found


def _sigkill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class _Running:
    job: Job
    proc: asyncio.subprocess.Process
    cgroups: JobCgroups | None

    def survivors(self) -> set[int]:
        # The cgroups hold every process of the job (it joined them before exec); the /proc
        # sweep, which reads every process's environment, is only needed without them.
        if self.cgroups is not None:
            return self.cgroups.pids()
        return _marked_pids(self.job.job_id)

    def kill_once(self) -> set[int]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        left = self.survivors()
        _sigkill(left)
        return left

    async def kill_tree(self) -> None:
        """SIGKILL the session, then every process of the job until none is left; the first
        round happens before any await so that a second cancellation cannot skip it."""
        for _ in range(KILL_ROUNDS):
            if not self.kill_once():
                break
            await asyncio.sleep(0.01)
        else:
            log.warning("job %s: processes survived SIGKILL", self.job.job_id)
        await self.proc.wait()


# ---------------------------------------------------------------- output


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # fewer wakeups on chatty commands; not essential
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    return read_end, write_end


async def _open_reader(
    pipe: BinaryIO, limit: int
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    return reader, transport


async def _drain(
    reader: asyncio.StreamReader, stream: Stream, emit: Emit, tail: Tail, chunk: int
) -> None:
    """Read until EOF, whatever the volume: the engine, not the executor, caps the log."""
    splitter = LineSplitter()
    while data := await reader.read(chunk):
        lines = splitter.feed(data)
        if lines:
            tail.extend(lines)
            await emit(stream, lines)
    rest = splitter.flush()
    if rest:
        tail.extend(rest)
        await emit(stream, rest)


# ---------------------------------------------------------------- JUnit XML


def _junit_candidates(src: Path) -> Iterator[Path]:
    seen = 0
    for here, subdirs, files in os.walk(src):
        subdirs[:] = sorted(d for d in subdirs if d not in JUNIT_SKIP_DIRS)
        seen += len(subdirs) + len(files)
        if seen > JUNIT_MAX_ENTRIES:
            return
        yield from (Path(here, name) for name in sorted(files) if is_junit_name(name))


def _read_junit(path: Path, newer_than_ns: int) -> str | None:
    """The file's text if it is a regular file (never a symlink out of the sandbox), small
    enough, and written after `newer_than_ns`."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > JUNIT_MAX_BYTES:
            return None
        if info.st_mtime_ns <= newer_than_ns:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def collect_junit(dirs: JobDirs) -> tuple[str, ...]:
    """<out>/junit.xml, then junit*.xml / TEST-*.xml under src written during the job (newer
    than the started marker, so files that came with the commit do not count)."""
    started = dirs.started_marker.stat().st_mtime_ns
    found = [_read_junit(dirs.out / "junit.xml", 0)]
    found += [_read_junit(path, started) for path in _junit_candidates(dirs.src)]
    return tuple(text for text in found if text is not None)[:JUNIT_MAX_FILES]


# ---------------------------------------------------------------- the executor


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        data_dir: Path,
        *,
        checkout_mode: git.CheckoutMode = "archive",
        log_read_chunk: int = 65536,
        isolation: Isolation = "auto",
        keep_workdirs: bool = False,
        use_cgroups: bool = True,
        bwrap: str = BWRAP,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.checkout_mode: git.CheckoutMode = checkout_mode
        self.log_read_chunk = log_read_chunk
        self.isolation = isolation
        self.keep_workdirs = keep_workdirs
        self.use_cgroups = use_cgroups
        self.bwrap = bwrap

    # -- what is available

    def _bwrap_active(self) -> bool:
        if self.isolation == "none":
            return False
        problem = bwrap_problem(self.bwrap)
        if problem and self.isolation == "bwrap":
            raise ExecutorError(f"isolation 'bwrap' was asked for, but {problem}")
        return not problem

    def _cgroups_active(self) -> bool:
        return self.use_cgroups and not cgroup_problem()

    def _isolation(self) -> tuple[str, str]:
        """(isolation in effect, why it is weaker than asked or '')."""
        if self.isolation == "none":
            return "none", "isolation turned off"
        problem = bwrap_problem(self.bwrap)
        if not problem:
            return "bwrap", ""
        return ("unavailable" if self.isolation == "bwrap" else "none"), problem

    def describe(self) -> dict[str, str]:
        isolation, why = self._isolation()
        warnings = []
        if isolation != "bwrap":
            warnings.append(f"commands run unsandboxed with the server's files and network ({why})")
        limits = "cgroup v1" if self._cgroups_active() else "rlimit"
        if limits == "rlimit":
            reason = cgroup_problem() if self.use_cgroups else "cgroups turned off"
            warnings.append(
                f"no cgroups ({reason}): address-space rlimit only; the final kill relies on "
                "the process group and an environment marker"
            )
        return {
            "executor": self.name,
            "isolation": isolation,
            "limits": limits,
            "network": "off by default" if isolation == "bwrap" else "host network",
            "user": _user(sandboxed=isolation == "bwrap"),
            "checkout": self.checkout_mode,
            "warning": "; ".join(warnings),
        }

    # -- running

    def check_project_type(self, project_type: str) -> None:
        """Any project runs here: the command brings what it needs."""

    async def run(self, job: Job, emit: Emit) -> Outcome:
        dirs = job_dirs(self.data_dir, job.job_id)
        try:
            await self._prepare(job, dirs)
            return await self._execute(job, dirs, emit)
        except BaseException:
            if not self.keep_workdirs:
                await asyncio.to_thread(shutil.rmtree, dirs.root, True)
            raise

    async def _prepare(self, job: Job, dirs: JobDirs) -> None:
        try:
            await asyncio.to_thread(shutil.rmtree, dirs.root, True)  # a crashed earlier attempt
            for path in (dirs.out, dirs.home, dirs.tmp):
                path.mkdir(parents=True)
        except OSError as exc:
            raise ExecutorError(f"cannot create the job's directories: {exc}") from exc
        await git.materialize(job.mirror, job.commit, dirs.src, self.checkout_mode)
        if (uid := _sandbox_uid()) is not None and self._bwrap_active():
            await asyncio.to_thread(_chown_tree, dirs.root, uid)

    def _argv(self, job: Job, dirs: JobDirs, env: dict[str, str], bwrap: bool) -> list[str]:
        if not bwrap:
            return ["/bin/sh", "-c", job.command]
        return bwrap_argv(
            self.bwrap,
            job.command,
            dirs,
            env,
            data_dir=self.data_dir,
            network=job.network,
            keep=interpreter_roots(),
            run_as=_sandbox_uid(),
        )

    async def _spawn(
        self, job: Job, dirs: JobDirs, cgroups: JobCgroups | None, fds: tuple[int, int]
    ) -> asyncio.subprocess.Process:
        env = sandbox_env(job, dirs)
        argv = self._argv(job, dirs, env, self._bwrap_active())
        procs = cgroups.procs_files() if cgroups else []
        rlimits = [] if cgroups else _fallback_rlimits(job.limits)
        dirs.started_marker.touch()
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=fds[0],
                stderr=fds[1],
                cwd=dirs.src,
                env=env,
                start_new_session=True,
                preexec_fn=_preexec(procs, rlimits),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ExecutorError(f"cannot start the command: {exc}") from exc

    async def _execute(self, job: Job, dirs: JobDirs, emit: Emit) -> Outcome:
        cgroups = JobCgroups.create(job.job_id, job.limits) if self._cgroups_active() else None
        try:
            return await self._supervise(job, dirs, cgroups, emit)
        finally:
            if cgroups is not None:
                await cgroups.remove()

    async def _supervise(
        self, job: Job, dirs: JobDirs, cgroups: JobCgroups | None, emit: Emit
    ) -> Outcome:
        (out_r, out_w), (err_r, err_w) = _pipe(), _pipe()
        readable: list[BinaryIO] = [os.fdopen(fd, "rb", buffering=0) for fd in (out_r, err_r)]
        try:
            try:
                proc = await self._spawn(job, dirs, cgroups, (out_w, err_w))
            finally:
                os.close(out_w)  # the child has its own copies
                os.close(err_w)
            running = _Running(job, proc, cgroups)
            tail = Tail()
            try:
                exit_code, timed_out = await self._follow(running, readable, emit, tail)
            finally:
                await running.kill_tree()
        finally:
            for pipe in readable:
                pipe.close()  # a no-op when a transport already closed it
        error, diagnostics = _cgroup_verdict(cgroups, job.limits)
        return Outcome(
            exit_code=exit_code,
            timed_out=timed_out,
            error=error,
            junit_xml=await asyncio.to_thread(collect_junit, dirs),
            output_tail=tail.text(),
            diagnostics=diagnostics,
        )

    async def _follow(
        self, running: _Running, pipes: list[BinaryIO], emit: Emit, tail: Tail
    ) -> tuple[int | None, bool]:
        """Stream output until the command exits and its output is drained, or time runs out."""
        streams: tuple[Stream, Stream] = ("stdout", "stderr")
        transports: list[asyncio.BaseTransport] = []
        drains: list[asyncio.Task[None]] = []
        deadline = asyncio.timeout(running.job.timeout_s)
        try:
            for pipe, stream in zip(pipes, streams, strict=True):
                reader, transport = await _open_reader(pipe, self.log_read_chunk)
                transports.append(transport)
                drain = _drain(reader, stream, emit, tail, self.log_read_chunk)
                drains.append(asyncio.create_task(drain))
            async with deadline:
                await running.proc.wait()
                # Leftovers of a finished command must not hold the pipes (or the job) open.
                await running.kill_tree()
                await _gather_first_error(drains)
        except TimeoutError:
            if not deadline.expired():
                raise  # an emit callback's own timeout, not the job's
            running.kill_once()
            await asyncio.wait(drains, timeout=DRAIN_GRACE_S)
        finally:
            for task in drains:
                task.cancel()
            for transport in transports:
                transport.close()
            await asyncio.gather(*drains, return_exceptions=True)
        timed_out = deadline.expired()
        return _exit_code(running.proc.returncode, timed_out), timed_out

    async def release(self, job: Job, passed: bool) -> None:
        if not self.keep_workdirs:
            await asyncio.to_thread(shutil.rmtree, job_dirs(self.data_dir, job.job_id).root, True)

    async def aclose(self) -> None:
        if self._cgroups_active():
            for parent in _own_cgroup_parents().values():
                with contextlib.suppress(OSError):  # busy: another executor still has jobs
                    parent.rmdir()


async def _gather_first_error(tasks: list[asyncio.Task[None]]) -> None:
    """Like gather, but the first failure (an emit that raised) comes out as soon as it happens;
    the caller cancels the rest."""
    for next_done in asyncio.as_completed(tasks):
        await next_done


def _sandbox_uid() -> int | None:
    """Commands never run as root: when committee does, they drop to SANDBOX_UID."""
    return SANDBOX_UID if os.geteuid() == 0 and os.access(SETPRIV, os.X_OK) else None


def _chown_tree(root: Path, uid: int) -> None:
    for here, dirnames, filenames in os.walk(root):
        os.lchown(here, uid, uid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(here, name), uid, uid)


def _user(sandboxed: bool) -> str:
    if sandboxed and (uid := _sandbox_uid()) is not None:
        return f"uid {uid} (nobody), without capabilities"
    user = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return f"{user}, without capabilities" if sandboxed else user


def _exit_code(returncode: int | None, timed_out: bool) -> int | None:
    """The shell's convention (128 + signal) for a killed command, as bwrap reports it too;
    None after a timeout, where the signal was ours."""
    if timed_out or returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def _cgroup_verdict(cgroups: JobCgroups | None, limits: Limits) -> tuple[str, tuple[str, ...]]:
    """OOM as an error (the exit code alone cannot tell it from a crash), plus counters."""
    if cgroups is None:
        return "", ()
    peak = cgroups.read("memory", "memory.max_usage_in_bytes").strip() or "0"
    diagnostics = [f"memory peak {int(peak) >> 20} MiB (limit {limits.memory_bytes >> 20} MiB)"]
    refused = cgroups.read("pids", "pids.events").split()
    if refused[-1:] not in ([], ["0"]):
        diagnostics.append(f"fork refused {refused[-1]} times: pids limit {limits.pids} reached")
    oom_control = cgroups.read("memory", "memory.oom_control")
    if oom_killed(oom_control, cgroups.read("memory", "memory.failcnt")):
        return oom_error(limits.memory_bytes), tuple(diagnostics)
    return "", tuple(diagnostics)


# ---------------------------------------------------------------- committee doctor


def _sandboxed_python(data_dir: Path) -> tuple[bool, str]:
    """Start the interpreter the way a job would, to catch a venv hidden by the sandbox."""
    job = Job("doctor", "doctor", "", data_dir, "0" * 40, "", "", "", "", 30.0)
    dirs = job_dirs(data_dir, f"doctor-{os.getpid()}")
    command = 'python -c "import sys; print(sys.version.split()[0])"'
    try:
        for path in (dirs.src, dirs.out, dirs.home, dirs.tmp):
            path.mkdir(parents=True, exist_ok=True)
        env = sandbox_env(job, dirs)
        argv = bwrap_argv(
            BWRAP, command, dirs, env, data_dir=data_dir, network=False, keep=interpreter_roots()
        )
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    finally:
        shutil.rmtree(dirs.root, ignore_errors=True)
    if done.returncode != 0:
        return False, f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    return True, f"{env['PATH'].split(':')[0]}/python {done.stdout.strip()}"


def doctor_report(data_dir: Path) -> list[tuple[str, bool, str]]:
    """(check, ok, detail) for `committee doctor`."""
    data_dir = data_dir.resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(data_dir, os.W_OK)
    except OSError:
        writable = False
    sandbox = bwrap_problem()
    limits = cgroup_problem()
    git_path = shutil.which("git")
    report = [
        ("data directory", writable, f"{data_dir} {'writable' if writable else 'not writable'}"),
        ("git", git_path is not None, git_path or "git is not on PATH"),
        ("bubblewrap sandbox", not sandbox, sandbox or f"{BWRAP}: read-only host, no network"),
        ("cgroup v1 limits", not limits, limits or "memory and pids limits per job"),
    ]
    if not sandbox and writable:
        report.append(("python inside the sandbox", *_sandboxed_python(data_dir)))
    return report

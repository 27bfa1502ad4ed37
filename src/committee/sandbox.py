"""What a local job's sandbox is made of, computed without running anything.

The work directories of a job, its scrubbed environment, the bubblewrap command line that hides
the server's data (store, mirrors, other jobs) and the users' homes, and the cgroup v1 paths
that hold its limits. `executors/local.py` runs what this module describes.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from committee.executors import JUNIT_ENV, Job

JOB_MARKER_ENV = "COMMITTEE_JOB"  # lets a /proc sweep find the job's processes when all else fails
HIDDEN_DIRS = (Path("/root"), Path("/home"))  # where secrets (ssh keys, tokens) live
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_UID = 65534  # "nobody": what a command runs as when committee itself runs as root
# Without a user namespace (which would map the command back to real root) but with everything
# else new; the command then drops to SANDBOX_UID, with no capabilities and no way back.
ROOT_NAMESPACES = ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts")
ROOT_NAMESPACES_TRY = ("--unshare-cgroup-try",)
SETPRIV = "/usr/bin/setpriv"
SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
CGROUP_CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class JobDirs:
    root: Path
    src: Path
    out: Path
    home: Path
    tmp: Path

    @property
    def started_marker(self) -> Path:
        """Touched just before the command starts: files newer than it were written by the job."""
        return self.root / "started"


def job_dirs(data_dir: Path, job_id: str) -> JobDirs:
    root = data_dir.resolve() / "jobs" / job_id
    return JobDirs(root, root / "src", root / "out", root / "home", root / "tmp")


def sandbox_env(job: Job, dirs: JobDirs, python_bin: str | None = None) -> dict[str, str]:
    """The whole environment of the command: nothing is inherited from the server."""
    bin_dir = python_bin or os.path.dirname(sys.executable)
    env = {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "HOME": str(dirs.home),
        "TMPDIR": str(dirs.tmp),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "CI": "true",
        "COMMITTEE": "1",
        "COMMITTEE_COMMIT": job.commit,
        JUNIT_ENV: str(dirs.out / "junit.xml"),
        "PYTHONDONTWRITEBYTECODE": "1",
        **job.env,
    }
    env[JOB_MARKER_ENV] = job.job_id  # after job.env: the kill sweep relies on it
    return env


def interpreter_roots() -> list[Path]:
    """Directories the running Python needs: its venv and the installation the venv points to."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    return sorted(Path(os.path.realpath(root)) for root in roots)


def _under(path: Path, parents: Iterable[Path]) -> bool:
    return any(path == parent or parent in path.parents for parent in parents)


def _traversable_parents(path: Path, masked: Iterable[Path]) -> list[str]:
    """bwrap creates missing mount points 0700, which an unprivileged command cannot cross: make
    the directories between a mask and a path bound back under it 0755 first."""
    argv: list[str] = []
    for parent in reversed(path.parents):
        if any(mask in parent.parents for mask in masked):
            argv += ["--perms", "0755", "--dir", str(parent)]
    return argv


def bwrap_argv(
    bwrap: str,
    command: str,
    dirs: JobDirs,
    env: Mapping[str, str],
    *,
    data_dir: Path,
    network: bool,
    keep: Iterable[Path] = (),
    run_as: int | None = None,
) -> list[str]:
    """Read-only host, with /tmp, the homes and the data dir masked by empty tmpfs; the `keep`
    directories (the interpreter) bound back read-only if masked; the job's own dirs writable.
    Later mounts go on top of earlier ones, hence the order. With `run_as` (committee runs as
    root), the command runs as that uid through setpriv, so root-only files stay closed to it."""
    masked = [Path("/tmp"), *HIDDEN_DIRS, data_dir.resolve()]
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path in masked:
        argv += ["--tmpfs", str(path)]
    for path in keep:
        if _under(path, masked):
            argv += [*_traversable_parents(path, masked), "--ro-bind", str(path), str(path)]
    for path in (dirs.src, dirs.out, dirs.home, dirs.tmp):
        argv += [*_traversable_parents(path, masked), "--bind", str(path), str(path)]
    argv += ["--chdir", str(dirs.src), "--die-with-parent", "--new-session", "--clearenv"]
    if run_as is None:
        argv += ["--unshare-all", *(["--share-net"] if network else []), "--cap-drop", "ALL"]
    else:
        namespaces = [n for n in ROOT_NAMESPACES if not (network and n == "--unshare-net")]
        argv += [*namespaces, *ROOT_NAMESPACES_TRY, "--cap-drop", "ALL"]
        for cap in SETPRIV_CAPS:  # only for setpriv, which drops them all before exec
            argv += ["--cap-add", cap]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return [*argv, *drop_privileges(run_as), "/bin/sh", "-c", command]


def drop_privileges(uid: int | None) -> list[str]:
    if uid is None:
        return []
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return [SETPRIV, *ids, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]


# ---------------------------------------------------------------- cgroup v1


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """`/proc/<pid>/cgroup` as {controller: path}; 'cpu,cpuacct' lines give both names."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def cgroup_parents(mount: Path, own: Mapping[str, str]) -> dict[str, Path]:
    """Jobs' cgroups go below the server's own cgroup (nested, so whatever limits the server is
    under still count), in a `committee` directory."""
    return {c: mount / c / own.get(c, "/").lstrip("/") / "committee" for c in CGROUP_CONTROLLERS}


def limit_files(memory_bytes: int, pids: int) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write, in order: memsw may not go below the memory limit, so
    it comes after it (and it is only there when swap accounting is on)."""
    return [
        ("memory", "memory.limit_in_bytes", str(memory_bytes)),
        ("memory", "memory.memsw.limit_in_bytes", str(memory_bytes)),
        ("pids", "pids.max", str(pids)),
    ]


_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)


def oom_killed(oom_control: str, failcnt: str) -> bool:
    """`oom_kill` counts kills; old kernels lack it, then hitting the limit at all is the hint."""
    match = _OOM_KILL.search(oom_control)
    if match:
        return int(match.group(1)) > 0
    return failcnt.strip() not in ("", "0")


def oom_error(memory_bytes: int) -> str:
    return f"OOMKilled: memory limit {memory_bytes // (1 << 20)} MiB exceeded"


# ---------------------------------------------------------------- JUnit XML files

JUNIT_SKIP_DIRS = frozenset({".git", "node_modules", ".venv", "__pycache__"})
JUNIT_MAX_BYTES = 20 << 20


def is_junit_name(name: str) -> bool:
    return name.endswith(".xml") and (name.startswith("junit") or name.startswith("TEST-"))

"""The sandbox description, computed without running anything."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from committee.executors import Job
from committee.sandbox import (
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

SHA = "a" * 40


def make_job(**changes: object) -> Job:
    fields: dict[str, object] = {
        "job_id": "j-1",
        "run_id": "r",
        "repo_url": "/repo",
        "mirror": Path("/data/mirrors/x.git"),
        "commit": SHA,
        "command": "pytest -q",
        "project_type": "python",
        "user_id": "u",
        "chat_id": "c",
        "timeout_s": 60.0,
    }
    return Job(**{**fields, **changes})  # type: ignore[arg-type]


def test_job_dirs_live_under_the_data_dir(tmp_path: Path) -> None:
    dirs = job_dirs(tmp_path, "j-1")
    assert dirs.root == tmp_path.resolve() / "jobs" / "j-1"
    assert [dirs.src.name, dirs.out.name, dirs.home.name, dirs.tmp.name] == [
        "src",
        "out",
        "home",
        "tmp",
    ]
    assert dirs.started_marker.parent == dirs.root  # not visible from src or out


def test_env_is_built_from_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    dirs = job_dirs(tmp_path, "j-1")
    env = sandbox_env(make_job(env={"FOO": "bar"}), dirs, python_bin="/venv/bin")
    assert "GITHUB_TOKEN" not in env
    assert env["PATH"] == "/venv/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["HOME"] == str(dirs.home)
    assert env["TMPDIR"] == str(dirs.tmp)
    assert env["COMMITTEE_COMMIT"] == SHA
    assert env["COMMITTEE_JUNIT"] == str(dirs.out / "junit.xml")
    assert env["FOO"] == "bar"
    assert env["COMMITTEE_JOB"] == "j-1"


def test_env_defaults_to_this_interpreter_and_keeps_the_job_marker(tmp_path: Path) -> None:
    env = sandbox_env(make_job(env={"COMMITTEE_JOB": "other"}), job_dirs(tmp_path, "j-1"))
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert env["COMMITTEE_JOB"] == "j-1"  # the kill sweep depends on it


def _mounts(argv: list[str]) -> list[tuple[str, str]]:
    """(option, destination) of each mount option, in order."""
    found = []
    for i, arg in enumerate(argv):
        if arg in ("--tmpfs", "--dev", "--proc"):
            found.append((arg, argv[i + 1]))
        elif arg in ("--bind", "--ro-bind"):
            found.append((arg, argv[i + 2]))
    return found


def test_bwrap_masks_secrets_then_binds_the_job_dirs_on_top(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dirs = job_dirs(data, "j-1")
    venv_root = Path("/root/.pyenv/versions/3.11.7")
    argv = bwrap_argv(
        "/usr/bin/bwrap",
        "pytest -q",
        dirs,
        {"PATH": "/x"},
        data_dir=data,
        network=False,
        keep=[venv_root, Path("/usr")],
    )
    mounts = _mounts(argv)
    assert mounts[0] == ("--ro-bind", "/")
    for hidden in ("/tmp", "/root", "/home", str(data.resolve())):
        assert ("--tmpfs", hidden) in mounts
    # The interpreter under /root comes back (after /root is masked); /usr was never hidden.
    assert mounts.index(("--ro-bind", str(venv_root))) > mounts.index(("--tmpfs", "/root"))
    assert ("--ro-bind", "/usr") not in mounts
    # The job's dirs live under the masked data dir (and here under /tmp): they come last.
    last_tmpfs = max(i for i, (option, _) in enumerate(mounts) if option == "--tmpfs")
    for path in (dirs.src, dirs.out, dirs.home, dirs.tmp):
        assert mounts.index(("--bind", str(path))) > last_tmpfs
    assert "--share-net" not in argv
    assert argv[argv.index("--chdir") + 1] == str(dirs.src)
    assert {"--unshare-all", "--die-with-parent", "--new-session", "--clearenv"} <= set(argv)
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[-3:] == ["/bin/sh", "-c", "pytest -q"]
    assert argv[argv.index("--setenv") : argv.index("--setenv") + 3] == ["--setenv", "PATH", "/x"]


def test_bwrap_as_root_drops_to_an_unprivileged_uid(tmp_path: Path) -> None:
    argv = bwrap_argv(
        "bwrap", "make", job_dirs(tmp_path, "j"), {}, data_dir=tmp_path, network=False, run_as=65534
    )
    # No user namespace: inside one, the command would be real root again.
    assert "--unshare-all" not in argv and "--unshare-user" not in argv
    assert {"--unshare-pid", "--unshare-net", "--unshare-ipc"} <= set(argv)
    setpriv = argv.index("/usr/bin/setpriv")
    assert argv[setpriv + 1 : setpriv + 3] == ["--reuid=65534", "--regid=65534"]
    assert {"--bounding-set=-all", "--no-new-privs"} <= set(argv[setpriv:])
    assert argv[-3:] == ["/bin/sh", "-c", "make"]
    shared = bwrap_argv(
        "bwrap", "make", job_dirs(tmp_path, "j"), {}, data_dir=tmp_path, network=True, run_as=1
    )
    assert "--unshare-net" not in shared


def test_bwrap_shares_the_network_only_when_asked(tmp_path: Path) -> None:
    argv = bwrap_argv("bwrap", "true", job_dirs(tmp_path, "j"), {}, data_dir=tmp_path, network=True)
    assert "--share-net" in argv


def test_interpreter_roots_hold_the_running_python() -> None:
    real = Path(os.path.realpath(sys.executable))
    assert any(root in real.parents for root in interpreter_roots())


def test_parse_proc_cgroup_splits_joined_controllers() -> None:
    text = "4:memory:/process_api/abc\n8:pids:/\n1:cpu,cpuacct:/x\n0::/\n"
    assert parse_proc_cgroup(text) == {
        "memory": "/process_api/abc",
        "pids": "/",
        "cpu": "/x",
        "cpuacct": "/x",
    }


def test_cgroup_parents_nest_under_the_servers_own_cgroup() -> None:
    parents = cgroup_parents(Path("/sys/fs/cgroup"), {"memory": "/process_api/abc", "pids": "/"})
    assert parents == {
        "memory": Path("/sys/fs/cgroup/memory/process_api/abc/committee"),
        "pids": Path("/sys/fs/cgroup/pids/committee"),
    }


def test_limit_files_set_memory_before_memsw() -> None:
    names = [name for _, name, _ in limit_files(1 << 30, 64)]
    assert names.index("memory.limit_in_bytes") < names.index("memory.memsw.limit_in_bytes")
    assert ("pids", "pids.max", "64") in limit_files(1 << 30, 64)


def test_oom_is_read_from_the_kill_counter() -> None:
    assert oom_killed("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", "0")
    assert not oom_killed("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", "12")
    assert oom_killed("oom_kill_disable 0\nunder_oom 0\n", "3")  # old kernel: no counter
    assert oom_error(256 << 20) == "OOMKilled: memory limit 256 MiB exceeded"


def test_junit_names() -> None:
    assert is_junit_name("junit.xml") and is_junit_name("TEST-com.example.FooTest.xml")
    assert is_junit_name("junit-unit.xml")
    assert not is_junit_name("pom.xml") and not is_junit_name("junit.txt")

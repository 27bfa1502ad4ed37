"""Core benchmark: committee against checking out and running by hand.

    .venv/bin/python bench/bench_core.py [--commits N] [--json PATH]

Builds a repository of N commits in a temporary folder, then measures:
- overhead per commit: committee (local sandbox, --jobs 1, no cache) minus a plain loop that
  checks each commit out in one clone and runs the same trivial command (`true`);
- cache hit per commit: the same run again with the result cache on;
- --jobs speed-up on a CPU-bound command: --jobs 1 against --jobs <cores>, beside the
  machine's own ceiling (the bare command run <cores> at a time with xargs);
- peak memory: the largest resident size of any process the runs started (sandbox launcher,
  shell, command), and the growth of committee's own resident size.
Prints the figures and writes them as JSON (default bench/results/core.json). Targets from the
issue: <= 30 ms overhead per commit, <= 10 ms per cache hit, speed-up >= 0.9 x cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from committee.engine import Engine, collect
from committee.executors import create_executor
from committee.models import RunRequest
from committee.store import Store
from repos import git, numbered_repo

CPU_COMMAND = "python3 -c 'sum(i * i for i in range(4_000_000))'"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def committee_run(
    data_dir: Path, repo: Path, shas: list[str], command: str, jobs: int, no_cache: bool
) -> float:
    executor = create_executor("local", data_dir)
    store = await Store.open(data_dir / "committee.db")
    request = RunRequest(repo_url=str(repo), commits=shas, test_command=command, no_cache=no_cache)
    try:
        async with Engine(store, executor, data_dir, max_concurrent=jobs) as engine:
            started = time.perf_counter()
            finished = await collect(engine, await engine.submit(request))
            elapsed = time.perf_counter() - started
    finally:
        await store.aclose()
        await executor.aclose()
    assert all(r.status.value == "passed" for r in finished.results), finished.results
    return elapsed


# The same interpreter first on PATH as inside the sandbox, so both sides run the same python3.
DIRECT_ENV = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


def direct_run(repo: Path, shas: list[str], command: str, workdir: Path) -> float:
    subprocess.run(["git", "clone", "-q", str(repo), str(workdir)], check=True)
    started = time.perf_counter()
    for sha in shas:
        git(workdir, "checkout", "-q", "--detach", sha)
        subprocess.run(command, shell=True, cwd=workdir, check=True, env=DIRECT_ENV)
    return time.perf_counter() - started


def direct_parallel(count: int, command: str, jobs: int) -> float:
    """The machine's own ceiling: the command `count` times, `jobs` at once, no checkout."""
    started = time.perf_counter()
    xargs = f"seq {count} | xargs -P {jobs} -I{{}} sh -c {shlex.quote(command)}"
    subprocess.run(xargs, shell=True, check=True, env=DIRECT_ENV)
    return time.perf_counter() - started


async def measure(commits: int) -> dict[str, float | int]:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="committee-bench-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        shas = numbered_repo(repo, commits)
        data_dir = root / "data"
        data_dir.mkdir()
        # Warm the mirror so both sides start from a local clone.
        await committee_run(data_dir, repo, shas[:1], "true", 1, True)
        rss_before = rss_mib()
        direct = direct_run(repo, shas, "true", root / "direct")
        sandboxed = await committee_run(data_dir, repo, shas, "true", 1, True)
        await committee_run(data_dir, repo, shas, "true", 1, False)  # fill the cache
        cached = await committee_run(data_dir, repo, shas, "true", 1, False)
        cpu_direct = direct_run(repo, shas, CPU_COMMAND, root / "direct-cpu")
        ceiling = cpu_direct / direct_parallel(commits, CPU_COMMAND, cores)
        serial = await committee_run(data_dir, repo, shas, CPU_COMMAND, 1, True)
        parallel = await committee_run(data_dir, repo, shas, CPU_COMMAND, cores, True)
        rss_after = rss_mib()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "commits": commits,
        "cores": cores,
        "direct_s_per_commit": round(direct / commits, 4),
        "committee_s_per_commit": round(sandboxed / commits, 4),
        "overhead_ms_per_commit": round((sandboxed - direct) / commits * 1000, 1),
        "cache_hit_ms_per_commit": round(cached / commits * 1000, 1),
        "cpu_direct_s": round(cpu_direct, 2),
        "cpu_jobs1_s": round(serial, 2),
        "cpu_jobsN_s": round(parallel, 2),
        "speedup": round(serial / parallel, 2),
        "speedup_target": round(0.9 * cores, 2),
        "machine_speedup_ceiling": round(ceiling, 2),
        "peak_child_rss_mib": round(children, 1),
        "committee_rss_growth_mib": round(rss_after - rss_before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20)
    default_json = Path(__file__).parent / "results" / "core.json"
    parser.add_argument("--json", type=Path, default=default_json)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.commits))
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()

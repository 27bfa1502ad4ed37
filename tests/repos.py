"""Real git repositories for tests, made in temporary folders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=GIT_ENV, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_repo(path: Path, files_per_commit: list[dict[str, str]]) -> list[str]:
    """A repository whose commit i writes files_per_commit[i]; returns the SHAs, oldest first."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    shas = []
    for index, files in enumerate(files_per_commit):
        for name, text in files.items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git(path, "add", "-A")
        git(path, "commit", "-q", "--allow-empty", "-m", f"commit {index}")
        shas.append(git(path, "rev-parse", "HEAD"))
    return shas


def numbered_repo(path: Path, count: int) -> list[str]:
    """`count` commits, each with a different tree (n.txt holds the commit's number)."""
    return make_repo(path, [{"n.txt": f"{i}\n"} for i in range(count)])

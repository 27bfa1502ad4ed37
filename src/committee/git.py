"""Git, asynchronously: the mirror cache, resolving commit names, materialising a commit.

One bare mirror per repository URL under `<data_dir>/mirrors/`; each commit is materialised
into a fresh directory from that mirror (`git archive | tar -x` by default: measured fastest,
see shared notes; `clone` mode gives a real `.git` for projects that need one).
All git calls go through asyncio subprocesses with a scrubbed environment (no prompts, no
user config), and their failures become BadRepository / UnknownCommit / GitError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from committee.models import CommitRef

CheckoutMode = Literal["archive", "clone"]


def mirror_path(data_dir: Path, repo_url: str) -> Path:
    """Where the bare mirror of `repo_url` lives: stable, filesystem-safe, unique per URL."""
    raise NotImplementedError


def normalize_repo_url(repo_url: str, cwd: Path | None = None) -> str:
    """Local paths become absolute `file://` URLs' paths; URLs are kept. Raises BadRepository for
    things that are neither (empty, option-like '-x', unsupported scheme)."""
    raise NotImplementedError


async def ensure_mirror(data_dir: Path, repo_url: str, specs: list[str]) -> Path:
    """Create or update the mirror of repo_url so that every name in `specs` can be resolved.
    Skips the fetch when every spec is a full SHA already present. Raises BadRepository."""
    raise NotImplementedError


async def resolve(mirror: Path, specs: list[str], *, source: Path | None = None) -> list[CommitRef]:
    """Resolve commit names to full SHAs, before anything runs.

    Accepts full/short SHAs, branch and tag names, HEAD~N, and ranges A..B (expanded oldest to
    newest, like `git rev-list --reverse`). For a local repository `source` is its path and
    names like HEAD are resolved there (the user's checkout), else in the mirror.
    Raises UnknownCommit naming every bad name, BadInput for names beginning with '-'.
    Each CommitRef carries sha, ref (the name given; for range members the short SHA), subject
    and tree SHA."""
    raise NotImplementedError


async def materialize(
    mirror: Path, commit: str, dest: Path, mode: CheckoutMode = "archive"
) -> None:
    """Write the tree of `commit` into the new directory `dest` (which must not exist)."""
    raise NotImplementedError

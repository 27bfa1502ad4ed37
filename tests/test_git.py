"""committee.git against real repositories made with `git init` in tmp_path."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from committee.errors import BadInput, BadRepository, UnknownCommit
from committee.git import (
    commit_exists,
    ensure_mirror,
    local_source,
    materialize,
    mirror_path,
    normalize_repo_url,
    resolve,
)
from repos import git


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Source:
    path: Path
    shas: list[str]  # c1..c5, oldest first; tag v2 = c2, branch feature = c3, main = c5


@pytest.fixture
def source(tmp_path: Path) -> Source:
    path = tmp_path / "src"
    git(tmp_path, "init", "--quiet", "-b", "main", str(path))
    shas = [commit(path, {"n.txt": f"{i}\n", f"c{i}.txt": ""}, f"commit {i}") for i in range(1, 6)]
    git(path, "tag", "v2", shas[1])
    git(path, "branch", "feature", shas[2])
    return Source(path, shas)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def mirror(data_dir: Path, source: Source) -> Path:
    return await ensure_mirror(data_dir, str(source.path), ["HEAD"])


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every process committee.git starts from now on."""
    calls: list[list[str]] = []
    real = asyncio.create_subprocess_exec

    async def spy(*argv: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        calls.append([str(arg) for arg in argv])
        return await real(*argv, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    return calls


def network_calls(calls: list[list[str]]) -> list[list[str]]:
    return [argv for argv in calls if {"clone", "fetch"} & set(argv)]


# ---------------------------------------------------------------- repository URLs


def test_local_paths_become_absolute_and_urls_are_kept(source: Source, tmp_path: Path) -> None:
    assert normalize_repo_url("src", cwd=tmp_path) == str(source.path)
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "--quiet", "--bare", str(bare))
    assert normalize_repo_url(str(bare)) == str(bare)
    for url in (
        "https://github.com/org/repo.git",
        "http://127.0.0.1:8000/repo",
        "ssh://git@host:2222/org/repo.git",
        "git@github.com:org/repo.git",
        "file:///srv/repo.git",
    ):
        assert normalize_repo_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "-oProxyCommand=evil",
        "--upload-pack=touch /tmp/x",
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "ftp://host/repo.git",
        "ssh://-oProxyCommand=evil/repo",
        "https:///no-host",
    ],
)
def test_bad_urls_are_rejected(url: str) -> None:
    with pytest.raises(BadRepository):
        normalize_repo_url(url)


def test_missing_path_and_plain_directory_are_bad_repositories(tmp_path: Path) -> None:
    with pytest.raises(BadRepository, match="no such directory"):
        normalize_repo_url(str(tmp_path / "nope"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(BadRepository, match="not a git repository"):
        normalize_repo_url("plain", cwd=tmp_path)


def test_local_source_only_for_local_urls() -> None:
    assert local_source("/srv/repo") == Path("/srv/repo")
    assert local_source("file:///srv/my%20repo.git") == Path("/srv/my repo.git")
    assert local_source("https://github.com/org/repo.git") is None
    assert local_source("git@github.com:org/repo.git") is None


def test_mirror_path_is_stable_safe_and_unique(tmp_path: Path) -> None:
    path = mirror_path(tmp_path, "git@github.com:org/My Repo.git")
    assert path == mirror_path(tmp_path, "git@github.com:org/My Repo.git")
    assert path.parent == tmp_path / "mirrors"
    assert re.fullmatch(r"My_Repo-[0-9a-f]{12}\.git", path.name)
    assert path != mirror_path(tmp_path, "git@gitlab.com:org/My Repo.git")
    assert mirror_path(tmp_path, "https://host/../..").parent == tmp_path / "mirrors"


# ---------------------------------------------------------------- the mirror


async def test_unreachable_file_url_is_a_bad_repository(data_dir: Path) -> None:
    with pytest.raises(BadRepository, match="does not appear to be a git repository"):
        await ensure_mirror(data_dir, "file:///nonexistent/repo.git", ["HEAD"])
    assert list((data_dir / "mirrors").glob("*.git")) == []
    assert list((data_dir / "mirrors").glob(".*tmp*")) == []


async def test_bad_local_path_is_a_bad_repository(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BadRepository):
        await ensure_mirror(data_dir, str(tmp_path / "nope"), ["HEAD"])


async def test_network_timeout_kills_git_and_is_a_bad_repository(data_dir: Path) -> None:
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/repo.git"
        with pytest.raises(BadRepository, match="timed out"):
            await ensure_mirror(data_dir, url, ["HEAD"], timeout_s=0.5)
    assert list((data_dir / "mirrors").glob("*.git")) == []


async def test_mirror_with_every_sha_present_is_not_fetched(
    mirror: Path,
    data_dir: Path,
    source: Source,
    git_calls: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(data_dir.parent)  # a relative data_dir names the same mirror
    assert await ensure_mirror(Path("data"), str(source.path), source.shas) == mirror
    assert network_calls(git_calls) == []
    await ensure_mirror(data_dir, str(source.path), ["main"])
    assert len(network_calls(git_calls)) == 1  # a name can move: always fetched


async def test_new_commits_appear_after_ensure_mirror_again(
    mirror: Path, data_dir: Path, source: Source
) -> None:
    new = commit(source.path, {"new.txt": "new\n"}, "commit 6")
    assert not await commit_exists(mirror, new)
    await ensure_mirror(data_dir, str(source.path), [new])
    assert await commit_exists(mirror, new)
    assert [c.sha for c in await resolve(mirror, ["main"])] == [new]


async def test_concurrent_first_use_clones_once(
    data_dir: Path, source: Source, git_calls: list[list[str]]
) -> None:
    first, second = await asyncio.gather(
        ensure_mirror(data_dir, str(source.path), source.shas),
        ensure_mirror(data_dir, str(source.path), source.shas),
    )
    assert first == second
    assert len([argv for argv in git_calls if "clone" in argv]) == 1


# ---------------------------------------------------------------- resolving names


@pytest.mark.parametrize(
    ("name", "index"),
    [("short", 3), ("full", 0), ("feature", 2), ("v2", 1), ("HEAD~2", 2), ("HEAD", 4)],
)
async def test_resolves_each_kind_of_name(
    mirror: Path, source: Source, name: str, index: int
) -> None:
    spec = {"short": source.shas[3][:7], "full": source.shas[0]}.get(name, name)
    [ref] = await resolve(mirror, [spec])
    assert ref.sha == source.shas[index]
    assert ref.ref == spec
    assert ref.subject == f"commit {index + 1}"
    assert ref.tree == git(source.path, "rev-parse", f"{ref.sha}^{{tree}}")


async def test_range_is_expanded_like_rev_list_reverse(mirror: Path, source: Source) -> None:
    refs = await resolve(mirror, ["v2..main"])
    expected = git(source.path, "rev-list", "--reverse", "v2..main").split()
    assert [r.sha for r in refs] == expected == source.shas[2:]
    assert all(re.fullmatch(r"[0-9a-f]{7,12}", r.ref) and r.sha.startswith(r.ref) for r in refs)
    assert [r.subject for r in refs] == ["commit 3", "commit 4", "commit 5"]


async def test_order_is_kept_and_repeats_dropped(mirror: Path, source: Source) -> None:
    refs = await resolve(mirror, ["HEAD", "HEAD~3", "HEAD~1", "v2", "v2..feature"])
    assert [r.sha for r in refs] == [source.shas[i] for i in (4, 1, 3, 2)]
    assert [r.ref for r in refs][:3] == ["HEAD", "HEAD~3", "HEAD~1"]


async def test_unknown_names_are_all_reported(mirror: Path) -> None:
    with pytest.raises(UnknownCommit) as caught:
        await resolve(mirror, ["HEAD", "nope", "v9..HEAD", "deadbeef"])
    for name in ("nope", "v9..HEAD", "deadbeef"):
        assert name in caught.value.message
    assert "HEAD," not in caught.value.message.replace("v9..HEAD,", "")


async def test_empty_range_is_bad_input(mirror: Path) -> None:
    with pytest.raises(BadInput, match=r"HEAD\.\.HEAD") as caught:
        await resolve(mirror, ["HEAD..HEAD"])
    assert type(caught.value) is BadInput


@pytest.mark.parametrize("name", ["-rf", "--upload-pack=x", "", "HEAD\nmain"])
async def test_option_like_names_are_refused_before_any_git(
    tmp_path: Path, git_calls: list[list[str]], name: str
) -> None:
    with pytest.raises(BadInput, match="invalid commit names"):
        await resolve(tmp_path / "no-mirror", ["HEAD", name])
    assert git_calls == []


async def test_head_resolves_in_the_users_checkout(mirror: Path, source: Source) -> None:
    git(source.path, "checkout", "--quiet", "feature")
    [in_source] = await resolve(mirror, ["HEAD"], source=source.path)
    [in_mirror] = await resolve(mirror, ["HEAD"])
    assert (in_source.sha, in_mirror.sha) == (source.shas[2], source.shas[4])


# ---------------------------------------------------------------- materialising


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work" / "nested" / "checkout"


async def test_archive_writes_the_commits_files(mirror: Path, source: Source, work: Path) -> None:
    await materialize(mirror, source.shas[1], work)
    assert sorted(os.listdir(work)) == ["c1.txt", "c2.txt", "n.txt"]
    assert (work / "n.txt").read_text() == "2\n"


async def test_clone_writes_files_and_a_detached_git(
    mirror: Path, source: Source, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work.parent.parent.mkdir()
    monkeypatch.chdir(work.parent.parent)  # relative paths work too
    await materialize(
        Path("../data/mirrors") / mirror.name, source.shas[2], Path("nested/checkout"), mode="clone"
    )
    assert (work / "n.txt").read_text() == "3\n"
    assert not (work / "c4.txt").exists()
    assert git(work, "rev-parse", "HEAD") == source.shas[2]
    assert git(work, "status", "--porcelain") == ""
    assert not (work / ".git" / "objects" / "info" / "alternates").exists()


async def test_archive_ignores_export_ignore(
    data_dir: Path, source: Source, tmp_path: Path
) -> None:
    sha = commit(source.path, {".gitattributes": "tests export-ignore\n", "tests/t.py": ""}, "attr")
    mirror = await ensure_mirror(data_dir, str(source.path), ["HEAD"])
    await materialize(mirror, sha, tmp_path / "out")
    assert (tmp_path / "out" / "tests" / "t.py").exists()


async def test_materialize_refuses_existing_dest_and_names(
    mirror: Path, source: Source, tmp_path: Path
) -> None:
    with pytest.raises(FileExistsError):
        await materialize(mirror, source.shas[0], tmp_path)
    with pytest.raises(BadInput):
        await materialize(mirror, "HEAD", tmp_path / "out")
    assert not (tmp_path / "out").exists()


async def test_detached_head_commits_resolve_and_materialise(
    mirror: Path, data_dir: Path, source: Source, tmp_path: Path
) -> None:
    git(source.path, "checkout", "--quiet", "--detach")
    sha = commit(source.path, {"detached.txt": "d\n"}, "on a detached HEAD")
    await ensure_mirror(data_dir, str(source.path), ["HEAD"])
    [ref] = await resolve(mirror, ["HEAD"], source=source.path)
    assert (ref.sha, ref.subject) == (sha, "on a detached HEAD")
    await materialize(mirror, sha, tmp_path / "out")
    assert (tmp_path / "out" / "detached.txt").read_text() == "d\n"


async def test_commit_only_in_source_is_reported_not_fetched(mirror: Path, source: Source) -> None:
    sha = commit(source.path, {"late.txt": ""}, "made after the fetch")
    with pytest.raises(UnknownCommit, match=sha):
        await resolve(mirror, ["HEAD"], source=source.path)

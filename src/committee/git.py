"""Git, asynchronously: the mirror cache, resolving commit names, materialising a commit.

One bare mirror per repository URL under `<data_dir>/mirrors/`; each commit is materialised
into a fresh directory from that mirror (`git archive | tar -x` by default: measured fastest,
see shared notes; `clone` mode gives a real `.git` for projects that need one).
All git calls go through asyncio subprocesses with a scrubbed environment (no prompts, no
user config), and their failures become BadRepository / UnknownCommit / GitError.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from committee.errors import BadInput, BadRepository, GitError, UnknownCommit
from committee.models import CommitRef

CheckoutMode = Literal["archive", "clone"]

NETWORK_TIMEOUT_S = 300.0
_URL_SCHEMES = {"https", "http", "ssh", "file"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")  # git's `ext::cmd` form runs commands
_SCP = re.compile(r"^(?:[^@/:\s]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:[^\s].*$")
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # used with fullmatch
_FOUND = re.compile(r"([0-9a-f]{40}|[0-9a-f]{64}) commit")
_USERINFO = re.compile(r"://[^/@\s]*@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PASSED_ENV = ("PATH", "HOME", "TMPDIR", "SSH_AUTH_SOCK", "SSL_CERT_FILE", "SSL_CERT_DIR")
_PROXY_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_LOCAL_HEAD_REF = "refs/committee/HEAD"


def _scrubbed_env() -> dict[str, str]:
    """No prompts, no system or global config, no inherited GIT_DIR & co, only safe transports."""
    env = {name: os.environ[name] for name in (*_PASSED_ENV, *_PROXY_ENV) if name in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.update(
        LC_ALL="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_ASKPASS="/bin/true",
        SSH_ASKPASS="/bin/true",
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",
        GIT_ALLOW_PROTOCOL="file:http:https:ssh",
    )
    return env


# ---------------------------------------------------------------- processes


def _reason(stderr: bytes | str, code: int | None) -> str:
    """A tool's own words: its first `fatal:`/`error:` line (the cause; generic advice and
    hints follow it), else its last line."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return fatal[0] if fatal else (lines or [f"exit status {code}"])[-1]


@dataclass(frozen=True)
class _Done:
    code: int
    out: str
    err: str

    def reason(self) -> str:
        return _reason(self.err, self.code)


async def _spawn(
    argv: Sequence[str],
    cwd: Path,
    stdin: int = asyncio.subprocess.DEVNULL,
    stdout: int = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    # A session of its own, so a kill reaches the helpers git starts (remote-https, ssh).
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=_scrubbed_env(),
            stdin=stdin,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:  # no such program, or cwd gone
        raise GitError(f"cannot run {argv[0]} in {cwd}: {exc}") from exc


async def _reap(
    procs: Sequence[asyncio.subprocess.Process], data: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    """Wait for every process (feeding `data` to the first); if cancelled (asyncio.timeout
    cancels too) kill them all, process groups included, before re-raising."""
    talks = [procs[0].communicate(data), *(proc.communicate() for proc in procs[1:])]
    try:
        return await asyncio.gather(*talks)
    except BaseException:
        await _kill(procs)
        raise


async def _kill(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with suppress(ProcessLookupError):  # exited meanwhile
                os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.gather(*(proc.wait() for proc in procs))


async def _git(args: Sequence[str], cwd: Path, *, data: str | None = None) -> _Done:
    stdin = asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL
    proc = await _spawn(["git", *args], cwd, stdin=stdin)
    [(out, err)] = await _reap([proc], None if data is None else data.encode())
    assert proc.returncode is not None
    return _Done(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def _git_ok(args: Sequence[str], cwd: Path, *, data: str | None = None) -> str:
    done = await _git(args, cwd, data=data)
    if done.code != 0:
        raise GitError(f"git {args[0]} failed in {cwd}: {done.reason()}")
    return done.out


async def _network_git(args: Sequence[str], cwd: Path, url: str, timeout_s: float) -> None:
    """clone/fetch: failures and timeouts mean the repository is wrong or out of reach."""
    url = _USERINFO.sub("://***@", url)  # no credentials in messages
    try:
        async with asyncio.timeout(timeout_s):
            done = await _git(args, cwd)
    except TimeoutError:
        raise BadRepository(
            f"git {args[0]} of {url} timed out after {timeout_s:g} s: is it reachable from here?"
        ) from None
    if done.code != 0:
        raise BadRepository(
            f"cannot {args[0]} {url}: {_USERINFO.sub('://***@', done.reason())} "
            "(check the URL, and that this machine can read it without a password prompt)"
        )


# ---------------------------------------------------------------- repository URLs


def _is_git_repo(path: Path) -> bool:
    bare = (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()
    return bare or (path / ".git").exists()


def _normalize_path(repo_url: str, cwd: Path | None) -> str:
    path = ((cwd or Path.cwd()) / Path(repo_url).expanduser()).resolve()
    if not path.is_dir():
        raise BadRepository(f"{repo_url}: no such directory ({path})")
    if not _is_git_repo(path):
        raise BadRepository(
            f"{path} is not a git repository: give the top-level directory of a git checkout, "
            "or a bare repository"
        )
    return str(path)


def _check_url(url: str, scheme: str) -> None:
    if scheme.lower() not in _URL_SCHEMES:
        raise BadRepository(f"{url}: unsupported scheme {scheme!r} (use https, http, ssh or file)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a broken [IPv6] host
        raise BadRepository(f"{url}: {exc}") from None
    if scheme.lower() != "file" and not (parts.hostname or "").strip():
        raise BadRepository(f"{url}: the URL has no host")
    if (parts.hostname or "").startswith("-"):
        raise BadRepository(f"{url}: a host name cannot begin with '-'")


def normalize_repo_url(repo_url: str, cwd: Path | None = None) -> str:
    """Local paths become absolute `file://` URLs' paths; URLs are kept. Raises BadRepository for
    things that are neither (empty, option-like '-x', unsupported scheme)."""
    url = repo_url.strip()
    if not url:
        raise BadRepository("the repository URL is empty")
    if url.startswith("-") or _CONTROL.search(url):
        raise BadRepository(f"{url!r} is not a repository URL or path")
    if _TRANSPORT.match(url):
        raise BadRepository(f"{url}: '<transport>::' URLs are not supported")
    scheme = _SCHEME.match(url)
    if scheme:
        _check_url(url, scheme.group(1))
        return url
    if _SCP.match(url):  # user@host:path, as git reads it: a ':' before any '/'
        return url
    return _normalize_path(url, cwd)


def local_source(repo_url: str) -> Path | None:
    """The directory of a normalized local repository URL (a path or file://), else None.
    Names like HEAD resolve there: pass it as `resolve(..., source=)`."""
    if repo_url.startswith("/"):
        return Path(repo_url)
    if repo_url.lower().startswith("file://"):
        return Path(unquote(urlsplit(repo_url).path))
    return None


def mirror_path(data_dir: Path, repo_url: str) -> Path:
    """Where the bare mirror of `repo_url` lives: stable, filesystem-safe, unique per URL, and
    absolute (git runs in other directories)."""
    last = re.split(r"[/:]", repo_url.rstrip("/"))[-1].removesuffix(".git")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", last).strip("._-")[:50] or "repo"
    digest = hashlib.sha256(repo_url.encode()).hexdigest()[:12]
    return data_dir.absolute() / "mirrors" / f"{name}-{digest}.git"


# ---------------------------------------------------------------- the mirror


@asynccontextmanager
async def _locked(lock_file: Path) -> AsyncIterator[None]:
    """An exclusive flock, between processes and between tasks of this one (each open is its
    own lock holder). Polled rather than blocking a thread, so cancelling the wait is clean."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


async def _clone_mirror(url: str, mirror: Path, timeout_s: float) -> None:
    # Clone beside the mirror, then rename: a crash never leaves a half mirror in place.
    # Under the lock, any earlier temporary clone is a crashed one.
    for stale in mirror.parent.glob(f".{mirror.name}.tmp-*"):
        await asyncio.to_thread(shutil.rmtree, stale, True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mirror.name}.tmp-", dir=mirror.parent))
    try:
        clone = ["clone", "--mirror", "--quiet", "--", url, str(tmp)]
        await _network_git(clone, tmp, url, timeout_s)
        _install_mirror(tmp, mirror)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
        raise


def _install_mirror(tmp: Path, mirror: Path) -> None:
    # Archives must hold what a checkout holds: export-ignore would drop files (often tests).
    (tmp / "info").mkdir(exist_ok=True)
    (tmp / "info" / "attributes").write_text("* -export-ignore -export-subst\n")
    tmp.rename(mirror)


async def _fetch(url: str, mirror: Path, timeout_s: float) -> None:
    refspecs = ["+refs/*:refs/*"]
    if local_source(url):  # the user's HEAD may be detached, on commits no ref reaches
        refspecs.append(f"+HEAD:{_LOCAL_HEAD_REF}")
    await _network_git(["fetch", "--prune", "--quiet", "origin", *refspecs], mirror, url, timeout_s)


async def ensure_mirror(
    data_dir: Path, repo_url: str, specs: list[str], *, timeout_s: float = NETWORK_TIMEOUT_S
) -> Path:
    """Create or update the mirror of repo_url so that every name in `specs` can be resolved.
    Skips the fetch when every spec is a full SHA already present. Raises BadRepository."""
    url = normalize_repo_url(repo_url)
    mirror = mirror_path(data_dir, url)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    async with _locked(mirror.with_name(mirror.name + ".lock")):
        if not mirror.exists():
            await _clone_mirror(url, mirror, timeout_s)
            if local_source(url):
                await _fetch(url, mirror, timeout_s)
        elif not await _all_present(mirror, specs):
            await _fetch(url, mirror, timeout_s)
    return mirror


async def _all_present(mirror: Path, specs: list[str]) -> bool:
    if not all(_FULL_SHA.fullmatch(spec) for spec in specs):
        return False
    return None not in (await _lookup(mirror, specs)).values()


async def commit_exists(mirror: Path, sha: str) -> bool:
    """Whether the mirror holds commit `sha` (a full SHA), without fetching."""
    return _FULL_SHA.fullmatch(sha) is not None and await _all_present(mirror, [sha])


# ---------------------------------------------------------------- resolving names


async def _lookup(repo: Path, names: Sequence[str]) -> dict[str, str | None]:
    """Each name's commit SHA, or None: one `cat-file --batch-check` for all of them."""
    if not names:
        return {}
    data = "".join(f"{name}^{{commit}}\n" for name in names)
    out = await _git_ok(["cat-file", "--batch-check=%(objectname) %(objecttype)"], repo, data=data)
    found = [_FOUND.fullmatch(line) for line in out.splitlines()]
    return {name: m.group(1) if m else None for name, m in zip(names, found, strict=True)}


async def _range(repo: Path, spec: str) -> list[str] | None:
    done = await _git(["rev-list", "--reverse", "--end-of-options", spec], repo)
    return done.out.split() if done.code == 0 else None


def _check_names(specs: Sequence[str]) -> None:
    """Refuse what git could read as an option, or what cannot be one line, before any git."""
    bad = [spec for spec in specs if not spec or spec.startswith("-") or _CONTROL.search(spec)]
    if bad:
        raise BadInput(f"invalid commit names: {', '.join(map(repr, bad))}")


async def _expand(repo: Path, specs: Sequence[str]) -> list[tuple[str, str | None]]:
    """(sha, name) in the order given, ranges expanded oldest first (name None), SHAs unique."""
    members: dict[str, list[str] | None] = {}
    names = list(dict.fromkeys(s for s in specs if ".." not in s))
    for name, sha in (await _lookup(repo, names)).items():
        members[name] = [sha] if sha else None
    for spec in dict.fromkeys(s for s in specs if ".." in s):
        members[spec] = await _range(repo, spec)
    unknown = [spec for spec in dict.fromkeys(specs) if members[spec] is None]
    if unknown:
        raise UnknownCommit(
            f"unknown commits: {', '.join(unknown)} (no such commit, branch or tag here)"
        )
    empty = [spec for spec in dict.fromkeys(specs) if members[spec] == []]
    if empty:
        raise BadInput(f"these ranges contain no commits: {', '.join(empty)}")
    pairs: dict[str, str | None] = {}
    for spec in specs:
        for sha in members[spec] or []:
            pairs.setdefault(sha, None if ".." in spec else spec)
    return list(pairs.items())


async def _describe(mirror: Path, shas: list[str], source: Path | None) -> dict[str, list[str]]:
    """sha -> [short sha, tree, subject], read from the mirror: it proves the commits are there."""
    if not shas:
        return {}
    fmt = "--format=%H%x00%h%x00%T%x00%s"
    done = await _git(["log", "--no-walk", "--stdin", fmt], mirror, data="\n".join(shas) + "\n")
    if done.code == 0:
        rows = [line.split("\0") for line in done.out.splitlines()]
        return {row[0]: row[1:] for row in rows}
    missing = [sha for sha, found in (await _lookup(mirror, shas)).items() if found is None]
    if not missing:
        raise GitError(f"git log failed in {mirror}: {done.reason()}")
    raise UnknownCommit(
        f"commits {', '.join(missing)} exist in {source or mirror} but were not fetched: no "
        "branch, tag or HEAD reaches them (or the repository changed meanwhile); put them on a "
        "branch and retry"
    )


async def resolve(mirror: Path, specs: list[str], *, source: Path | None = None) -> list[CommitRef]:
    """Resolve commit names to full SHAs, before anything runs.

    Accepts full/short SHAs, branch and tag names, HEAD~N, and ranges A..B (expanded oldest to
    newest, like `git rev-list --reverse`). For a local repository `source` is its path and
    names like HEAD are resolved there (the user's checkout), else in the mirror.
    Raises UnknownCommit naming every bad name, BadInput for names beginning with '-'.
    Each CommitRef carries sha, ref (the name given; for range members the short SHA), subject
    and tree SHA. A commit named twice is kept once, where it first appears."""
    _check_names(specs)
    pairs = await _expand(source or mirror, specs)
    details = await _describe(mirror, [sha for sha, _ in pairs], source)
    return [
        CommitRef(
            sha=sha, ref=ref or details[sha][0], tree=details[sha][1], subject=details[sha][2]
        )
        for sha, ref in pairs
    ]


# ---------------------------------------------------------------- materialising


async def _archive(mirror: Path, commit: str, dest: Path) -> None:
    """`git archive | tar -x`, the two processes joined by a pipe: no shell in between."""
    read_end, write_end = os.pipe()
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs.append(
            await _spawn(["git", "archive", "--format=tar", commit], mirror, stdout=write_end)
        )
        procs.append(await _spawn(["tar", "-x", "-f", "-", "-C", str(dest)], dest, stdin=read_end))
    except BaseException:
        await _kill(procs)
        raise
    finally:
        os.close(read_end)  # the children hold their own copies: EOF and EPIPE must reach them
        os.close(write_end)
    outputs = await _reap(procs)
    for proc, (_, err), what in zip(procs, outputs, ("git archive", "tar -x"), strict=True):
        if proc.returncode != 0:
            raise GitError(f"{what} of {commit} failed: {_reason(err, proc.returncode)}")


async def _clone(mirror: Path, commit: str, dest: Path) -> None:
    # A real copy (hardlinked objects), never --shared: the sandbox cannot see the mirror.
    await _git_ok(["clone", "--no-checkout", "--quiet", "--", str(mirror), str(dest)], dest)
    await _git_ok(["checkout", "--quiet", "--detach", commit], dest)


def _prepare(mirror: Path, dest: Path) -> tuple[Path, Path]:
    """Both made absolute (git runs in other directories), and `dest` created."""
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir()  # FileExistsError if it exists: never write over a directory
    return mirror.absolute(), dest


async def materialize(
    mirror: Path, commit: str, dest: Path, mode: CheckoutMode = "archive"
) -> None:
    """Write the tree of `commit` (a full SHA) into the new directory `dest` (which must not
    exist; its parents are created). On failure `dest` is removed again."""
    if not _FULL_SHA.fullmatch(commit):
        raise BadInput(f"materialize needs a full commit SHA, not {commit!r}")
    mirror, dest = _prepare(mirror, dest)
    try:
        await (_archive if mode == "archive" else _clone)(mirror, commit, dest)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, dest, True)
        raise

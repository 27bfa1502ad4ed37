"""`committee demo`: a real repository, several commits, one regression.

It is built from examples/fastapi-app: the service and its passing tests first, then the tests
of test_fail.py, a docs change, the regression (the in-stock filter lets sold-out items
through), and one more commit on top of it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from committee.errors import CommitteeError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi-app"
DEMO_COMMAND = 'python -m pytest -q -p no:cacheprovider --junitxml="$COMMITTEE_JUNIT"'
DEMO_COMMITS = ["HEAD~4", "HEAD~3", "HEAD~2", "HEAD~1", "HEAD"]

_GOOD_FILTER = 'int(item["stock"]) > 0'
_BAD_FILTER = 'int(item["stock"]) >= 0'


def _git(repo: Path, *args: str) -> None:
    env = {
        "GIT_AUTHOR_NAME": "Demo Dev",
        "GIT_AUTHOR_EMAIL": "demo@example.invalid",
        "GIT_COMMITTER_NAME": "Demo Dev",
        "GIT_COMMITTER_EMAIL": "demo@example.invalid",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


def _commit(repo: Path, message: str) -> None:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def build_demo_repo(dest: Path) -> Path:
    """(Re)create the demo repository at `dest` and return its path."""
    if not (EXAMPLE / "app" / "main.py").is_file():
        raise CommitteeError(f"the demo project is missing: expected it at {EXAMPLE}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    _git(dest, "init", "-q", "-b", "main")
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "test_fail.py")
    shutil.copytree(EXAMPLE, dest, dirs_exist_ok=True, ignore=ignore)
    _commit(dest, "Add inventory service with its passing tests")
    shutil.copy(EXAMPLE / "tests" / "test_fail.py", dest / "tests" / "test_fail.py")
    _commit(dest, "Test the in-stock filter and the cart total")
    with (dest / "README.md").open("a") as readme:
        readme.write("\nEndpoints: /health, /items, /items/{id}, /cart/total.\n")
    _commit(dest, "Document the endpoints")
    main = dest / "app" / "main.py"
    main.write_text(main.read_text().replace(_GOOD_FILTER, _BAD_FILTER))
    _commit(dest, "Simplify the stock filter")
    (dest / "CHANGELOG.md").write_text("# Changelog\n\n- 0.2: cart totals\n")
    _commit(dest, "Start a changelog")
    return dest

"""The one exception tree of committee.

    CommitteeError
    ├── BadInput                 the request is wrong: fix it and retry (CLI exit 2)
    │   ├── UnknownCommit        a commit name that the repository does not have
    │   ├── BadRepository        not a git repository, or not reachable
    │   ├── UnknownProjectType   no template for the project type
    │   └── MessageTooLarge      a protocol frame over the size limit
    ├── NotFound                 no such run / commit (or not yours)
    ├── AuthError                missing, unknown or revoked token
    ├── GitError                 git itself failed unexpectedly (the cause is kept)
    └── ExecutorError            the sandbox or cluster could not run a job
        └── TemporaryExecutorError  worth retrying (API unavailable, pod evicted by node loss)

A failing test is a result, never an exception.
"""

from __future__ import annotations


class CommitteeError(Exception):
    """Root of every error committee raises on purpose."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(CommitteeError):
    code = "bad_request"


class UnknownCommit(BadInput):
    code = "unknown_commit"


class BadRepository(BadInput):
    code = "bad_repository"


class UnknownProjectType(BadInput):
    code = "unknown_project_type"


class MessageTooLarge(BadInput):
    code = "message_too_large"


class NotFound(CommitteeError):
    code = "not_found"


class AuthError(CommitteeError):
    code = "unauthorized"


class GitError(CommitteeError):
    code = "git_error"


class ExecutorError(CommitteeError):
    code = "executor_error"


class TemporaryExecutorError(ExecutorError):
    code = "executor_unavailable"

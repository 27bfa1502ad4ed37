"""Who is asking, and which runs they may touch.

Bearer tokens come from the `Authorization` header, or from `?token=` for browsers (which cannot
set headers on a WebSocket). The store keeps only their hashes. With auth on, the user id comes
from the token and a user sees only their own runs: another user's run answers `not_found`,
exactly like a missing one, so run ids cannot be probed. With auth off (`--no-auth`, for local
use) the user id comes from the message and every run is visible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from committee.errors import AuthError, NotFound
from committee.models import RunRequest
from committee.store import RunRow, Store


def token_from(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The bearer token of a request, if it carries one."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query.get("token") or None


@dataclass(frozen=True)
class Auth:
    store: Store
    enabled: bool = True

    async def user_for(self, token: str | None) -> str | None:
        """The user `token` belongs to; None when auth is off. Raises AuthError."""
        if not self.enabled:
            return None
        if not token:
            raise AuthError("missing token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN")
        user = await self.store.user_for_token(token)
        if user is None:
            raise AuthError("unknown or revoked token")
        return user

    async def run_for(self, user: str | None, run_id: str) -> RunRow:
        """The run, if `user` may see it (any run when `user` is None). Raises NotFound."""
        row = await self.store.get_run(run_id)
        if user is not None and row.request.user_id != user:
            raise NotFound(f"no run {run_id}")
        return row


def as_user(request: RunRequest, user: str | None) -> RunRequest:
    """The request on behalf of `user`: with auth on, whatever user_id the message claimed is
    replaced by the token's."""
    return request if user is None else request.model_copy(update={"user_id": user})

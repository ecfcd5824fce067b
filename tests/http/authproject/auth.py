"""An auth.py as LangGraph's docs write them: bearer tokens to users, owner-only resources, a reviewer who reads all."""

from __future__ import annotations

from typing import Any

from langgraph_sdk import Auth

auth = Auth()

USERS: dict[str, dict[str, Any]] = {
    "token-alice": {"identity": "alice", "permissions": ["chat"], "email": "alice@example.org"},
    "token-bob": {"identity": "bob", "permissions": ["chat"]},
    "token-reviewer": {"identity": "reviewer", "permissions": ["ledger:read-all"]},
    "token-mallory": {"identity": "mallory", "permissions": []},
}


@auth.authenticate
async def authenticate(authorization: str | None) -> Auth.types.MinimalUserDict:
    if not authorization or not authorization.startswith("Bearer "):
        raise Auth.exceptions.HTTPException(status_code=401, detail="missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    user = USERS.get(authorization.removeprefix("Bearer "))
    if user is None:
        raise Auth.exceptions.HTTPException(status_code=401, detail="invalid token")
    return user  # type: ignore[return-value]


@auth.on
async def owner_only(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> Auth.types.FilterType | bool | None:
    if ctx.user.identity == "mallory":
        return False
    if "ledger:read-all" in ctx.permissions and ctx.action in ("read", "search"):
        return None
    metadata = value.setdefault("metadata", {})
    metadata["owner"] = ctx.user.identity
    return {"owner": ctx.user.identity}

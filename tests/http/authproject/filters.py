"""An auth.py whose handler returns a different filter for each user: every form of LangGraph's filters.

The token is the user's identity. ``admin`` sees every thread (it sets the
threads up); every other user sees the threads its filter in :data:`FILTERS`
matches, on every action.
"""

from __future__ import annotations

from typing import Any

from langgraph_sdk import Auth

auth = Auth()

ORG = {"id": 1, "name": "acme"}
FILTERS: dict[str, dict[str, Any]] = {
    "eq-scalar": {"owner": {"$eq": "ann"}},
    "scalar": {"owner": "ann"},
    "eq-object": {"org": {"$eq": ORG}},
    "object": {"org": ORG},
    "eq-list": {"tags": {"$eq": ["a", "b"]}},
    "list": {"tags": ["a", "b"]},
    "contains-scalar": {"members": {"$contains": "ann"}},
    "contains-list": {"members": {"$contains": ["ann", "bob"]}},
    "several-keys": {"owner": "ann", "members": {"$contains": "bob"}, "org": {"$eq": ORG}},
}


@auth.authenticate
async def authenticate(authorization: str | None) -> str:
    token = (authorization or "").removeprefix("Bearer ")
    if token != "admin" and token not in FILTERS:
        raise Auth.exceptions.HTTPException(status_code=401, detail="invalid token")
    return token


@auth.on
async def by_user(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> Auth.types.FilterType | None:
    if ctx.user.identity == "admin":
        return None
    return FILTERS[ctx.user.identity]  # type: ignore[return-value]

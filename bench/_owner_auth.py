"""A trivial auth.py for ``bench/sse.py --auth``: a bearer token names its user, who sees the threads it owns.

``Authorization: Bearer bench-<name>`` is user ``<name>``; the one ``@auth.on``
handler stamps the owner on what it creates and returns the owner filter,
which the server applies in SQL on every route.
"""

from __future__ import annotations

from typing import Any

from langgraph_sdk import Auth

PREFIX = "Bearer bench-"

auth = Auth()


def header(owner: str) -> str:
    """The ``Authorization`` header of user ``owner``."""
    return PREFIX + owner


@auth.authenticate
async def authenticate(authorization: str | None) -> str:
    if not authorization or not authorization.startswith(PREFIX) or len(authorization) == len(PREFIX):
        raise Auth.exceptions.HTTPException(status_code=401, detail="missing or invalid bearer token")
    return authorization.removeprefix(PREFIX)


@auth.on
async def owner_only(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> Auth.types.FilterType:
    metadata = value.get("metadata")
    if isinstance(metadata, dict):
        metadata["owner"] = ctx.user.identity
    else:
        value["metadata"] = {"owner": ctx.user.identity}
    return {"owner": ctx.user.identity}

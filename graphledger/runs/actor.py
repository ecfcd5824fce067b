"""Who caused a command: the actor recorded in its event, and the user a run's graph sees.

An actor is the JSON form of an authenticated user: ``{"identity": str,
"permissions": [str, ...], ...}`` plus whatever else the user carried that is
JSON. It is recorded inside the hashed payload of every command event the
HTTP layer causes (``run.created``, ``run.cancel_requested``), and absent
when authentication is off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AUTH_USER = "langgraph_auth_user"
AUTH_USER_ID = "langgraph_auth_user_id"
AUTH_PERMISSIONS = "langgraph_auth_permissions"
AUTH_KEYS = (AUTH_USER, AUTH_USER_ID, AUTH_PERMISSIONS)
"""The ``configurable`` keys through which a graph sees who started its run, as the LangGraph Agent Server passes them."""


class User(dict[str, Any]):
    """An authenticated user, read as a mapping (``user["identity"]``) or by attribute (``user.identity``).

    The same object serves authorization handlers (``ctx.user``) and graphs
    (``config["configurable"]["langgraph_auth_user"]``); being a dict, it is
    also JSON wherever LangGraph writes a config out.
    """

    @property
    def identity(self) -> str:
        return str(self["identity"])

    @property
    def permissions(self) -> list[str]:
        return list(self.get("permissions") or [])

    @property
    def display_name(self) -> str:
        return str(self.get("display_name") or self["identity"])

    @property
    def is_authenticated(self) -> bool:
        return bool(self.get("is_authenticated", True))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def user_of(actor: Mapping[str, Any]) -> User:
    """The user an actor records, with the fields every user has."""
    identity = str(actor["identity"])
    return User(
        {"identity": identity, "is_authenticated": True, "display_name": identity, **actor, "permissions": list(actor.get("permissions") or [])}
    )


def configurable(actor: Mapping[str, Any]) -> dict[str, Any]:
    """The ``configurable`` entries that tell a graph who started its run."""
    user = user_of(actor)
    return {AUTH_USER: user, AUTH_USER_ID: user.identity, AUTH_PERMISSIONS: user.permissions}

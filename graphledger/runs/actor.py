"""Who caused a command: the actor recorded in its event, and the user a run's graph sees.

An actor is the JSON form of an authenticated user: ``{"identity": str,
"permissions": [str, ...], ...}`` plus whatever else the user carried that is
JSON. It is recorded inside the hashed payload of every command event the
HTTP layer causes (``run.created``, ``run.cancel_requested``), and absent
when authentication is off.

A user may carry secrets (an ``access_token`` for the graph to call an API on
the user's behalf). They are found as a run's other secrets are
(:mod:`graphledger.runs.secrets`: by key, and URL passwords): an actor is
recorded with them replaced by ``[redacted]`` (:func:`recorded`), while a
run keeps their values with its other secrets, for its graph only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from graphledger.runs import secrets

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


def actor_json(user: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a user, secrets included: identity, permissions and every other field that is JSON.

    The fields that are not JSON (objects an authenticate handler attached)
    are left out.
    """
    identity = user["identity"]
    kept: dict[str, Any] = {"identity": str(identity), "permissions": list(user.get("permissions") or [])}
    for key, value in user.items():
        if key in kept or not isinstance(key, str):
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return kept


def split(actor: Mapping[str, Any]) -> tuple[dict[str, Any], Any, list[str]]:
    """An actor as events record it (secrets ``[redacted]``), its secrets (None: it has none), and their paths (``actor.<key>``)."""
    kept, found, paths = secrets.split_secrets(dict(actor), "actor")
    return kept, found, paths


def recorded(actor: Mapping[str, Any]) -> dict[str, Any]:
    """An actor as events record it: its secrets replaced by ``[redacted]``."""
    return split(actor)[0]

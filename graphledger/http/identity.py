"""The authenticated user of a request, for the rest of the HTTP layer: :func:`actor`.

The door (:class:`graphledger.http.auth.Authenticate`) puts the user on the
request's scope; everything else reads it through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from graphledger.runs import actor as actor_module
from graphledger.runs.actor import User

_STATE = "graphledger.auth"  # the scope key holding a request's Access


@dataclass(slots=True)
class Access:
    """What the door knows of one request: who, the resource and action its route performs, and whether it authorized it."""

    user: User
    resource: str = "threads"
    action: str | None = None
    authorized: bool = False
    actor: dict[str, Any] | None = None  # the user's JSON form as recorded (secrets redacted), made once


def admit(scope: Scope, user: User) -> None:
    """Record the authenticated ``user`` of the request whose scope this is (called by the door only)."""
    scope[_STATE] = Access(user)


def access(request: Request) -> Access | None:
    """The request's :class:`Access`; None when authentication is off."""
    found: Access | None = request.scope.get(_STATE)
    return found


def user(request: Request) -> User | None:
    """The authenticated user of the request; None when authentication is off."""
    found = access(request)
    return found.user if found is not None else None


def actor(request: Request) -> dict[str, Any] | None:
    """Who made the request, as events record it: ``{"identity": str, "permissions": [str, ...], ...}``; None when authentication is off.

    Besides identity and permissions, every field of the user that is JSON
    (``display_name``, ``email``...) is kept; the others are left out. Fields
    that hold a secret (``access_token``...) are ``[redacted]``: this is what
    command events, a deleted thread's row and the access log record.
    """
    found = access(request)
    if found is None:
        return None
    if found.actor is None:
        found.actor = actor_module.recorded(actor_module.actor_json(found.user))
    return dict(found.actor)


def user_json(request: Request) -> dict[str, Any] | None:
    """The user's JSON form with its secrets (see :func:`actor`); None when authentication is off.

    Only for a run's request, which keeps the secrets apart from what it
    records (:meth:`graphledger.runs.RunRequest.set_actor`).
    """
    found = access(request)
    return actor_module.actor_json(found.user) if found is not None else None

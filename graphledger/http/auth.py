"""Who may do what: LangGraph's custom auth (a ``langgraph_sdk.Auth`` object), applied at one door.

:class:`Authenticate` is an ASGI middleware: every request but those to
the public routes (:func:`is_open`: readiness, the API's description and the
Merkle log's ``/log/...``) goes through the ``@auth.authenticate`` handler
first, and is answered 401 (or the status of the ``HTTPException`` it raised)
without reaching a route. Every other route is declared with :func:`guarded`,
naming the action it performs on the ``threads`` resource (runs belong to
their thread, as in the LangGraph Agent Server), on ``assistants`` or on the
``store``; its
endpoint calls :func:`authorize` once, with the value the reference passes to
``@auth.on`` handlers, and gets back the filter (a
:class:`~graphledger.ledger.threads.Visibility`) that the
statements of :mod:`graphledger.ledger.threads` apply in SQL. A guarded
endpoint that answers without having authorized is a bug, answered 500: a new
route cannot forget.

Handlers are chosen like the reference does: the most specific of
``(resource, action)``, ``(resource, "*")``, ``("*", action)`` and the global
one; only that one is called. It may stamp ``value["metadata"]``, and returns
None or True (allowed), False (403) or a filter dict.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from langgraph_sdk import Auth
from langgraph_sdk.auth.exceptions import HTTPException as AuthHTTPException
from langgraph_sdk.auth.types import AuthContext
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from graphledger.http.common import HTTPError, error_response
from graphledger.http.identity import access as access_of
from graphledger.http.identity import admit
from graphledger.ledger.threads import Visibility
from graphledger.runs.actor import User, user_of
from graphledger.runs.errors import GraphLoadError
from graphledger.runs.graphs import CONFIG_FILE, load_spec

_log = logging.getLogger("graphledger.http")

OPEN_PATHS = frozenset({"/ok", "/openapi.json", "/ui"})
"""Paths answered without authentication: readiness, the API's description and the web viewer's page."""
OPEN_PREFIXES = ("/log/", "/ui/")
"""Routes under these are public too: the Merkle log's checkpoint and tiles, hashes only, for monitors (see http/log.py),
and the web viewer's page and scripts, which hold no data: it reads through the guarded routes (see http/viewer.py)."""
RESOURCE = "threads"
ACTIONS = ("create", "read", "update", "delete", "search", "create_run")
STORE = "store"
RESOURCES: dict[str, tuple[str, ...]] = {
    RESOURCE: ACTIONS,
    "assistants": ("create", "read", "update", "delete", "search"),
    STORE: ("put", "get", "search", "list_namespaces", "delete"),
}
"""The actions of each resource a route may perform, as the reference names them (runs belong to their thread)."""
AUTHENTICATE_PARAMETERS = frozenset(
    {"request", "scope", "scopes", "path", "method", "path_params", "query_params", "headers", "authorization", "body"}
)


def is_open(path: str) -> bool:
    """Whether a request to ``path`` is served without authentication."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class Authorizer:
    """A ``langgraph_sdk.Auth`` object, ready to authenticate requests and authorize actions."""

    def __init__(self, auth: Auth) -> None:
        if not isinstance(auth, Auth):
            raise GraphLoadError(f"auth must be a langgraph_sdk.Auth object, not a {type(auth).__name__}")
        if auth._authenticate_handler is None:
            raise GraphLoadError("the Auth object has no @auth.authenticate handler")
        self.auth = auth
        self._authenticate = auth._authenticate_handler
        names = set(inspect.signature(self._authenticate).parameters)
        unknown = names - AUTHENTICATE_PARAMETERS
        if unknown:
            raise GraphLoadError(
                f"@auth.authenticate takes parameters named {', '.join(sorted(AUTHENTICATE_PARAMETERS))}, not {', '.join(sorted(unknown))}"
            )
        self._wants = frozenset(names)

    async def authenticate(self, request: Request) -> User:
        """The request's user; raises the handler's ``HTTPException`` (401 by default) otherwise."""
        wants = self._wants
        kwargs: dict[str, Any] = {}
        if "request" in wants:
            kwargs["request"] = request
        if "authorization" in wants:
            kwargs["authorization"] = request.headers.get("authorization")
        if "headers" in wants:
            kwargs["headers"] = dict(request.scope["headers"])  # bytes to bytes, as the reference passes them
        if "path" in wants:
            kwargs["path"] = request.url.path
        if "method" in wants:
            kwargs["method"] = request.method
        if "query_params" in wants:
            kwargs["query_params"] = request.query_params
        if "path_params" in wants:
            kwargs["path_params"] = request.path_params  # before routing: empty, as in the reference
        if "scope" in wants:
            kwargs["scope"] = request.scope
        if "scopes" in wants:
            kwargs["scopes"] = []
        if "body" in wants:
            kwargs["body"] = await request.body()
        return _user(await self._authenticate(**kwargs))

    def handler(self, resource: str, action: str) -> Callable[..., Awaitable[Any]] | None:
        """The one handler the reference would call for ``resource``/``action`` (None: allowed, unfiltered)."""
        handlers = self.auth._handlers
        for key in ((resource, action), (resource, "*"), ("*", action)):
            if key in handlers:
                return handlers[key][-1]
        return self.auth._global_handlers[-1] if self.auth._global_handlers else None

    async def authorize(self, user: User, resource: str, action: str, value: dict[str, Any]) -> dict[str, Any] | None:
        """Ask the handler; the filter dict it returned (None: none); :class:`HTTPError` 403 when it returned False."""
        handler = self.handler(resource, action)
        if handler is None:
            return None
        context = AuthContext(permissions=user.permissions, user=user, resource=resource, action=action)  # type: ignore[arg-type]  # the sdk's Literal types name its own resources only
        result = await handler(ctx=context, value=value)
        if result is None or result is True:
            return None
        if result is False:
            raise HTTPError(403, "Forbidden")
        if isinstance(result, Mapping):
            return dict(result) or None
        raise TypeError(f"an authorization handler returned {type(result).__name__}; expected None, a bool or a filter dict")


def _user(found: Any) -> User:
    """The user an authenticate handler returned: a string identity, a user dict, or an object with ``identity``."""
    if isinstance(found, str):
        return user_of({"identity": found})
    if isinstance(found, Mapping):
        fields = dict(found)
    elif hasattr(found, "identity"):
        names = ("identity", "permissions", "display_name", "is_authenticated")
        fields = {name: getattr(found, name) for name in names if hasattr(found, name)}
        if hasattr(found, "keys"):
            fields = {**{k: found[k] for k in found.keys()}, **fields}
    else:
        raise TypeError(f"@auth.authenticate returned a {type(found).__name__}; expected a string identity or a user dict")
    if not isinstance(fields.get("identity"), str) or not fields["identity"]:
        raise TypeError("@auth.authenticate returned a user without an identity (a non-empty string)")
    permissions = fields.get("permissions") or []
    if isinstance(permissions, str) or not all(isinstance(p, str) for p in permissions):
        raise TypeError("a user's permissions must be a list of strings")
    return user_of(fields)


class Authenticate:
    """The door: authenticates every request but those to the public routes (:func:`is_open`) before any route sees it."""

    def __init__(self, app: ASGIApp, authorizer: Authorizer) -> None:
        self.app = app
        self.authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        response: Response
        try:
            user = await self.authorizer.authenticate(Request(scope, receive))
        except AuthHTTPException as exc:
            response = error_response(exc.status_code, str(exc.detail), exc.headers)
        except Exception as exc:
            # A failing handler is the server's fault, and its message may say
            # too much about the credentials: logged here, not sent.
            _log.error("authentication failed with an error on %s %s", scope["method"], scope["path"], exc_info=exc)
            response = error_response(500, "internal error")
        else:
            admit(scope, user)
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def guarded(
    path: str, endpoint: Callable[[Request], Awaitable[Response]], *, methods: list[str], action: str, resource: str = RESOURCE
) -> Route:
    """A route whose endpoint performs ``action`` on ``resource`` and must call :func:`authorize` before it answers."""
    if action not in RESOURCES.get(resource, ()):
        raise ValueError(f"unknown action {action!r} on {resource!r}")

    async def run(request: Request) -> Response:
        access = access_of(request)
        if access is not None:
            access.resource, access.action, access.authorized = resource, action, False
        response = await endpoint(request)
        if access is not None and not access.authorized:
            raise RuntimeError(f"{request.method} {path} answered without authorizing {action}")
        return response

    run.__name__ = run.__qualname__ = endpoint.__name__
    run.__doc__ = endpoint.__doc__
    run.action = action  # type: ignore[attr-defined]  # read by the coverage test and the docs
    run.resource = resource  # type: ignore[attr-defined]
    return Route(path, run, methods=methods)


def action_of(route: Route) -> str | None:
    """The action a route was declared with (None: an open route)."""
    return getattr(route.endpoint, "action", None)


def resource_of(route: Route) -> str | None:
    """The resource a route acts on (None: an open route)."""
    return getattr(route.endpoint, "resource", None)


def stamped_metadata(value: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metadata`` of an authorized ``value``, as a handler may have stamped it (an owner); empty when absent."""
    metadata = value.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise TypeError("an authorization handler set metadata to something other than a dict")
    return metadata


async def authorize(request: Request, value: dict[str, Any], *, action: str | None = None) -> Visibility | None:
    """Authorize the request's route's action with ``value``; the filter that restricts what it sees.

    None when authentication is off or the handler set no filter. ``value``
    may come back changed (``value["metadata"]`` stamped by the handler).
    A route that also performs another action on another resource of the same
    kind (a copy reads its source) asks for it with ``action``, as well as
    for its own.
    """
    return Visibility.of(await authorize_filter(request, value, action=action))


async def authorize_filter(request: Request, value: dict[str, Any], *, action: str | None = None) -> dict[str, Any] | None:
    """As :func:`authorize`, with the handler's filter as it returned it (the store applies it to items' values)."""
    access = access_of(request)
    if access is None:
        return None
    assert access.action is not None, "authorize() is called by guarded routes only"
    if action is not None and action not in RESOURCES.get(access.resource or RESOURCE, ()):
        raise ValueError(f"unknown action {action!r} on {access.resource!r}")
    authorizer: Authorizer = request.app.state.authorizer
    found = await authorizer.authorize(access.user, access.resource, action or access.action, value)
    if action is None or action == access.action:
        access.authorized = True
    return found


def load(spec: str | None = None, config: Path | None = None, *, cwd: Path | None = None) -> Authorizer | None:
    """The auth of ``--auth SPEC``, else of the ``"auth": {"path": ...}`` of ``config`` (or ``./langgraph.json``); None when neither names one."""
    cwd = cwd or Path.cwd()
    if spec is not None:
        return Authorizer(load_spec(spec, cwd))
    if config is None and (cwd / CONFIG_FILE).is_file():
        config = cwd / CONFIG_FILE
    if config is None:
        return None
    try:
        settings = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise GraphLoadError(f"cannot read {config}: {exc}") from exc
    auth = settings.get("auth") if isinstance(settings, dict) else None
    if auth is None:
        return None
    path = auth.get("path") if isinstance(auth, dict) else None
    if not isinstance(path, str):
        raise GraphLoadError(f'{config}: "auth" needs a "path" like "./auth.py:auth"')
    return Authorizer(load_spec(path, config.parent))

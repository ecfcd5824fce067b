"""Budget refusals: the admissions a budget refused, for a reviewer (``GET /budgets/refusals``).

Authorized as a ``search`` on threads. A caller whose handler answers with a
filter sees only its own refusals (those of its identity); a caller it lets
through unfiltered (a reviewer) sees everyone's, and may narrow them with
``identity``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import HTTPError, query_int, query_time
from graphledger.http.identity import user
from graphledger.runs import budget_use

MAX_TEXT = 256


def _text(request: Request, name: str) -> str | None:
    text = request.query_params.get(name)
    if not text:
        return None
    if len(text) > MAX_TEXT or "\x00" in text:
        raise HTTPError(422, f"{name} must be at most {MAX_TEXT} characters, without NUL")
    return text


async def refusals(request: Request) -> JSONResponse:
    """Refused admissions, newest first: ``since``, ``until``, ``identity``, ``budget``, ``limit``."""
    since, until = query_time(request, "since"), query_time(request, "until")
    if since is not None and until is not None and since >= until:
        raise HTTPError(422, "since must be earlier than until")
    identity, budget = _text(request, "identity"), _text(request, "budget")
    limit = query_int(request, "limit", 100, low=1, high=1000)
    value: dict[str, Any] = {"identity": identity, "budget": budget, "limit": limit, "metadata": {}}
    visible = await authorize(request, value)
    caller = user(request)
    if visible is not None and caller is not None:
        if identity is not None and identity != caller.identity:
            return JSONResponse({"refusals": []})  # another user's refusals are not this caller's to see
        identity = caller.identity
    found = await budget_use.refusals(request.app.state.ledger, since=since, until=until, identity=identity, budget=budget, limit=limit)
    return JSONResponse({"refusals": [budget_use.refusal_json(refusal) for refusal in found]})


routes = [guarded("/budgets/refusals", refusals, methods=["GET"], action="search")]

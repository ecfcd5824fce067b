"""The web viewer at ``/ui``: static pages shipped in the package (``graphledger/viewer/``), no build step, no CDN.

The page shell and its scripts are public, like ``/openapi.json``: they hold
no data. Every figure the viewer shows comes from the guarded API routes,
fetched by the browser with the ``Authorization`` header the viewer's login
form keeps in ``sessionStorage`` (see docs/viewer.md), so the viewer sees
exactly what its user may see over the API.

Only the files listed when the module is imported are served, by name: a
path is a key into that table, never joined onto the file system.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from graphledger.http.common import error_response

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".LICENSE": "text/plain; charset=utf-8",
}
INDEX = "index.html"
# The viewer loads nothing from elsewhere, and talks to this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _files(folder: Traversable, prefix: str = "") -> dict[str, tuple[bytes, str]]:
    found: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            found.update(_files(entry, name + "/"))
            continue
        media = next((t for suffix, t in MEDIA_TYPES.items() if entry.name.endswith(suffix)), None)
        if media is not None:
            found[name] = (entry.read_bytes(), media)
    return found


ASSETS = _files(resources.files("graphledger") / "viewer")
"""Every file the viewer serves, by its path under ``/ui/``: its bytes and media type."""


def _answer(name: str) -> Response:
    content, media = ASSETS[name]
    return Response(content, media_type=media, headers=SECURITY_HEADERS)


async def page(request: Request) -> Response:
    """The viewer's page (its views are chosen by the URL's fragment: ``#/runs``, ``#/run/...``, ``#/spend``)."""
    return _answer(INDEX)


async def asset(request: Request) -> Response:
    """A script, style sheet or licence of the viewer; 404 for any other path."""
    name = request.path_params["path"]
    if name not in ASSETS:
        return error_response(404, f"no viewer file {name[:100]!r}")
    return _answer(name)


routes = [Route("/ui", page, methods=["GET"]), Route("/ui/{path:path}", asset, methods=["GET"])]

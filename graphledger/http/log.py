"""The Merkle log for monitors: the latest signed checkpoint and the tiles (C2SP tlog-tiles), read-only.

PUBLIC routes, like ``/ok``: they reveal only hashes and the signed
checkpoint, never an event's content (there are no entry tiles; a leaf is an
event's chain hash), so a monitor or witness needs no credentials. A tile of
a given width never changes once it exists, so every tile is served as
immutable; the checkpoint changes and is not cached.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from graphledger.http.common import HTTPError
from graphledger.ledger import Ledger, merkle

IMMUTABLE = "public, max-age=31536000, immutable"
MAX_LEVEL = 7  # 256 ** 8 hashes: far beyond any log
MAX_INDEX = 1 << 55  # tiles of 256 leaves each: a log of 2 ** 63 events, the most a bigint position counts


async def checkpoint(request: Request) -> Response:
    """The latest signed checkpoint (text/plain; C2SP tlog-checkpoint in a signed note), 404 before the first."""
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        note = await session.log.latest_checkpoint()
    if note is None:
        raise HTTPError(404, "no checkpoint has been signed yet (serve --signing-key, or graphledger checkpoint)")
    return PlainTextResponse(note, headers={"Cache-Control": "no-cache"})


async def tile(request: Request) -> Response:
    """A tile of hashes: ``/log/tile/<L>/<N>[.p/<W>]``, 32-byte hashes concatenated; 404 until it exists."""
    text = "tile/" + request.path_params["path"]
    try:
        level, index, width = merkle.parse_tile_path(text)
    except ValueError:
        raise HTTPError(404, f"not a tile path: {text} (tile/<L>/<N>[.p/<W>], hash tiles only)") from None
    if level > MAX_LEVEL:
        raise HTTPError(404, f"no tiles of level {level}")
    if index >= MAX_INDEX:
        raise HTTPError(404, f"no tile of index {index}")
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        data = await session.log.tile(level, index, width)
    if data is None:
        raise HTTPError(404, f"{text} does not exist (yet)")
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE})


routes = [
    Route("/log/checkpoint", checkpoint),  # public: no authentication (see the module docstring)
    Route("/log/tile/{path:path}", tile),  # public: no authentication
]
PUBLIC_PATHS = ("/log/checkpoint", "/log/tile/")
"""Paths served to anyone, like ``/ok``: hashes and signed checkpoints only."""

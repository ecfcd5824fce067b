"""The cost of authentication and authorization per request.

    python bench/auth.py [--requests 20000]

In-process, no server: a real Starlette request through the door
(``Authorizer.authenticate``: the ``@auth.authenticate`` handler of
tests/http/authproject/auth.py, bearer token to user dict) and one
``authorize`` (the owner-only handler, which stamps metadata and returns a
filter, turned into the SQL parameters), timed over ``--requests`` requests.
The filter's cost in SQL is one indexed thread lookup that every route made
before authentication existed. Ends with one line:
``auth: requests=.. authenticate_us=.. authorize_us=.. total_us=..``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from uuid import uuid4

from starlette.requests import Request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphledger.http.auth import RESOURCE, load  # noqa: E402


def request(token: str) -> Request:
    scope = {
        "type": "http", "method": "GET", "path": f"/threads/{uuid4()}", "query_string": b"", "root_path": "",
        "headers": [(b"authorization", f"Bearer {token}".encode()), (b"host", b"127.0.0.1")],
        "scheme": "http", "server": ("127.0.0.1", 8123),
    }
    return Request(scope)


async def main(args: argparse.Namespace) -> None:
    authorizer = load(config=ROOT / "tests" / "http" / "authproject" / "langgraph.json")
    assert authorizer is not None
    authenticate, authorize = [], []
    for _ in range(args.requests):
        r = request("token-alice")
        t0 = time.perf_counter()
        user = await authorizer.authenticate(r)
        t1 = time.perf_counter()
        await authorizer.authorize(user, RESOURCE, "read", {"thread_id": uuid4()})
        t2 = time.perf_counter()
        authenticate.append(t1 - t0)
        authorize.append(t2 - t1)
    a, z = statistics.median(authenticate) * 1e6, statistics.median(authorize) * 1e6
    p99 = sorted(x + y for x, y in zip(authenticate, authorize, strict=True))[int(args.requests * 0.99)] * 1e6
    print(f"auth: requests={args.requests} authenticate_us={a:.1f} authorize_us={z:.1f} total_us={a + z:.1f} total_p99_us={p99:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    asyncio.run(main(parser.parse_args()))

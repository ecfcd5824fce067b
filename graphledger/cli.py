"""The ``graphledger`` command."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from graphledger import __version__
from graphledger.embedded import DEFAULT_DIR, EmbeddedError, EmbeddedPostgres
from graphledger.ledger.errors import LedgerError

if TYPE_CHECKING:
    from graphledger.projections.rebuild import RebuildReport

_log = logging.getLogger("graphledger")


class CommandError(Exception):
    """A failure reported as one line and a non-zero exit."""


class Stopped(BaseException):
    """SIGINT or SIGTERM asked the process to stop; cleanup runs on the way out."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    """The DSN to use: ``--database-url``/``DATABASE_URL``, else the embedded server (stopped on exit)."""
    if args.database_url:
        yield args.database_url
        return
    server = EmbeddedPostgres(args.data_dir)
    dsn = server.start()
    _log.info("embedded PostgreSQL running, cluster in %s", server.pgdata)
    try:
        yield dsn
    finally:
        server.stop()


def cmd_migrate(args: argparse.Namespace) -> None:
    from graphledger.ledger.migrate import upgrade

    with database(args) as dsn:
        _migrate(upgrade, dsn)
        print("database is at the latest schema revision")


def _migrate(upgrade: object, dsn: str) -> None:
    """The ledger's migrations, then the LangGraph checkpointer's tables (in their own schema)."""
    import asyncio

    import asyncpg
    import psycopg
    import sqlalchemy.exc

    from graphledger.runs import checkpoint

    try:
        upgrade(dsn)  # type: ignore[operator]
        asyncio.run(checkpoint.setup(dsn))
    except (OSError, asyncpg.PostgresError, sqlalchemy.exc.DBAPIError, psycopg.Error) as exc:
        raise CommandError(f"cannot migrate the database: {str(exc).splitlines()[0]}") from exc


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from graphledger.http.app import create_app
    from graphledger.ledger.migrate import upgrade
    from graphledger.runs import GraphRegistry, RunSettings

    graphs = GraphRegistry.configure(args.config, args.graph or ())
    settings = RunSettings(
        workers=args.workers,
        lease_seconds=args.lease,
        lease_grace_seconds=args.lease_grace,
        run_timeout=args.run_timeout,
        drain_seconds=args.drain,
    )

    # uvicorn handles SIGINT/SIGTERM while it serves (a graceful shutdown) and
    # then re-raises the signal to the handler found before it: ours, which
    # unwinds through `database()` so that the embedded server is stopped too.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    with database(args) as dsn:
        _migrate(upgrade, dsn)
        app = create_app(dsn, graphs=graphs, settings=settings, max_body_bytes=args.max_body_bytes)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on")
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            raise CommandError(f"could not serve on {args.host}:{args.port}")


class ProgressBar:
    """A one-line progress bar on a terminal (nothing otherwise)."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.shown = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.shown or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        share = done / total if total else 1.0
        rate = done / max(now - self.started, 1e-9)
        bar = "#" * int(share * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {share:4.0%} {done:,}/{total:,} events, {rate:,.0f}/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.shown and self.last:
            self.stream.write("\n")
            self.stream.flush()


def cmd_rebuild(args: argparse.Namespace) -> None:
    import asyncio

    from graphledger.ledger.migrate import upgrade

    with database(args) as dsn:
        _migrate(upgrade, dsn)
        bar = ProgressBar("rebuild")
        try:
            report = asyncio.run(_rebuild(dsn, args.only or None, bar))
        finally:
            bar.close()
    print(
        f"rebuilt {', '.join(report.projections)} from {report.events:,} events "
        f"({report.folded:,} folded, {report.caught_up:,} appended meanwhile) "
        f"in {report.seconds:.1f} s, {report.events_per_second:,.0f} events/s"
    )


async def _rebuild(dsn: str, only: list[str] | None, progress: ProgressBar) -> RebuildReport:
    import asyncpg

    from graphledger.ledger.errors import translate
    from graphledger.projections import rebuild
    from graphledger.projections.project import ALL

    with translate():
        conn = await asyncpg.connect(dsn)
    try:
        with translate():
            return await rebuild(conn, only or ALL, progress=progress)
    finally:
        await conn.close()


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="PostgreSQL URL (default: $DATABASE_URL; without it an embedded server is started)",
    )
    common.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DIR, help="data directory of the embedded server (default: ./.graphledger)"
    )
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    top = argparse.ArgumentParser(
        prog="graphledger",
        description="An event-sourced run ledger and run server for LangGraph.",
        epilog="examples:\n  graphledger serve\n  DATABASE_URL=postgresql://u:p@db/ledger graphledger migrate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"graphledger {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve the HTTP API (migrates the database first)",
        description="Serve the HTTP API. Without DATABASE_URL a private PostgreSQL is started under --data-dir.",
        epilog=(
            "examples:\n  graphledger serve\n  graphledger serve --host 0.0.0.0 --port 8123\n"
            "  graphledger serve --config ./langgraph.json --workers 4\n"
            "  graphledger serve --graph agent=./agent.py:graph\n"
            "  graphledger serve --workers 0        # HTTP only: another process executes the runs"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8123)
    serve.add_argument(
        "--config", type=Path, default=None, help="a langgraph.json whose \"graphs\" are served (default: ./langgraph.json if present)"
    )
    serve.add_argument(
        "--graph", action="append", metavar="NAME=SPEC", help="serve a graph: NAME=./file.py:attr or NAME=package.module:attr (repeatable)"
    )
    serve.add_argument(
        "--workers", type=_count, default=10, help="runs this process executes at once (default 10; 0 serves HTTP only)"
    )
    serve.add_argument("--lease", type=_seconds, default=30.0, help="seconds a worker holds a run between renewals (default 30)")
    serve.add_argument(
        "--lease-grace", type=_seconds, default=10.0, help="seconds past an expired lease before the run is failed (default 10)"
    )
    serve.add_argument("--run-timeout", type=_seconds, default=None, help="end runs still running after this many seconds (default: never)")
    serve.add_argument(
        "--max-body-bytes", type=_count, default=10 * 1024 * 1024, help="larger request bodies are refused with 413 (default 10 MiB)"
    )
    serve.add_argument("--drain", type=_seconds, default=10.0, help="on shutdown, seconds running runs may finish before they are interrupted")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="apply the database migrations",
        description="Bring the database schema to the latest revision (safe to run concurrently).",
        epilog="examples:\n  graphledger migrate\n  graphledger migrate --database-url postgresql://u:p@db/ledger",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.set_defaults(func=cmd_migrate)

    rebuild = commands.add_parser(
        "rebuild",
        parents=[common],
        help="rebuild the projections from the event log",
        description=(
            "Rebuild run status, token usage and messages (or only some) from the event log alone. "
            "Safe while servers append: the new tables are built aside and swapped in under a short lock."
        ),
        epilog="examples:\n  graphledger rebuild\n  graphledger rebuild --only messages --only token_usage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rebuild.add_argument(
        "--only", action="append", choices=["run_status", "token_usage", "messages"], help="a projection to rebuild (repeatable)"
    )
    rebuild.set_defaults(func=cmd_rebuild)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        args.func(args)
    except (CommandError, EmbeddedError, LedgerError) as exc:  # GraphLoadError is a LedgerError
        print(f"graphledger: error: {exc}", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

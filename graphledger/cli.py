"""The ``graphledger`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

from graphledger import __version__
from graphledger.embedded import DEFAULT_DIR, EmbeddedError, EmbeddedPostgres
from graphledger.http import DEFAULT_MAX_BODY_BYTES
from graphledger.ledger.errors import LedgerError, NoLedger
from graphledger.ledger.events import RUN_STATUSES
from graphledger.process import settle
from graphledger.progress import Progress
from graphledger.projections.project import ALL as PROJECTIONS

if TYPE_CHECKING:
    from graphledger.ledger import Ledger
    from graphledger.ledger.note import Checkpoint, Signer, Verifier
    from graphledger.projections.rebuild import RebuildReport

_log = logging.getLogger("graphledger")


class CommandError(Exception):
    """A failure reported as one line and a non-zero exit."""


class Stopped(BaseException):
    """SIGINT or SIGTERM asked the process to stop; cleanup runs on the way out."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


INFORMING = ("serve", "migrate")  # commands that log at INFO by default; the others only warn
# Commands that work through the whole log or much of it: their process is settled for load first
# (graphledger.process.settle), as serve's is once started: the log check ran 63% faster so (BENCHMARKS.md).
LONG_WORK = ("verify", "export", "rebuild", "replay", "checkpoint")


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _database_url(args: argparse.Namespace) -> tuple[str, str] | None:
    """The URL given with ``--database-url`` or ``DATABASE_URL`` and which of the two gave it; None for neither."""
    if args.database_url:
        return args.database_url, "--database-url"
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"], "DATABASE_URL"
    return None


def check_database_url(url: str, source: str) -> None:
    """Connect once to ``url``; a bad URL or a refused connection is a :class:`CommandError` that says why."""
    import asyncpg

    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise CommandError(
            f"{source} {redacted(url)!r} is not a PostgreSQL URL (expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        )

    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        await conn.close()

    try:
        asyncio.run(connect())
    except asyncpg.InvalidCatalogNameError as exc:
        raise CommandError(f"cannot connect to {redacted(url)}: {_first_line(exc)} (create it first, e.g. with createdb)") from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise CommandError(f"cannot connect to {redacted(url)}: {_first_line(exc) or type(exc).__name__}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def no_ledger_here(data_dir: Path) -> str:
    """Why a command that only reads found nothing to read, and how to point it at a ledger."""
    return (
        f"no ledger found: there is no embedded PostgreSQL cluster in {data_dir.expanduser().absolute()}; "
        "point to one with --data-dir DIR, or to a database with --database-url URL or DATABASE_URL"
    )


@contextlib.contextmanager
def database(args: argparse.Namespace, *, create: bool = False) -> Iterator[str]:
    """The DSN to use: ``--database-url``/``DATABASE_URL`` (checked by connecting once), else the
    embedded server under ``--data-dir`` (stopped on exit).

    Only with ``create`` (serve, migrate) is a new cluster made; a command that
    reads finds none and says where it looked, creating nothing.
    """
    given = _database_url(args)
    if given is not None:
        check_database_url(*given)
        yield given[0]
        return
    server = EmbeddedPostgres(args.data_dir)
    if not create and not server.exists():
        raise CommandError(no_ledger_here(args.data_dir))
    dsn = server.start(create=create)
    _log.info("embedded PostgreSQL running, cluster in %s", server.pgdata)
    try:
        yield dsn
    finally:
        server.stop()


def cmd_migrate(args: argparse.Namespace) -> None:
    from graphledger.ledger.migrate import upgrade

    with database(args, create=True) as dsn:
        _migrate(upgrade, dsn)
        print("database is at the latest schema revision")


def _migrate(upgrade: Callable[[str], None], dsn: str) -> None:
    """The ledger's migrations, then the LangGraph checkpointer's and store's tables (in their own schema)."""
    import asyncio

    import asyncpg
    import psycopg
    import sqlalchemy.exc

    from graphledger.runs import checkpoint, store

    try:
        upgrade(dsn)
        asyncio.run(checkpoint.setup(dsn))
        asyncio.run(store.setup(dsn))
    except (OSError, asyncpg.PostgresError, sqlalchemy.exc.DBAPIError, psycopg.Error) as exc:
        raise CommandError(f"cannot migrate the database: {str(exc).splitlines()[0]}") from exc


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from graphledger.http.app import create_app
    from graphledger.http.auth import load as load_auth
    from graphledger.http.server import Server
    from graphledger.ledger.migrate import upgrade
    from graphledger.projections.prices import price_book
    from graphledger.runs import GraphRegistry, RunSettings
    from graphledger.runs.webhooks import WebhookSettings

    graphs = GraphRegistry.configure(args.config, args.graph or ())
    authorizer = load_auth(args.auth, args.config)
    if authorizer is None and not _loopback(args.host):
        if not args.allow_unauthenticated:
            raise CommandError(
                f"refusing to serve on {args.host} without authentication: configure auth (--auth ./auth.py:auth, or \"auth\" in "
                "langgraph.json), listen on a loopback address, or pass --allow-unauthenticated"
            )
        print(f"graphledger: warning: serving on {args.host} without authentication: anyone who reaches it reads and runs everything", file=sys.stderr)
    signer = _signer(args.signing_key) if args.signing_key else None
    if args.checkpoint_dir and signer is None:
        raise CommandError("--checkpoint-dir needs --signing-key: only signed checkpoints are written there")
    checkpoint_dir = _checkpoint_dir(args.checkpoint_dir) if args.checkpoint_dir else None
    prices = price_book(args.prices)  # a bad price file is refused before anything starts
    settings = RunSettings(
        workers=args.workers,
        lease_seconds=args.lease,
        lease_grace_seconds=args.lease_grace,
        run_timeout=args.run_timeout,
        drain_seconds=args.drain,
        **({"outage_seconds": args.outage} if args.outage is not None else {}),
        webhooks=WebhookSettings(allowed_hosts=tuple(args.webhook_host or ())),
    )

    # uvicorn handles SIGINT/SIGTERM while it serves (a graceful shutdown, in
    # which runs are drained and handed over: see graphledger.http.server) and
    # then re-raises the signal to the handler found before it: ours, which
    # unwinds through `database()` so that the embedded server is stopped too.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    with database(args, create=True) as dsn:
        _migrate(upgrade, dsn)
        app = create_app(
            dsn, graphs=graphs, settings=settings, max_body_bytes=args.max_body_bytes, auth=authorizer, signer=signer,
            checkpoint_interval=args.checkpoint_interval, checkpoint_dir=checkpoint_dir, prices=prices, warm=True,
        )
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on")
        server = Server(config, app, drain_seconds=args.drain)
        server.run()
        if not server.started:
            raise CommandError(f"could not serve on {args.host}:{args.port}")


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``), reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_rebuild(args: argparse.Namespace) -> None:
    import asyncio

    from graphledger.audit import counted
    from graphledger.ledger.migrate import upgrade

    with database(args) as dsn:
        _migrate(upgrade, dsn)
        bar = Progress("rebuild")
        try:
            report = asyncio.run(_rebuild(dsn, args.only or None, bar, snapshots=args.snapshots))
        finally:
            bar.close()
    if args.snapshots:
        print("dropped the thread snapshot documents: they are rendered again as threads are read and runs end")
    print(
        f"rebuilt {', '.join(report.projections)} from {counted(report.events, 'event')} "
        f"({report.folded:,} folded, {report.caught_up:,} appended meanwhile) "
        f"in {report.seconds:.1f} s, {report.events_per_second:,.0f} events/s"
    )


async def _rebuild(dsn: str, only: list[str] | None, progress: Progress, *, snapshots: bool = False) -> RebuildReport:
    import asyncpg

    from graphledger.ledger.errors import translate
    from graphledger.projections import rebuild
    from graphledger.projections.project import ALL
    from graphledger.runs import snapshots as documents

    with translate():
        conn = await asyncpg.connect(dsn)
    try:
        with translate():
            if snapshots:
                await documents.drop(conn)
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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1 to 65535)")
    return value


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-01 or 2026-11-01T08:00:00Z)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number (1 is the original pace)")
    return value


@contextlib.contextmanager
def _ledger(args: argparse.Namespace) -> Iterator[tuple[asyncio.AbstractEventLoop, Ledger]]:
    """A ledger on the command's database (no tail, no projections written), and the loop to use it on."""

    from graphledger.ledger import Ledger

    with database(args) as dsn:
        loop = asyncio.new_event_loop()
        try:
            ledger = loop.run_until_complete(Ledger.connect(dsn, tail=False, pool_size=2))
            try:
                yield loop, ledger
            except NoLedger:
                raise CommandError("the database holds no ledger yet (run graphledger migrate or graphledger serve first)") from None
            finally:
                loop.run_until_complete(ledger.close())
        finally:
            loop.close()


def _check_window(args: argparse.Namespace) -> None:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise CommandError(f"--since ({args.since.isoformat()}) must be earlier than --until ({args.until.isoformat()})")


def cmd_export(args: argparse.Namespace) -> None:
    from graphledger import audit
    from graphledger.ledger.export import Selection

    if not (args.run or args.thread or args.since or args.until):
        raise CommandError("say what to export: --run ID, --thread ID, or --since/--until")
    _check_window(args)
    if args.checkpoint_dir and not args.key:
        raise CommandError("--checkpoint-dir needs --key: it keeps a copy of the checkpoint the export signs")
    selection = Selection(run_id=args.run, thread_id=args.thread, since=args.since, until=args.until)
    signer = _signer(args.key) if args.key else None
    directory = _checkpoint_dir(args.checkpoint_dir) if args.checkpoint_dir else None
    target = Path(args.out) if args.out else None
    partial = target.with_name(target.name + ".partial") if target else None
    progress = Progress("events exported")  # shown only when stderr is a terminal
    with _ledger(args) as (loop, ledger):

        def write(out: BinaryIO) -> int:
            return loop.run_until_complete(audit.export_to(ledger, selection, out, progress, signer=signer, directory=directory))

        if target is None or partial is None:
            unproven = write(sys.stdout.buffer)
        else:
            try:
                with open(partial, "wb") as out:
                    unproven = write(out)
                partial.replace(target)
            except OSError as exc:
                raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
            finally:
                partial.unlink(missing_ok=True)
    if target is not None:
        print(f"exported to {args.out}", file=sys.stderr)
    if unproven:
        from graphledger.audit import counted

        why = (
            "a transaction older than them was still open when the checkpoint was signed; export again"
            if signer is not None
            else "verify --key refuses them; export with --key ledger.key to sign a checkpoint that covers them"
        )
        print(
            f"graphledger: warning: {counted(unproven, 'event')} of the export are newer than its signed checkpoint "
            f"and carry no proof: {why}",
            file=sys.stderr,
        )


def cmd_verify(args: argparse.Namespace) -> None:
    from graphledger import audit
    from graphledger.audit import counted
    from graphledger.ledger.export import verify_file

    if sum(bool(x) for x in (args.file, args.run, args.all)) != 1:
        raise CommandError("verify one of: FILE (an export), --run ID, or --all")
    if args.checkpoint and not args.all:
        raise CommandError("--checkpoint goes with --all: the whole log is checked against it")
    if args.checkpoint and not args.key:
        raise CommandError("--checkpoint needs --key DIR/ledger.pub to check its signature")
    verifier = _verifier(args.key) if args.key else None
    checkpoint = _signed_checkpoint(args.checkpoint, verifier) if args.checkpoint and verifier else None
    if args.file:
        try:
            report = verify_file(args.file, verifier)
        except OSError as exc:
            raise CommandError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
        if not report.ok:
            raise CommandError(f"{args.file}: line {report.line}: {report.reason}")
        print(f"{args.file}: ok: {counted(report.runs, 'run')}, {counted(report.events, 'event')}, every hash chain intact")
        if report.checkpoint is not None:
            signed = "signed by " + verifier.name if verifier else "signature not checked (no --key)"
            print(
                f"{args.file}: ok: {counted(report.proven, 'event')} proven in the log's tree of "
                f"{counted(report.checkpoint.size, 'event')} at {report.checkpoint.time or '?'}, {signed}"
            )
        if report.unproven:
            print(
                f"{args.file}: note: {counted(report.unproven, 'event')} without a proof (newer than the export's checkpoint, "
                "or none was signed): verify --key refuses them; graphledger export --key ledger.key signs a checkpoint "
                "that covers every event it exports"
            )
        return
    with _ledger(args) as (loop, ledger):
        if args.run:
            refs = [loop.run_until_complete(ledger.run_ref(args.run))]
            result = loop.run_until_complete(audit.verify_runs(ledger, refs))
        else:
            result = loop.run_until_complete(audit.verify_runs(ledger, None, Progress("runs verified", "runs")))
        log = loop.run_until_complete(audit.check_log(ledger, checkpoint, Progress("events checked"))) if checkpoint else None
    for ref, seq, reason in result.bad:
        print(f"run {ref.run_id} (thread {ref.thread_id}): seq {seq}: {reason}")
    for finding in log.findings if log else ():
        print(finding)
    if log is not None and not log.ok:
        raise CommandError(
            f"the log does not extend the checkpoint of {counted(log.checkpoint.size, 'event')} signed at {log.checkpoint.time or '?'}"
        )
    if result.bad:
        raise CommandError(f"{len(result.bad):,} of {counted(result.runs, 'run')} failed verification")
    print(f"ok: {counted(result.runs, 'run')}, {counted(result.events, 'event')}, every hash chain intact")
    if log is not None:
        print(
            f"ok: the log of {counted(log.size, 'event')} extends the checkpoint of {counted(log.checkpoint.size, 'event')} "
            f"signed at {log.checkpoint.time or '?'} (recomputed from the events)"
        )


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def _verifier(path: str) -> Verifier:
    from graphledger.ledger.note import NoteError, Verifier

    try:
        return Verifier.parse(_read_text(path, "the public key"))
    except NoteError as exc:
        raise CommandError(f"{path}: {exc}") from None


def _signer(path: str) -> Signer:
    from graphledger.ledger.note import NoteError, Signer

    try:
        return Signer.parse(_read_text(path, "the signing key"))
    except NoteError as exc:
        raise CommandError(f"{path}: {exc}") from None


def _checkpoint_dir(path: str) -> Path:
    """The directory checkpoints are copied to, made if missing; refused now rather than at the first checkpoint."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot use --checkpoint-dir {path}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CommandError(f"cannot use --checkpoint-dir {path}: not writable")
    return directory


def _signed_checkpoint(path: str, verifier: Verifier) -> Checkpoint:
    from graphledger.ledger.note import NoteError, read_checkpoint

    try:
        return read_checkpoint(_read_text(path, "the checkpoint"), verifier)
    except NoteError as exc:
        raise CommandError(f"{path}: {exc}") from None


def cmd_keygen(args: argparse.Namespace) -> None:
    from graphledger import audit
    from graphledger.ledger.note import NoteError

    try:
        private, public = audit.keygen(Path(args.out), args.name)
    except FileExistsError:
        raise CommandError(f"{Path(args.out) / 'ledger.key'} exists: a signing key is never overwritten") from None
    except NoteError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write to {args.out}: {exc.strerror or exc}") from exc
    print(f"wrote {private} (keep it secret, outside the database) and {public} (give it to verifiers)")


def cmd_checkpoint(args: argparse.Namespace) -> None:
    from graphledger.ledger.checkpointer import sign_checkpoint, write_checkpoint

    signer = _signer(args.key)
    # Refused before anything is signed: a checkpoint is kept in the database at once, its copies after.
    directory = _checkpoint_dir(args.checkpoint_dir) if args.checkpoint_dir else None
    if args.out and (Path(args.out).is_dir() or not Path(args.out).resolve().parent.is_dir()):
        raise CommandError(f"cannot write --out {args.out}: not a file in an existing directory")
    with _ledger(args) as (loop, ledger):
        checkpoint, note, _ = loop.run_until_complete(sign_checkpoint(ledger, signer))
    if not args.out:
        sys.stdout.write(note)
    failed = []
    if args.out:
        try:
            Path(args.out).write_text(note, encoding="utf-8")
        except OSError as exc:
            sys.stdout.write(note)  # signed and kept in the database: never lose its one copy outside it
            failed.append(f"cannot write {args.out}: {exc.strerror or exc}")
    if directory is not None:
        try:
            write_checkpoint(directory, checkpoint, note)
        except OSError as exc:
            failed.append(f"cannot write to {args.checkpoint_dir}: {exc.strerror or exc}")
    if failed:
        raise CommandError("; ".join(failed) + " (the checkpoint was signed and kept in the database; its note is on stdout)")


def cmd_replay(args: argparse.Namespace) -> None:
    from graphledger import audit

    with _ledger(args) as (loop, ledger):
        loop.run_until_complete(audit.replay(ledger, args.run_id, sys.stdout.buffer, sse=args.sse, speed=args.speed))


def cmd_runs(args: argparse.Namespace) -> None:
    from graphledger import audit

    _check_window(args)
    with _ledger(args) as (loop, ledger):
        runs = loop.run_until_complete(
            audit.list_runs(
                ledger, thread_id=args.thread, status=args.status, assistant=args.assistant, since=args.since, until=args.until,
                limit=args.limit,
            )
        )
    if args.json:
        print(json.dumps(runs, indent=2))
    else:
        audit.print_runs(runs)


def cmd_access_log(args: argparse.Namespace) -> None:
    from graphledger import audit

    _check_window(args)
    with _ledger(args) as (loop, ledger):
        entries = loop.run_until_complete(
            audit.list_access(ledger, since=args.since, until=args.until, identity=args.identity, limit=args.limit)
        )
        report = loop.run_until_complete(audit.verify_access(ledger)) if args.verify else None
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        audit.print_access(entries)
    if report is not None:
        if not report.ok:
            raise CommandError(f"access log broken at entry {report.first_bad}: {report.reason}")
        print(f"ok: the access log's chain holds ({audit.counted(report.entries, 'entry', 'entries')})", file=sys.stderr)


BUDGET_OPTIONS = ("per", "match", "metric", "limit", "window", "reserve_per_run")
REFUSAL_OPTIONS = ("since", "until", "identity", "budget", "last")


def cmd_budgets(args: argparse.Namespace) -> None:
    from graphledger import audit
    from graphledger.runs import budget_use
    from graphledger.runs.budgets import Budget, parse_file

    action = args.action
    given = {name for name in (*BUDGET_OPTIONS, *REFUSAL_OPTIONS) if getattr(args, name) is not None}
    allowed = {"set": set(BUDGET_OPTIONS), "refusals": set(REFUSAL_OPTIONS)}.get(action, set())
    if given - allowed:
        raise CommandError(f"--{sorted(given - allowed)[0].replace('_', '-')} does not apply to budgets {action}")
    needs_name = action in ("set", "rm", "load")
    if needs_name and not args.name:
        raise CommandError(f"budgets {action} needs {'a FILE' if action == 'load' else 'a budget NAME'}")
    if not needs_name and args.name:
        raise CommandError(f"budgets {action} takes no NAME (got {args.name!r})")
    by = args.by or _os_user()
    new: list[Budget] = []
    if action == "set":
        fields = {name: getattr(args, name) for name in BUDGET_OPTIONS if getattr(args, name) is not None}
        new = [Budget.parse(args.name, fields)]
    elif action == "load":
        new = parse_file(_read_text(args.name, "budget file"), args.name)
    if action == "refusals":
        _check_window(args)
    with _ledger(args) as (loop, ledger):
        if new:
            loop.run_until_complete(budget_use.put(ledger, new, by=by))
            for budget in new:
                print(f"budget {budget.name} set: {budget.describe()}", file=sys.stderr)
        elif action == "rm":
            loop.run_until_complete(budget_use.remove(ledger, args.name, by=by))
            print(f"budget {args.name} removed", file=sys.stderr)
        elif action == "refusals":
            found = loop.run_until_complete(
                budget_use.refusals(ledger, since=args.since, until=args.until, identity=args.identity, budget=args.budget, limit=args.last or 100)
            )
            entries = [budget_use.refusal_json(refusal) for refusal in found]
            if args.json:
                print(json.dumps(entries, indent=2))
            else:
                audit.print_refusals(entries)
        else:
            uses = loop.run_until_complete(budget_use.uses(ledger))
            if args.json:
                print(json.dumps([use.json() for use in uses], indent=2))
            else:
                audit.print_budgets([use.json() for use in uses])


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def cmd_show(args: argparse.Namespace) -> None:
    from graphledger import audit

    with _ledger(args) as (loop, ledger):
        run = loop.run_until_complete(audit.show_run(ledger, args.run_id))
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        audit.print_run(run)


def cmd_usage(args: argparse.Namespace) -> None:
    from graphledger import usage_report

    usage_report.run(args, _ledger)


def cmd_db_url(args: argparse.Namespace) -> None:
    server = EmbeddedPostgres(args.data_dir)
    if not server.exists():
        raise CommandError(
            f"no embedded PostgreSQL cluster in {server.data_dir} (graphledger serve or graphledger migrate creates one; "
            "--data-dir DIR looks elsewhere)"
        )
    print(server.recorded_dsn())
    if not server.running():
        print("graphledger: note: the server is not running now; graphledger serve starts it", file=sys.stderr)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2), like the commands' own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


DATA_DIR_HELP = "data directory of the embedded server (default: ./.graphledger)"


def window(command: argparse.ArgumentParser, what: str) -> None:
    """``--since`` and ``--until`` of a command that lists ``what`` in a time window."""
    command.add_argument("--since", type=_time, metavar="T", help=f"{what} at or after this time (ISO 8601; UTC unless given)")
    command.add_argument("--until", type=_time, metavar="T", help=f"{what} before this time (ISO 8601; UTC unless given)")


def parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="PostgreSQL URL (default: $DATABASE_URL; without either, the embedded server under --data-dir)",
    )
    common.add_argument("--data-dir", type=Path, default=DEFAULT_DIR, metavar="DIR", help=DATA_DIR_HELP)
    common.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="what to log on stderr (default: info for serve and migrate, warning for the others)",
    )

    top = Parser(
        prog="graphledger",
        description="An event-sourced run ledger and run server for LangGraph.",
        epilog=(
            "examples:\n  graphledger serve\n  DATABASE_URL=postgresql://u:p@db/ledger graphledger migrate\n"
            "  export DATABASE_URL=$(graphledger db-url)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"graphledger {__version__}")
    commands = top.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (graphledger COMMAND --help shows its options and examples)"
    )

    def command(name: str, *, database: bool = True, **options: Any) -> argparse.ArgumentParser:
        """A subcommand, with the database options unless told otherwise, run by ``cmd_<name>``."""
        parents = [common] if database else []
        sub = commands.add_parser(name, parents=parents, formatter_class=argparse.RawDescriptionHelpFormatter, **options)
        sub.set_defaults(func=globals()[f"cmd_{name.replace('-', '_')}"])
        return sub

    serve = command(
        "serve",
        help="serve the HTTP API (migrates the database first)",
        description="Serve the HTTP API. Without DATABASE_URL a private PostgreSQL is started under --data-dir.",
        epilog=(
            "examples:\n  graphledger serve\n  graphledger serve --host 0.0.0.0 --port 8123\n"
            "  graphledger serve --config ./langgraph.json --workers 4\n"
            "  graphledger serve --graph agent=./agent.py:graph\n"
            "  graphledger serve --workers 0        # HTTP only: another process executes the runs"
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=_port, default=8123, help="TCP port to listen on (default 8123)")
    serve.add_argument(
        "--auth", metavar="SPEC", default=None,
        help="a langgraph_sdk.Auth object, ./auth.py:auth or package.module:attr (default: \"auth\" of langgraph.json, if any)",
    )
    serve.add_argument(
        "--allow-unauthenticated", action="store_true",
        help="serve on a non-loopback address without authentication (refused otherwise)",
    )
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
        "--max-body-bytes", type=_count, default=DEFAULT_MAX_BODY_BYTES, help="larger request bodies are refused with 413 (default 10 MiB)"
    )
    serve.add_argument("--drain", type=_seconds, default=10.0, help="on shutdown, seconds running runs may finish before they are released to other processes (default 10)")
    serve.add_argument(
        "--outage", type=_seconds, default=None,
        help="seconds runs wait out a database outage before it fails them (default 600); their events wait as long as it takes",
    )
    serve.add_argument(
        "--webhook-host", action="append", metavar="HOST",
        help="a host webhooks may name (repeatable); a run naming another is refused with 422 (default: any host)",
    )
    serve.add_argument("--signing-key", metavar="FILE", help="sign a checkpoint of the log with this key (ledger.key) at an interval")
    serve.add_argument(
        "--checkpoint-interval", type=_seconds, default=60.0, metavar="S", help="seconds between signed checkpoints (default 60)"
    )
    serve.add_argument("--checkpoint-dir", metavar="DIR", help="also write each signed checkpoint to this directory")
    serve.add_argument("--prices", type=Path, default=None, metavar="FILE", help="a price file (TOML or JSON) that wins over genai-prices for GET /usage")

    db_url = command(
        "db-url",
        database=False,
        help="print the DATABASE_URL of the embedded server (starts nothing)",
        description=(
            "Print the URL of the embedded server's database under --data-dir, as recorded when it last ran. "
            "It stays valid across restarts while the port is free. Nothing is started or created."
        ),
        epilog=(
            "examples:\n  graphledger db-url\n  export DATABASE_URL=$(graphledger db-url)\n"
            "  psql \"$(graphledger db-url --data-dir /srv/ledger)\""
        ),
    )
    db_url.add_argument("--data-dir", type=Path, default=DEFAULT_DIR, metavar="DIR", help=DATA_DIR_HELP)

    command(
        "migrate",
        help="apply the database migrations",
        description="Bring the database schema to the latest revision (safe to run concurrently).",
        epilog="examples:\n  graphledger migrate\n  graphledger migrate --database-url postgresql://u:p@db/ledger",
    )

    rebuild = command(
        "rebuild",
        help="rebuild the projections from the event log",
        description=(
            "Rebuild run status, token usage and messages (or only some) from the event log alone; the hourly usage rollup "
            "is recomputed with run status or token usage. "
            "Safe while servers append: the new tables are built aside and swapped in under a short lock."
        ),
        epilog="examples:\n  graphledger rebuild\n  graphledger rebuild --only messages --only token_usage\n  graphledger rebuild --snapshots",
    )
    rebuild.add_argument(
        "--only", action="append", choices=PROJECTIONS, help="a projection to rebuild (repeatable)"
    )
    rebuild.add_argument(
        "--snapshots", action="store_true",
        help="also drop the thread snapshot documents (a cache of state and history answers, rendered again when read)",
    )

    export = command(
        "export",
        help="export runs' events as NDJSON, for audits",
        description=(
            "Write the complete record of a run, of a thread's runs, or of the runs created in a time window: "
            "a header line, one line per event (payload exactly as stored, with its chain hash and its inclusion proof in "
            "the latest signed checkpoint), and a trailer. Events newer than that checkpoint carry no proof; with --key, "
            "a checkpoint that covers them all is signed first. See docs/export.md for the format."
        ),
        epilog=(
            "examples:\n  graphledger export --run 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --out run.ndjson\n"
            "  graphledger export --thread 6f1c... > thread.ndjson\n"
            "  graphledger export --since 2026-11-01 --until 2026-12-01 --out november.ndjson\n"
            "  graphledger export --run 1b4e28ba-... --key keys/ledger.key --out run.ndjson   # every event proven"
        ),
    )
    export.add_argument("--run", type=_uuid, metavar="ID", help="one run (UUID)")
    export.add_argument("--thread", type=_uuid, metavar="ID", help="every run of a thread (UUID)")
    export.add_argument("--since", type=_time, metavar="T", help="runs created at or after this time (ISO 8601; UTC unless given)")
    export.add_argument("--until", type=_time, metavar="T", help="runs created before this time (ISO 8601; UTC unless given)")
    export.add_argument("--out", metavar="FILE", help="the file to write (default: standard output)")
    export.add_argument(
        "--key", metavar="FILE",
        help="the signing key (ledger.key): first sign a checkpoint that covers every exported event, unless the latest does",
    )
    export.add_argument("--checkpoint-dir", metavar="DIR", help="with --key: also keep a copy of the checkpoint it signs here")

    verify = command(
        "verify",
        help="check hash chains: of an export file (no database needed), of a run, or of every run",
        description=(
            "Check an export file offline (chains intact, seq contiguous from 1, one terminal event per run, header and "
            "trailer consistent; the first bad line is named), or recompute runs' chains in the database."
        ),
        epilog="examples:\n  graphledger verify run.ndjson\n  graphledger verify --run 1b4e28ba-...\n  graphledger verify --all",
    )
    verify.add_argument("file", nargs="?", metavar="FILE", help="an export file (checked without a database)")
    verify.add_argument("--run", type=_uuid, metavar="ID", help="one run in the database (UUID)")
    verify.add_argument("--all", action="store_true", help="every run in the database")
    verify.add_argument(
        "--checkpoint", metavar="FILE",
        help="with --all: prove the log today extends the log this signed checkpoint describes (recomputed from the events)",
    )
    verify.add_argument(
        "--key", metavar="FILE",
        help="the public key (ledger.pub) that signs the checkpoints: with FILE, every event must be proven in its signed checkpoint",
    )

    keygen = command(
        "keygen",
        database=False,
        help="make the Ed25519 key pair that signs checkpoints of the log",
        description=(
            "Write DIR/ledger.key (the signing key, mode 0600; keep it outside the database) and DIR/ledger.pub "
            "(the public key verifiers use). The key's name is the checkpoints' origin line."
        ),
        epilog="examples:\n  graphledger keygen --out /etc/graphledger\n  graphledger keygen --out keys --name ledger.example.com/prod",
    )
    keygen.add_argument("--out", required=True, metavar="DIR", help="the directory to write the keys to")
    keygen.add_argument("--name", default="graphledger", help="the key's name and the log's origin (default: graphledger)")

    checkpoint = command(
        "checkpoint",
        help="grow the Merkle tree of the log and sign a checkpoint of it now",
        description=(
            "Grow the Merkle tree over the whole log, sign a checkpoint (tree size, root hash, time) with the key, keep it "
            "in the database and print it (or write it to --out). See docs/hash-chain.md."
        ),
        epilog="examples:\n  graphledger checkpoint --key keys/ledger.key --out checkpoint.txt",
    )
    checkpoint.add_argument("--key", required=True, metavar="FILE", help="the signing key (ledger.key)")
    checkpoint.add_argument("--out", metavar="FILE", help="write the signed checkpoint here (default: standard output)")
    checkpoint.add_argument("--checkpoint-dir", metavar="DIR", help="also keep a copy in this directory")

    replay = command(
        "replay",
        help="print a run's events as they happened",
        description="Print a run's events: a readable timeline, or with --sse the exact Server-Sent Events of its stream.",
        epilog=(
            "examples:\n  graphledger replay 1b4e28ba-...\n  graphledger replay 1b4e28ba-... --speed 1      # at the original pace\n"
            "  graphledger replay 1b4e28ba-... --sse > stream.txt"
        ),
    )
    replay.add_argument("run_id", type=_uuid, metavar="RUN_ID", help="the run to replay (UUID)")
    replay.add_argument("--sse", action="store_true", help="the raw SSE bytes the stream sent")
    replay.add_argument("--speed", type=_speed, default=None, help="pace the events: 1 is as they happened, 10 ten times faster (default: at once)")

    runs = command(
        "runs",
        help="list runs with status, tokens and duration",
        description="List runs, newest first.",
        epilog="examples:\n  graphledger runs\n  graphledger runs --status error --since 2026-11-01\n  graphledger runs --thread 6f1c... --json",
    )
    runs.add_argument("--thread", type=_uuid, metavar="ID", help="only the runs of this thread (UUID)")
    runs.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")
    runs.add_argument("--assistant", metavar="A", help="only runs of this assistant (the graph's name)")
    window(runs, "runs created")
    runs.add_argument("--limit", type=_count, default=50, metavar="N", help="at most this many runs (default 50)")
    runs.add_argument("--json", action="store_true", help="JSON for scripts")

    access = command(
        "access-log",
        help="who read the record: exports, event reads, verifications, streams",
        description=(
            "List the access log, newest first: every export, event read, verification and run stream served over HTTP, "
            "with who asked (when the server authenticates), when and from where. The log is append-only and hash-chained."
        ),
        epilog="examples:\n  graphledger access-log\n  graphledger access-log --identity alice --since 2026-11-01 --json\n  graphledger access-log --verify",
    )
    window(access, "entries")
    access.add_argument("--identity", metavar="WHO", help="only the reads of this identity")
    access.add_argument("--limit", type=_count, default=100, metavar="N", help="at most this many entries (default 100)")
    access.add_argument("--verify", action="store_true", help="also recompute the log's hash chain (non-zero exit when it is broken)")
    access.add_argument("--json", action="store_true", help="JSON for scripts")

    budgets = command(
        "budgets",
        help="token and cost budgets enforced at admission: their use, set, rm, load, refusals",
        description=(
            "Budgets limit the tokens (or the cost) of runs per identity, per field of the authenticated user, or per run "
            "metadata value, over a rolling (<N>h, <N>d) or calendar (day, month) window. A run over a budget is refused at "
            "admission with 429, and the refusal is recorded. Budgets are stored in the database; every change is recorded "
            "with who made it (--by, default the OS user). Without an action, list each budget's use."
        ),
        epilog=(
            "examples:\n  graphledger budgets\n  graphledger budgets set daily --per identity --limit 200000 --window 1d\n"
            "  graphledger budgets set search --per metadata.team --match search --limit 5000000 --window month --reserve-per-run 20000\n"
            "  graphledger budgets set acme --per user.org_id --metric cost_usd --limit 250 --window 30d\n"
            "  graphledger budgets load budgets.toml\n  graphledger budgets rm daily\n"
            "  graphledger budgets refusals --identity alice --since 2026-11-01 --json"
        ),
    )
    budgets.add_argument(
        "action", nargs="?", default="list", choices=["list", "set", "rm", "load", "refusals"],
        help="list (default), set NAME, rm NAME, load FILE (TOML or .json; every budget in it, in one transaction), refusals",
    )
    budgets.add_argument("name", nargs="?", metavar="NAME|FILE", help="the budget to set or remove, or the file to load")
    budgets.add_argument("--per", help="set: identity, user.<field> (e.g. user.org_id) or metadata.<key> (e.g. metadata.team)")
    budgets.add_argument("--match", help="set: only this value of the subject (default: each value has its own budget)")
    budgets.add_argument("--metric", help="set: total_tokens (default), input_tokens, output_tokens or cost_usd")
    budgets.add_argument("--limit", help="set: the limit, in tokens or USD")
    budgets.add_argument("--window", help="set: <N>h or <N>d (rolling), day or month (calendar, UTC)")
    budgets.add_argument(
        "--reserve-per-run", dest="reserve_per_run",
        help="set: what each pending or running run holds of the budget until it ends (default 0)",
    )
    budgets.add_argument("--by", help="who makes the change, as recorded (default: the OS user)")
    window(budgets, "refusals:")
    budgets.add_argument("--identity", help="refusals: only this identity's")
    budgets.add_argument("--budget", help="refusals: only this budget's")
    budgets.add_argument("--last", type=_count, metavar="N", help="refusals: at most this many (default 100)")
    budgets.add_argument("--json", action="store_true", help="JSON for scripts")

    show = command(
        "show",
        help="one run: summary, token breakdown, messages",
        description="Show one run: its summary, token usage by model, and its messages.",
        epilog="examples:\n  graphledger show 1b4e28ba-...\n  graphledger show 1b4e28ba-... --json",
    )
    show.add_argument("run_id", type=_uuid, metavar="RUN_ID", help="the run to show (UUID)")
    show.add_argument("--json", action="store_true", help="JSON for scripts")

    from graphledger import usage_report

    usage = command(
        "usage",
        help="token usage and cost over time, per bucket and group, with a bar per row",
        description=(
            "Sum the LLM calls' tokens per time bucket (in a time zone) and group, and price them with genai-prices and "
            "an optional price file. Calls no source prices are counted as unpriced, never as free."
        ),
        epilog=usage_report.EXAMPLES,
    )
    usage_report.add_arguments(usage)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "log_level", None) is None:
        args.log_level = "info" if args.command in INFORMING else "warning"
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command in LONG_WORK:
        settle()
    try:
        args.func(args)
    except (CommandError, EmbeddedError, LedgerError) as exc:  # GraphLoadError is a LedgerError
        print(f"graphledger: error: {exc}", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

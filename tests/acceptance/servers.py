"""Real ``graphledger serve`` processes on one database, for tests that span processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.acceptance.test_serve import free_port, wait_ok

LEASE, GRACE = 2.0, 1.0


class Server:
    """One ``graphledger serve`` on 127.0.0.1; its output goes to a file, so a chatty server never blocks on a pipe."""

    def __init__(self, dsn: str, workdir: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+", dir=workdir)
        self._output = ""
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "graphledger.cli", "serve", "--port", str(self.port), "--database-url", dsn,
                "--lease", str(LEASE), "--lease-grace", str(GRACE), *flags,
            ],
            cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_ok(self.port, self.process)
        except AssertionError:
            raise AssertionError(f"serve did not start: {self.stop()}") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        if self.log.closed:
            return self._output
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        """SIGTERM (SIGKILL after a minute); the server's whole output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._output = self.output()
        self.log.close()
        return self._output

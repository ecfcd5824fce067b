"""The package is typed: ``mypy --strict`` passes, so the test command covers the types too.

The few ``type: ignore`` comments left each name what they excuse: plain dicts
handed to LangChain's TypedDicts in the demo model, an attribute only AI
messages have, and SQLAlchemy's unannotated dialect class.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_passes_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir=/dev/null", "graphledger"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

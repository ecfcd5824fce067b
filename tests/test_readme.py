"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import drop_database, fresh_database, with_database

README = Path(__file__).resolve().parent.parent / "README.md"


async def test_readme_python_example_runs(server_dsn: str, template_db: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "the README has a Python example"
    name = await fresh_database(server_dsn, template_db)
    try:
        for block in blocks:
            result = subprocess.run(
                [sys.executable, "-c", block],
                env=os.environ | {"DATABASE_URL": with_database(server_dsn, name)},
                capture_output=True, text=True, timeout=120,
            )
            assert result.returncode == 0, result.stderr
    finally:
        await drop_database(server_dsn, name)

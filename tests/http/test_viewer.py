"""The viewer's files: all in the wheel, all served, none loaded from elsewhere (the browser test is tests/acceptance/test_viewer.py)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx

from graphledger.http.viewer import ASSETS

ROOT = Path(__file__).parents[2]
VIEWER = ROOT / "graphledger" / "viewer"


def test_every_viewer_file_is_package_data_and_served() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["graphledger"]
    files = sorted(str(path.relative_to(VIEWER)) for path in VIEWER.rglob("*") if path.is_file())
    assert "index.html" in files and "vendor/uPlot.iife.min.js" in files and "vendor/uPlot.LICENSE" in files
    for name in files:
        assert any(fnmatch.fnmatch(f"viewer/{name}", pattern) for pattern in patterns), f"{name} would be missing from a wheel"
    assert sorted(ASSETS) == files


def test_the_viewer_loads_nothing_from_elsewhere() -> None:
    for name in ASSETS:
        if name.startswith("vendor/"):
            continue
        text = (VIEWER / name).read_text()
        assert not re.search(r"""(src|href|url|import|from)\s*[=(]?\s*["']?(https?:)?//""", text), name
    page = (VIEWER / "index.html").read_text()
    loaded = {link for link in re.findall(r'(?:src|href)="([^"]+)"', page) if not link.startswith("#")}
    assert loaded and loaded <= {f"/ui/{name}" for name in ASSETS}


async def test_the_page_and_its_files_are_served_without_credentials(http: httpx.AsyncClient) -> None:
    page = await http.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css"), ("vendor/uPlot.LICENSE", "text/plain")):
        answer = await http.get(f"/ui/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media), name
        assert answer.content == (VIEWER / name).read_bytes()
    for missing in ("nothing.js", "vendor", "%2e%2e/pyproject.toml", "..%2fpyproject.toml", "app.js/x"):
        answer = await http.get(f"/ui/{missing}")
        assert answer.status_code == 404 and answer.json()["detail"].startswith("no viewer file"), missing

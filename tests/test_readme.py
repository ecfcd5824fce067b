"""Every code block of the README is tested: the Python examples run as written (also while a
``graphledger serve`` works on the same database), and the shell commands and the command synopsis
name only commands and flags that exist."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from graphledger.cli import parser
from tests.acceptance.servers import Server
from tests.conftest import drop_database, fresh_database, with_database

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
NEEDS_SERVER = "GRAPHLEDGER_URL"  # the examples that talk to a running server read its URL from here
TESTED = ("python", "sh", "text")


def blocks(language: str) -> list[str]:
    return [code for tag, code in BLOCK.findall(README.read_text()) if tag == language]


def test_every_block_is_of_a_tested_kind() -> None:
    found = BLOCK.findall(README.read_text())
    assert found and all(tag in TESTED for tag, _ in found), [tag for tag, _ in found]
    assert len(blocks("python")) >= 3 and any(NEEDS_SERVER in block for block in blocks("python"))


def run_example(block: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", block], env=os.environ | env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{block}\n{result.stderr}"
    return result


async def test_readme_python_example_runs(server_dsn: str, template_db: str) -> None:
    """The examples that only need a database, on a database nothing else uses."""
    examples = [block for block in blocks("python") if NEEDS_SERVER not in block]
    assert examples, "the README has a Python example"
    name = await fresh_database(server_dsn, template_db)
    try:
        for block in examples:
            await asyncio.to_thread(run_example, block, {"DATABASE_URL": with_database(server_dsn, name)})
    finally:
        await drop_database(server_dsn, name)


async def test_readme_python_examples_run_while_serve_runs(server_dsn: str, template_db: str, tmp_path: Path) -> None:
    """Every Python example, while a ``graphledger serve`` with its default workers runs on the same database.

    The server's workers must leave alone the runs the examples record
    themselves, and the SDK example streams a run from that server.
    """
    name = await fresh_database(server_dsn, template_db)
    dsn = with_database(server_dsn, name)
    server = await asyncio.to_thread(Server, dsn, tmp_path)
    try:
        for block in blocks("python"):
            result = await asyncio.to_thread(run_example, block, {"DATABASE_URL": dsn, NEEDS_SERVER: server.url})
            if NEEDS_SERVER in block:
                events = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
                assert events[0] == "metadata" and {"messages", "values"} <= set(events), result.stdout
    finally:
        output = await asyncio.to_thread(server.stop)
        await drop_database(server_dsn, name)
    assert "Traceback" not in output, output


# -- shell commands and the synopsis ------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(command: str) -> set[str]:
    return {flag for action in subcommands()[command]._actions for flag in action.option_strings}


def pip_flags() -> set[str]:
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(-{1,2}[a-zA-Z][\w-]*)", result.stdout))


def check_pip_install(words: list[str]) -> None:
    flags = pip_flags()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for word in words:
        if word.startswith("-"):
            assert word in flags, f"pip install has no {word}"
        elif word.startswith("."):
            target, _, extra = word.partition("[")
            assert (ROOT / target / "pyproject.toml").exists(), word
            assert not extra or extra.rstrip("]") in extras, f"no extra {extra!r} in pyproject.toml"
        else:
            importlib.metadata.distribution(word)  # a real distribution: this test environment has it


def check_graphledger(words: list[str]) -> None:
    entry = Path(sys.executable).parent / "graphledger"
    result = subprocess.run([str(entry), *words[:1], "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for word in words[1:]:
        if word.startswith("-"):
            assert word.split("=")[0] in result.stdout, f"graphledger {words[0]} has no {word}"


def check_shell_step(words: list[str]) -> None:
    program = Path(words[0]).name
    if program in ("python3", "python") and words[1:3] == ["-m", "venv"]:
        assert importlib.util.find_spec("venv") is not None
    elif program in ("python3", "python") and words[1] == "-m":
        assert importlib.util.find_spec(words[2]) is not None, f"no module {words[2]}"
    elif program == "pip" and words[1] == "install":
        check_pip_install(words[2:])
    elif program == "graphledger":
        check_graphledger(words[1:])
    else:
        raise AssertionError(f"the README runs {words[0]!r}, which this test does not know how to check")


def test_readme_shell_commands_exist_with_their_flags() -> None:
    steps: list[list[str]] = []
    for block in blocks("sh"):
        for line in block.splitlines():
            step: list[str] = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word != "&&":
                    step.append(word)
                elif step:
                    steps.append(step)
                    step = []
    assert steps and any(Path(words[0]).name == "graphledger" for words in steps)
    for words in steps:
        check_shell_step(words)


def test_the_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(block.strip() in ci for block in blocks("sh")), "the README's test command is .ci/run's, verbatim"


def test_the_synopsis_names_every_command_with_flags_it_has() -> None:
    (synopsis,) = blocks("text")
    entries = re.split(r"^(?=graphledger )", synopsis, flags=re.MULTILINE)
    named: dict[str, str] = {}
    for entry in filter(None, entries):
        _, command, rest = entry.split(maxsplit=2)
        named[command] = rest
    assert sorted(named) == sorted(subcommands()), "every command, and only those"
    for command, rest in named.items():
        for flag in re.findall(r"--[a-z][a-z-]*", rest):
            assert flag in options(command), f"graphledger {command} has no {flag}"

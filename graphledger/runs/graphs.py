"""Graphs by name: the ``graphs`` map of a ``langgraph.json``, ``--graph NAME=module:attr`` flags, or the demo.

A spec is ``./path/to/file.py:attr`` (a path relative to the config file) or
``package.module:attr``, as the LangGraph CLI reads them. The attribute is a
compiled graph, or a function that makes one (called per run, with the run's
config when it takes an argument; it may be async). Every graph is loaded when
the registry is built, so a bad spec stops ``graphledger serve`` at once with
the reason.

A request's ``assistant_id`` names a graph. The runs of a graph share the
server's checkpointer and store (:mod:`graphledger.runs.store`), unless the
graph was compiled with its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from graphledger.runs.errors import GraphLoadError, UnknownAssistant

DEMO = "demo"
DEMO_SPEC = "graphledger.runs.demo:graph"
CONFIG_FILE = "langgraph.json"


def _is_graph(value: Any) -> bool:
    return callable(getattr(value, "astream", None)) and callable(getattr(value, "copy", None))


def load_spec(spec: str, base: Path | None = None) -> Any:
    """The object a ``path.py:attr`` or ``module:attr`` spec names."""
    location, sep, attr = spec.rpartition(":")
    if not sep or not location or not attr:
        raise GraphLoadError(f"graph spec {spec!r} must be ./file.py:attribute or package.module:attribute")
    if location.endswith(".py") or "/" in location or location.startswith("."):
        path = ((base or Path.cwd()) / location).resolve()
        if not path.is_file():
            raise GraphLoadError(f"graph spec {spec!r}: file {path} not found")
        name = f"graphledger_graphs.{path.stem}_{abs(hash(str(path))):x}"
        module = sys.modules.get(name)
        if module is None:
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))  # the graph's own imports of its neighbours
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise GraphLoadError(f"graph spec {spec!r}: loading {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(location)
        except Exception as exc:
            raise GraphLoadError(f"graph spec {spec!r}: cannot import {location}: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise GraphLoadError(f"graph spec {spec!r}: {location} has no attribute {attr!r}") from None


class GraphRegistry:
    """Named graphs; :meth:`resolve` gives the graph a run executes."""

    def __init__(self, graphs: Mapping[str, Any]) -> None:
        self._graphs: dict[str, Any] = {}
        for name, value in graphs.items():
            if not isinstance(name, str) or not name:
                raise GraphLoadError(f"graph name {name!r} must be a non-empty string")
            if not _is_graph(value) and not callable(value):
                raise GraphLoadError(f"graph {name!r} is a {type(value).__name__}, not a compiled graph or a function making one")
            self._graphs[name] = value

    @classmethod
    def from_specs(cls, specs: Mapping[str, str], base: Path | None = None) -> GraphRegistry:
        return cls({name: load_spec(spec, base) for name, spec in specs.items()})

    @classmethod
    def from_config(cls, path: Path) -> GraphRegistry:
        """The graphs of a ``langgraph.json`` (paths in it are relative to the file)."""
        try:
            config = json.loads(path.read_text())
        except OSError as exc:
            raise GraphLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise GraphLoadError(f"{path} is not valid JSON: {exc}") from exc
        graphs = config.get("graphs") if isinstance(config, dict) else None
        if not isinstance(graphs, dict) or not graphs:
            raise GraphLoadError(f'{path} needs a "graphs" object mapping names to "./file.py:attribute" specs')
        specs = {}
        for name, spec in graphs.items():
            if isinstance(spec, dict):  # {"path": "...", "description": "..."}
                spec = spec.get("path")
            if not isinstance(spec, str):
                raise GraphLoadError(f"{path}: graph {name!r} needs a spec string like ./agent.py:graph")
            specs[name] = spec
        return cls.from_specs(specs, path.parent)

    @classmethod
    def configure(cls, config: Path | None = None, flags: Iterable[str] = (), *, cwd: Path | None = None) -> GraphRegistry:
        """The server's graphs: ``config`` (else ``./langgraph.json`` when present) and ``NAME=SPEC`` flags; the demo when none."""
        cwd = cwd or Path.cwd()
        graphs: dict[str, Any] = {}
        if config is None and (cwd / CONFIG_FILE).is_file():
            config = cwd / CONFIG_FILE
        if config is not None:
            graphs.update(cls.from_config(config)._graphs)
        for flag in flags:
            name, sep, spec = flag.partition("=")
            if not sep or not name or not spec:
                raise GraphLoadError(f"--graph {flag!r} must be NAME=./file.py:attribute or NAME=package.module:attribute")
            graphs[name] = load_spec(spec, cwd)
        if not graphs:
            graphs[DEMO] = load_spec(DEMO_SPEC)
        return cls(graphs)

    @property
    def names(self) -> list[str]:
        return sorted(self._graphs)

    def __contains__(self, name: object) -> bool:
        return name in self._graphs

    def check(self, name: str) -> None:
        """Raise :class:`UnknownAssistant` unless ``name`` is registered."""
        if name not in self._graphs:
            raise UnknownAssistant(f"assistant {name!r} not found; registered graphs: {', '.join(self.names)}")

    async def resolve(self, name: str, config: Mapping[str, Any], checkpointer: Any = None, store: Any = None) -> Any:
        """The graph for one run: made by its factory if it has one, with ``checkpointer`` and ``store`` unless it has its own."""
        self.check(name)
        value = self._graphs[name]
        graph = value
        if not _is_graph(value):
            takes_config = bool(inspect.signature(value).parameters)
            graph = value(config) if takes_config else value()
            if inspect.isawaitable(graph):
                graph = await graph
            if not _is_graph(graph):
                raise GraphLoadError(f"graph factory {name!r} returned a {type(graph).__name__}, not a compiled graph")
        update = {
            name: given for name, given in (("checkpointer", checkpointer), ("store", store))
            if given is not None and getattr(graph, name, None) is None
        }
        return graph.copy(update=update) if update else graph

"""What a run must never write down: secret values, found by key, by URL and by value.

A run's secrets are found once, at admission, in what a caller sends
(config, context, run metadata, thread metadata):

* **by key**: a value under a key that names a secret (``api_key``,
  ``openaiApiKey``, ``accessToken``, ``password``, ``Cookie``, ...; not
  ``max_tokens`` or ``author``), at any depth, in objects and in lists of
  objects. The whole value is replaced by :data:`REDACTED`.
* **by URL**: the password of a URL's user-info in any string value
  (``postgresql://u:secret@h/db`` -> ``postgresql://u:[redacted]@h/db``).

Every string found that way is then a *known secret value* of the run
(:class:`Scrubber`), which is replaced by :data:`REDACTED` wherever it
appears, in any payload of the run (input, stream chunks of every mode, usage,
errors) and in what the checkpointer writes. Values shorter than
:data:`MIN_VALUE_LENGTH` characters are redacted by key and URL only: a short
value replaced everywhere would mangle unrelated text.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import BaseModel

from graphledger.ledger.events import canonical_json

REDACTED = "[redacted]"
"""What a secret value is replaced with, in the log, the projections and the checkpointer."""
MIN_VALUE_LENGTH = 4
"""Known secret values at least this long are scrubbed by value everywhere."""

# Words that name a secret wherever they appear in a key.
_ANYWHERE = frozenset({
    "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase", "passcode",
    "credential", "credentials", "creds", "apikey", "apikeys", "authorization", "bearer",
    "privatekey", "cookie", "cookies", "jwt",
})
# Words that name a secret when they end the key (``access_token``, not ``token_count``).
_LAST = frozenset({"token", "auth", "sessiontoken", "accesstoken"})
# Words that name a secret when they end the key after one of the given words (``api_key``, ``refresh_tokens``).
_QUALIFIED_LAST: dict[str, frozenset[str]] = {
    "key": frozenset({"api", "access", "private", "secret", "signing", "encryption", "master", "client", "ssh", "license", "session"}),
    "keys": frozenset({"api", "access", "private", "secret", "signing", "encryption", "ssh"}),
    "tokens": frozenset({"access", "refresh", "session", "auth", "bearer", "id", "api", "oauth"}),
    "header": frozenset({"auth", "authorization", "cookie"}),
}
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:@/?#\s]*:)([^@/?#\s]+)(@)")


def key_words(key: str) -> list[str]:
    """The words of a key, lower case: ``openaiApiKey`` and ``OPENAI-API-KEY`` are ``openai api key``."""
    return [word.lower() for word in _WORD.findall(key)]


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a key names a secret (``openai_api_key``, ``accessToken``, ``Cookie``; not ``max_tokens``, ``author``)."""
    words = key_words(key)
    if not words:
        return False
    if any(word in _ANYWHERE for word in words):
        return True
    last = words[-1]
    if last in _LAST:
        return True
    before = _QUALIFIED_LAST.get(last)
    return before is not None and len(words) > 1 and words[-2] in before


def url_passwords(text: str) -> list[str]:
    """The passwords of the URLs in ``text`` (``scheme://user:password@host``)."""
    return [match.group(2) for match in _URL_PASSWORD.finditer(text)]


def without_url_passwords(text: str) -> str:
    """``text`` with the password of every URL replaced by :data:`REDACTED`."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


def without_url_secrets(url: str) -> str:
    """A URL fit for the log: its user-info, every query value and its fragment replaced by :data:`REDACTED`.

    Which of them hold a secret cannot be told (a token in a query parameter,
    a signature, a user name that is a key), so none is kept. The scheme,
    host, port, path and the query's parameter names stay (a query item
    without ``=`` is a value, and goes).
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    query = "&".join(
        name + "=" + REDACTED if sep else REDACTED for name, sep, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, REDACTED if parts.fragment else ""))


def _path(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def split_secrets(value: Any, prefix: str = "") -> tuple[Any, Any, list[str]]:
    """``value`` with its secrets replaced by :data:`REDACTED`, the secrets, and the paths redacted.

    The secrets have the shape of ``value`` where they are: an object of the
    secret keys (and of objects holding some); a list becomes an object keyed
    by the indexes holding some (``{"0": {"api_key": ...}}``); a string with
    a URL password is kept whole. :func:`merge_secrets` puts them back.
    Returns ``None`` for secrets when there are none.
    """
    if isinstance(value, Mapping):
        kept: dict[str, Any] = {}
        secrets: dict[str, Any] = {}
        paths: list[str] = []
        for key, item in value.items():
            if isinstance(key, str) and is_secret_key(key) and item is not None and item != "":
                kept[key] = REDACTED
                secrets[key] = item
                paths.append(_path(prefix, key))
                continue
            inner_kept, inner_secrets, inner_paths = split_secrets(item, _path(prefix, key))
            kept[key] = inner_kept
            if inner_secrets is not None:
                secrets[key] = inner_secrets
                paths.extend(inner_paths)
        return kept, (secrets or None), paths
    if isinstance(value, (list, tuple)):
        kept_items: list[Any] = []
        indexed: dict[str, Any] = {}
        paths = []
        for index, item in enumerate(value):
            inner_kept, inner_secrets, inner_paths = split_secrets(item, _path(prefix, index))
            kept_items.append(inner_kept)
            if inner_secrets is not None:
                indexed[str(index)] = inner_secrets
                paths.extend(inner_paths)
        return kept_items, (indexed or None), paths
    if isinstance(value, str) and "://" in value:
        redacted = without_url_passwords(value)
        if redacted != value:
            return redacted, value, [prefix]
    return value, None, []


def merge_secrets(kept: Any, secrets: Any) -> Any:
    """``kept`` with ``secrets`` (from :func:`split_secrets`) put back."""
    if secrets is None:
        return kept
    if isinstance(kept, Mapping) and isinstance(secrets, Mapping):
        merged = dict(kept)
        for key, value in secrets.items():
            merged[key] = merge_secrets(merged[key], value) if key in merged and isinstance(value, Mapping) else value
        return merged
    if isinstance(kept, list) and isinstance(secrets, Mapping):
        items = list(kept)
        for index, value in secrets.items():
            position = int(index)
            if 0 <= position < len(items):
                items[position] = merge_secrets(items[position], value)
        return items
    return secrets


def strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` (keys aside), and the password of every URL among them."""
    if isinstance(value, str):
        yield value
        yield from url_passwords(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _encoded(value: str) -> str:
    """``value`` as it appears inside a JSON string of the log's canonical JSON."""
    return orjson.dumps(value).decode()[1:-1]


class Scrubber:
    """Replaces a run's known secret values with :data:`REDACTED`, in JSON text and in objects.

    :meth:`text` is on the streaming path: a search over the chunk's JSON
    text finds whether any value is there (matched as it appears encoded in
    JSON); only then is the chunk decoded, scrubbed and encoded again. The
    search is one ``in`` per distinct encoded form: CPython's substring search
    takes about 0.2 us per form on a token chunk, where one regular expression
    of the alternatives took 3 to 4 us. A run without secrets has no scrubber
    at all (:meth:`of` is None).
    """

    __slots__ = ("values", "_forms")

    def __init__(self, values: Iterable[str]) -> None:
        unique = {v for v in values if isinstance(v, str) and len(v) >= MIN_VALUE_LENGTH}
        self.values: tuple[str, ...] = tuple(sorted(unique, key=lambda v: (-len(v), v)))
        forms = {form for v in self.values for form in (v, _encoded(v), json.dumps(v)[1:-1])}
        self._forms = tuple(sorted(forms, key=lambda f: (-len(f), f)))

    @classmethod
    def of(cls, values: Iterable[str]) -> Scrubber | None:
        """A scrubber of ``values``, or None when none of them is long enough to be scrubbed by value."""
        scrubber = cls(values)
        return scrubber if scrubber.values else None

    def found(self, text: str) -> bool:
        """Whether a known value is in JSON text ``text``."""
        for form in self._forms:
            if form in text:
                return True
        return False

    def text(self, data: str) -> str:
        """JSON text ``data`` with every known value replaced, as canonical JSON (``data`` itself when none is there)."""
        if not self.found(data):
            return data
        return canonical_json(self.json(json.loads(data)))

    def string(self, value: str) -> str:
        for secret in self.values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def json(self, value: Any) -> Any:
        """JSON-like ``value`` (dicts, lists, strings, ...) with every known value replaced, in keys and values."""
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, dict):
            return {self.string(k): self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        return value

    def object(self, value: Any, _depth: int = 0) -> Any:
        """Any Python ``value`` (state values: messages, models, dataclasses, containers) with known values replaced.

        Returns ``value`` itself when nothing in it changed; a changed model
        or dataclass is a copy.
        """
        if isinstance(value, str):
            return self.string(value)
        if _depth > 100 or value is None or isinstance(value, (bool, int, float, bytes)):
            return value
        depth = _depth + 1
        if isinstance(value, dict):
            changed = False
            out: dict[Any, Any] = {}
            for key, item in value.items():
                new_key = self.string(key) if isinstance(key, str) else key
                new_item = self.object(item, depth)
                changed = changed or new_key != key or new_item is not item
                out[new_key] = new_item
            return out if changed else value
        if isinstance(value, (list, tuple)):
            items = [self.object(item, depth) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items if isinstance(value, list) else (tuple(items) if type(value) is tuple else type(value)(*items))
        if isinstance(value, BaseModel):
            updates = {name: new for name, old in vars(value).items() if (new := self.object(old, depth)) is not old}
            return value.model_copy(update=updates) if updates else value
        if isinstance(value, BaseException):
            return self._exception(value, depth)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {
                f.name: new for f in dataclasses.fields(value)
                if f.init and (new := self.object(getattr(value, f.name), depth)) is not getattr(value, f.name)
            }
            return dataclasses.replace(value, **changes) if changes else value
        return value

    def _exception(self, error: BaseException, depth: int) -> BaseException:
        """A copy of ``error`` with known values replaced in its arguments and attributes (the graph's own is left alone)."""
        args = self.object(error.args, depth)
        attributes = {name: new for name, old in vars(error).items() if (new := self.object(old, depth)) is not old}
        if args is error.args and not attributes:
            return error
        try:  # the same type, made without its __init__ (whose signature is its own)
            scrubbed = type(error).__new__(type(error), *args)
            vars(scrubbed).update(vars(error))
        except Exception:
            scrubbed = Exception(*args)
        scrubbed.args = tuple(args)
        for name, value in attributes.items():
            with contextlib.suppress(Exception):
                setattr(scrubbed, name, value)
        return scrubbed

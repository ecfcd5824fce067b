"""Budgets: limits on the tokens (or the cost) of runs over a window, enforced at admission.

A budget is named and applies to runs **per** a subject:

* ``identity``: the authenticated user who created the run (the ``actor``
  recorded in ``run.created``); a run created without authentication has none;
* ``user.<field>``: a field of that user (a tenant, an organisation: whatever
  the ``@auth.authenticate`` handler returned, e.g. ``user.org_id``);
* ``metadata.<key>``: a value of the run's metadata (after an authorization
  handler stamped it, e.g. ``metadata.team``).

With ``match`` the budget applies to that one value; without, each value has
a budget of its own (``per identity`` with no match: every user has
``limit`` tokens a day). A run whose subject is missing, or not a string,
number or boolean, is not under the budget.

``metric`` is what is counted from the token usage projection over the runs
charged to the key: ``total_tokens``, ``input_tokens``, ``output_tokens``, or
``cost_usd`` (each call priced by :mod:`graphledger.runs.pricing`). ``window``
is rolling (``<N>h``, ``<N>d``: the last N hours or days, by the calls'
recorded timestamps) or calendar (``day``, ``month``: since the start of the
current UTC day or month).

**The admission rule.** ``used`` is the metric summed over the calls, in the
window, of the runs charged to the key; ``reserved`` is, for each charged run
still pending or running, what its reservation (``reserve_per_run``) exceeds
what it has used in the window. With ``headroom = limit - used - reserved``,
a run is admitted iff ``headroom > 0`` and ``headroom >= reserve_per_run``;
it is then charged to the key (and holds its reservation until it ends).
Admissions under one key are serialised (:mod:`graphledger.runs.lifecycle`),
so N concurrent admissions against a budget with room for K runs admit
exactly K.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from graphledger.runs.errors import InvalidBudget

METRICS = ("total_tokens", "input_tokens", "output_tokens", "cost_usd")
CALENDAR_WINDOWS = ("day", "month")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_ROLLING = re.compile(r"^([1-9][0-9]{0,4})([hd])$")
_SUBJECT = re.compile(r"^(identity|user\.[A-Za-z0-9_-]{1,64}|metadata\.[^\s]{1,128})$")
FIELDS = ("per", "match", "metric", "limit", "window", "reserve_per_run")
MAX_LIMIT = Decimal(2**62)
Number = int | Decimal


def _number(name: str, value: Any, metric: str, *, positive: bool) -> Number:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise InvalidBudget(f"{name} must be a number, not {json.dumps(value) if _jsonable(value) else type(value).__name__}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidBudget(f"{name} must be a number, not {value!r}") from None
    if not number.is_finite() or number < 0 or (positive and number == 0) or number > MAX_LIMIT:
        raise InvalidBudget(f"{name} must be a {'positive' if positive else 'non-negative'} number, not {value}")
    if metric == "cost_usd":
        return number
    if number != number.to_integral_value():
        raise InvalidBudget(f"{name} is a number of tokens: a whole number, not {value}")
    return int(number)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget's definition (see the module's docstring)."""

    name: str
    per: str
    limit: Number
    window: str
    metric: str = "total_tokens"
    match: str | None = None
    reserve_per_run: Number = 0

    @classmethod
    def parse(cls, name: Any, fields: Mapping[str, Any]) -> Budget:
        """A budget from a file's table or the CLI's options; :class:`InvalidBudget` says what is wrong, in one line."""
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidBudget(f"budget name {name!r} must be 1 to 64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit")
        if not isinstance(fields, Mapping):
            raise InvalidBudget(f"budget {name}: must be a table of {', '.join(FIELDS)}")
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise InvalidBudget(f"budget {name}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        for required in ("per", "limit", "window"):
            if fields.get(required) is None:
                raise InvalidBudget(f"budget {name}: {required} is required")
        per = fields["per"]
        if not isinstance(per, str) or not _SUBJECT.match(per):
            raise InvalidBudget(f"budget {name}: per must be identity, user.<field> or metadata.<key>, not {per!r}")
        metric = fields.get("metric") or "total_tokens"
        if metric not in METRICS:
            raise InvalidBudget(f"budget {name}: metric must be one of {', '.join(METRICS)}, not {metric!r}")
        window = fields["window"]
        if not isinstance(window, str) or not (window in CALENDAR_WINDOWS or _ROLLING.match(window)):
            raise InvalidBudget(f"budget {name}: window must be day, month, <N>h or <N>d (e.g. 1d, 30d, 12h), not {window!r}")
        match = fields.get("match")
        if match is not None and (not isinstance(match, (str, int, float)) or isinstance(match, bool) or match == ""):
            raise InvalidBudget(f"budget {name}: match must be a non-empty string or a number, not {match!r}")
        return cls(
            name=name,
            per=per,
            limit=_number(f"budget {name}: limit", fields["limit"], metric, positive=True),
            window=window,
            metric=metric,
            match=key_text(match) if match is not None else None,
            reserve_per_run=_number(f"budget {name}: reserve_per_run", fields.get("reserve_per_run", 0), metric, positive=False),
        )

    @classmethod
    def stored(cls, name: str, definition: Mapping[str, Any]) -> Budget:
        """The budget a ``budgets`` row holds."""
        return cls.parse(name, definition)

    def json(self) -> dict[str, Any]:
        """The definition as stored and shown (a cost is a decimal string, so it is exact)."""
        found: dict[str, Any] = {"per": self.per, "metric": self.metric, "limit": number_json(self.limit), "window": self.window}
        if self.match is not None:
            found["match"] = self.match
        found["reserve_per_run"] = number_json(self.reserve_per_run)
        return found

    @property
    def path(self) -> list[str]:
        """Where the subject is in a ``run.created`` payload."""
        if self.per == "identity":
            return ["actor", "identity"]
        head, _, name = self.per.partition(".")
        return ["actor" if head == "user" else "metadata", name]

    def key_of(self, created: Mapping[str, Any]) -> str | None:
        """The key a run (its ``run.created`` payload) is charged to under this budget; None: the budget does not apply."""
        value: Any = created
        for part in self.path:
            value = value.get(part) if isinstance(value, Mapping) else None
        key = key_text(value)
        if key is None or (self.match is not None and key != self.match):
            return None
        return key

    def start(self, now: datetime) -> datetime:
        """Where the window that ends at ``now`` starts."""
        now = now.astimezone(timezone.utc)
        if self.window == "day":
            return now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.window == "month":
            return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return now - self.length

    @property
    def length(self) -> timedelta:
        """A rolling window's length (calendar windows have none)."""
        found = _ROLLING.match(self.window)
        assert found is not None, "a calendar window has no fixed length"
        count = int(found.group(1))
        return timedelta(hours=count) if found.group(2) == "h" else timedelta(days=count)

    def next_start(self, now: datetime) -> datetime:
        """When a calendar window starts afresh."""
        start = self.start(now)
        if self.window == "day":
            return start + timedelta(days=1)
        return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)

    def describe(self) -> str:
        """``team=search: 100000 total_tokens per 1d`` and the like, for messages."""
        who = self.per if self.match is None else f"{self.per}={self.match}"
        return f"{who}: {number_json(self.limit)} {self.metric} per {self.window}"


def key_text(value: Any) -> str | None:
    """A subject's value as a key: a string as it is, a number or boolean as JSON writes it (as ``->>`` does); else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return json.dumps(value)
    return None


def number_json(value: Number) -> int | str:
    """A token count as an int, a cost as a decimal string."""
    return value if isinstance(value, int) else format(value.normalize(), "f")


def parse_file(text: str, source: str) -> list[Budget]:
    """The budgets of a TOML (``[budgets.NAME]`` tables) or JSON (``{"budgets": {NAME: {...}}}``) file's text."""
    import tomllib

    data: Any
    if source.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidBudget(f"{source}: not JSON: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidBudget(f"{source}: not TOML: {exc}") from None
    if not isinstance(data, Mapping) or set(data) != {"budgets"} or not isinstance(data["budgets"], Mapping):
        raise InvalidBudget(f"{source}: expected only a \"budgets\" table of budgets by name ([budgets.NAME] in TOML)")
    if not data["budgets"]:
        raise InvalidBudget(f"{source}: no budgets in it")
    found = []
    for name, fields in data["budgets"].items():
        try:
            found.append(Budget.parse(name, fields))
        except InvalidBudget as exc:
            raise InvalidBudget(f"{source}: {exc}") from None
    return found


@dataclass(frozen=True, slots=True)
class Use:
    """A budget's use under one key at one time: what the admission rule reads."""

    budget: Budget
    key: str
    used: Number
    reserved: Number
    window_start: datetime
    unpriced_calls: int = 0  # calls of a cost budget no price covered
    unknown_calls: int = 0  # calls whose model reported no usage (counted, not summed)

    @property
    def headroom(self) -> Number:
        return self.budget.limit - self.used - self.reserved

    @property
    def admits(self) -> bool:
        """Whether one more run fits: see the module's docstring; never with unpriced calls in a cost budget's window."""
        if self.unpriced_calls:
            return False
        return self.headroom > 0 and self.headroom >= self.budget.reserve_per_run

    @property
    def percent(self) -> float:
        return round(float((self.used + self.reserved) * 100 / self.budget.limit), 1)

    def json(self) -> dict[str, Any]:
        found = {
            "budget": self.budget.name, "key": self.key, **self.budget.json(),
            "used": number_json(self.used), "reserved": number_json(self.reserved),
            "percent": self.percent, "window_start": self.window_start.isoformat(),
        }
        if self.unknown_calls:
            found["unknown_usage_calls"] = self.unknown_calls
        if self.budget.metric == "cost_usd":
            found["unpriced_calls"] = self.unpriced_calls
        return found

    def detail(self) -> str:
        """Why a run is refused, naming the budget, its use and its limit."""
        budget = self.budget
        if self.unpriced_calls:
            return (
                f"budget {budget.name} ({budget.describe()}) for {self.key}: {self.unpriced_calls} calls in its window have no price, "
                "so its use is unknown; add their models to the price file"
            )
        reserved = f" + {number_json(self.reserved)} reserved by active runs" if self.reserved else ""
        reserve = f" (a run reserves {number_json(budget.reserve_per_run)})" if budget.reserve_per_run else ""
        return (
            f"budget {budget.name} exhausted for {budget.per} {self.key}: {number_json(self.used)}{reserved} of "
            f"{number_json(budget.limit)} {budget.metric} used in the window {budget.window}{reserve}"
        )


def retry_after(use: Use, calls: Sequence[tuple[datetime, Number]], now: datetime) -> int | None:
    """Seconds until the window has let go of enough settled use to admit a run; None when it never will by itself.

    ``calls`` are the window's calls (time, metric) oldest first. Active runs'
    reservations are assumed to stay as they are (they end when they end).
    """
    budget = use.budget
    if use.unpriced_calls:
        return None
    def fits(used: Number) -> bool:
        headroom = budget.limit - used - use.reserved
        return headroom > 0 and headroom >= budget.reserve_per_run

    if budget.window in CALENDAR_WINDOWS:
        return max(1, math.ceil((budget.next_start(now) - now).total_seconds())) if fits(0) else None
    if not fits(0):
        return None
    remaining = use.used
    for ts, amount in calls:
        remaining -= amount
        if fits(remaining):
            return max(1, math.ceil((ts + budget.length - now).total_seconds()))
    return None


def keys(budgets: Iterable[Budget], created: Mapping[str, Any]) -> list[tuple[Budget, str]]:
    """The budgets a run (its ``run.created`` payload) is under, with its key in each, in lock order (by name)."""
    found = [(budget, key) for budget in budgets if (key := budget.key_of(created)) is not None]
    return sorted(found, key=lambda pair: pair[0].name)

"""graphledger.process: a process settled for load (in a child process: settling is for the process's lifetime)."""

from __future__ import annotations

import json
import subprocess
import sys

from graphledger.process import YOUNG_THRESHOLD

PROBE = """
import gc, json, weakref
from graphledger.process import settle
before = gc.get_threshold()
class Cycle:
    pass
cycle = Cycle()
cycle.self = cycle
gone = weakref.ref(cycle)
del cycle  # garbage before settling: collected, not frozen
settle()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "collected": gone() is None}))
"""


def test_settle_freezes_the_startup_and_makes_young_collections_rarer() -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout)
    assert out["before"][0] < YOUNG_THRESHOLD  # Python's default: 700 up to 3.12, 2,000 from 3.13
    assert out["after"] == [YOUNG_THRESHOLD, *out["before"][1:]]
    assert out["frozen"] > 1000  # the modules' objects, out of the full collections' way
    assert out["collected"]

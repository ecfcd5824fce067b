"""What a long-running graphledger process does once its startup is done.

``serve`` calls :func:`settle` after its application has started, the
commands that work through the log before they start (``graphledger.cli``'s
``LONG_WORK``), and the benchmarks before they measure, so that they measure
the process ``serve`` runs.
"""

from __future__ import annotations

import gc

# Python 3.11's default collects the youngest generation every 700 net allocations
# of container objects (2,000 from 3.13). A writer under load allocates several per event (the
# event, its pending entry, its timestamp), so the collector ran every hundred
# or so events. At 10,000 the writer appended 4 to 16% more events/s and the log
# check 63% more (BENCHMARKS.md: Append path, The Merkle log), and a young
# collection still takes well under a millisecond.
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Ready this process for load: its startup's objects out of the collector's way, young collections rarer.

    The objects loaded so far (modules, graphs, the pool) are frozen out of
    the garbage collector's full collections, which otherwise walked them
    and stopped the event loop for 80 to 100 ms every few seconds (10 ms
    frozen); the youngest generation is collected every ``YOUNG_THRESHOLD``
    allocations instead of Python's default (700 in 3.11). The older generations
    keep their thresholds.
    """
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

"""Progress of long work: a line on a terminal, nothing elsewhere."""

from __future__ import annotations

import io

from graphledger.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_with_a_total_only_on_a_terminal() -> None:
    screen = Terminal()
    bar = Progress("rebuild", stream=screen)
    bar(50, 100)
    bar(100, 100)
    bar.close()
    assert "50%" in screen.getvalue() and "100% 100/100 events" in screen.getvalue() and screen.getvalue().endswith("\n")
    piped = io.StringIO()
    bar = Progress("rebuild", stream=piped)
    bar(100, 100)
    bar.close()
    assert piped.getvalue() == ""


def test_a_count_without_a_total_ends_with_the_last_count_even_when_updates_come_fast() -> None:
    screen = Terminal()
    count = Progress("events exported", stream=screen)
    for done in range(1, 1001):
        count(done)
    count.close()
    assert screen.getvalue().count("\r") < 20  # throttled
    assert screen.getvalue().rsplit("\r", 1)[1].startswith("events exported: 1,000 events")


def test_nothing_is_written_when_nothing_was_counted() -> None:
    screen = Terminal()
    Progress("runs verified", stream=screen).close()
    assert screen.getvalue() == ""

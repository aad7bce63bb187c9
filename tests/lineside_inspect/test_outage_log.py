"""OutageLog's count of failures no success ends (adversarial read, session 52)."""

from __future__ import annotations

import logging

from lineside_inspect.outage_log import OutageLog


def test_quiet_causes_are_handed_back_with_their_counts_and_forgotten() -> None:
    """A cause with no failure for ``quiet_s`` comes back once with its total and the
    times not said, and is forgotten (its next failure is said again as a first); one
    failing since is kept."""
    outages = OutageLog(logging.getLogger("test.outage_log"))
    for _ in range(5):
        outages.failed("garbage", logging.WARNING, "garbage")
    outages.failed("busy", logging.WARNING, "busy")
    assert outages.quiet(1e9) == []  # (nothing has been quiet that long)
    assert outages.open
    assert sorted(outages.quiet(0.0)) == [("busy", 1, 0), ("garbage", 5, 4)]
    assert not outages.open and outages.quiet(None) == []
    outages.failed("garbage", logging.WARNING, "garbage")
    assert outages.quiet(None) == [("garbage", 1, 0)]

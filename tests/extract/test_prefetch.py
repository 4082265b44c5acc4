"""The next batch is prepared in the background, one ahead, in order; errors reach the caller."""

from __future__ import annotations

import threading

import pytest

from halp.extract.prefetch import prefetched


def test_items_are_made_one_ahead_in_another_thread_and_kept_in_order():
    events = []

    def items():
        for i in range(4):
            events.append(("made", i, threading.current_thread() is threading.main_thread()))
            yield i

    for i in prefetched(items(), enabled=True):
        events.append(("used", i))
        if i < 3:  # while item i is in use, item i + 1 is being (or has been) made
            threading.Event().wait(0.05)
            assert ("made", i + 1, False) in events
    assert [e[1] for e in events if e[0] == "used"] == [0, 1, 2, 3]
    assert not any(e[2] for e in events if e[0] == "made"), "items must be made off the main thread"


def test_disabled_makes_each_item_in_the_callers_thread():
    made_in = []

    def items():
        for i in range(3):
            made_in.append(threading.current_thread() is threading.main_thread())
            yield i

    assert list(prefetched(items(), enabled=False)) == [0, 1, 2]
    assert all(made_in)


def test_an_error_while_making_an_item_reaches_the_caller():
    def items():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(items(), enabled=True))

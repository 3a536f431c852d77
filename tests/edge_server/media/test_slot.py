from __future__ import annotations

import threading

import pytest

from edge_server.media.slot import LatestSlot, SlotClosed


def test_newest_wins_and_replacements_are_reported() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken: dropped
    assert slot.take(0) == 2
    assert slot.take(0.01) is None


def test_close_wakes_a_waiting_consumer() -> None:
    slot: LatestSlot[int] = LatestSlot()
    result: list[object] = []

    def consume() -> None:
        try:
            slot.take(5)
        except SlotClosed:
            result.append("closed")

    thread = threading.Thread(target=consume)
    thread.start()
    slot.close()
    thread.join(2)
    assert result == ["closed"]
    with pytest.raises(SlotClosed):
        slot.put(3)


def test_item_put_before_close_is_still_delivered() -> None:
    slot: LatestSlot[int] = LatestSlot()
    slot.put(7)
    slot.close()
    assert slot.take(0) == 7
    with pytest.raises(SlotClosed):
        slot.take(0)

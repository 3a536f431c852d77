"""The latest-frame slot between decode and the pipeline: capacity one, newest wins.

A slow pipeline lowers the frame rate instead of letting latency pile up; every replaced
frame is counted as dropped by the caller.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotClosed(Exception):
    pass


class LatestSlot(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False

    def put(self, item: T) -> bool:
        """Store `item`; return True when it replaced a frame the consumer never took."""
        with self._cond:
            if self._closed:
                raise SlotClosed
            dropped = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return dropped

    def take(self, timeout: float | None = None) -> T | None:
        """Wait for an item; None on timeout. Raises SlotClosed once closed and empty."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            if self._closed:
                raise SlotClosed
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

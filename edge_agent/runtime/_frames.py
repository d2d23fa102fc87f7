"""The hand-off from the source thread to the inference thread: a frame with its arrival
time, and the bounded queue between the two."""

from __future__ import annotations

import threading
from collections import deque

from continuum.sources import Frame

#: A frame and the ``time.monotonic_ns()`` at which it reached the runtime (a tuple: one is
#: built per frame, and a frozen dataclass costs several times more to build).
Arrival = tuple[Frame, int]


class FrameQueue:
    """The bounded hand-off from the source thread to the inference thread.

    ``queue.Queue`` takes its lock and notifies a condition on every put and every get.  Here
    the source appends to a deque (atomic under the GIL) and takes the lock only to wake an
    inference thread that is actually waiting, and the inference thread takes a whole batch
    per call.  Each side announces that it waits (under the lock) before it re-checks the
    deque, and the other side checks that announcement after it changed the deque, so a
    wake-up is never missed.  One producer and one consumer.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: deque[Arrival] = deque()
        self._maxsize = maxsize
        self._changed = threading.Condition(threading.Lock())
        self._getter_waits = False
        self._putter_waits = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Arrival, timeout_s: float) -> bool:
        """Append ``item``, waiting up to ``timeout_s`` for room; return whether it went in."""
        items = self._items
        if len(items) >= self._maxsize:
            with self._changed:
                self._putter_waits = True
                try:
                    if len(items) >= self._maxsize:
                        self._changed.wait(timeout_s)
                finally:
                    self._putter_waits = False
            if len(items) >= self._maxsize:
                return False
        items.append(item)
        if self._getter_waits:
            with self._changed:
                self._changed.notify_all()
        return True

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until a frame is queued; return whether one is."""
        if self._items:
            return True
        with self._changed:
            self._getter_waits = True
            try:
                if not self._items:
                    self._changed.wait(timeout_s)
            finally:
                self._getter_waits = False
        return bool(self._items)

    def take(self, count: int, into: list[Arrival]) -> None:
        """Move up to ``count`` queued frames, oldest first, onto ``into``."""
        items = self._items
        for _ in range(min(count, len(items))):
            into.append(items.popleft())
        # A source blocked on a full queue is woken once half of it has room, not on every
        # frame taken: one wake-up (and GIL hand-over) per several frames, not one per frame.
        if self._putter_waits and len(items) <= self._maxsize // 2:
            with self._changed:
                self._changed.notify_all()

"""Rendered plots kept per study version: a plot is drawn once per version, however many
clients ask for it at once (the others wait for the first's drawing), and a page of them
stays in memory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

SIZE = 64  # plots kept, least recently used out first


class PlotCache:
    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._plots: OrderedDict[Hashable, tuple[Hashable, bytes]] = OrderedDict()
        self._drawing: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, version: Hashable | None, draw: Callable[[], bytes]) -> bytes:
        """The plot ``key`` at ``version``, drawn by ``draw`` unless kept; ``version`` None:
        still changing, drawn each time and not kept."""
        if version is None:
            return draw()
        with self._lock:
            lock = self._drawing.setdefault(key, threading.Lock())
        with lock:  # one drawing per key at a time: the rest find it kept
            with self._lock:
                kept = self._plots.get(key)
                if kept is not None and kept[0] == version:
                    self._plots.move_to_end(key)
                    return kept[1]
            png = draw()
            with self._lock:
                self._plots[key] = (version, png)
                self._plots.move_to_end(key)
                while len(self._plots) > self.size:
                    old, _ = self._plots.popitem(last=False)
                    self._drawing.pop(old, None)
            return png

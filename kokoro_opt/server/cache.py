"""A small LRU cache of recently synthesized first segments (the "primer micro-cache").

Keyed by (segment text, voice, speed, language, model); values are read-only float32 arrays.
Repeated openings ("Hello!", "Sure,", a fixed greeting) then stream their first audio without
touching the model. Thread-safe; counts hits and misses for /status.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

CacheKey = tuple[str, str, float, str, str]


class PrimerCache:
    """LRU of at most `max_entries` audio arrays (0 disables it)."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(text: str, *, voice: str, speed: float, lang: str, model: str) -> CacheKey:
        return (text, voice, round(float(speed), 4), lang, model)

    def get(self, key: CacheKey) -> np.ndarray | None:
        with self._lock:
            samples = self._items.get(key)
            if samples is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return samples

    def put(self, key: CacheKey, samples: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        stored = np.array(samples, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        with self._lock:
            self._items[key] = stored
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            total = self.hits + self.misses
            return {
                "entries": len(self._items),
                "max_entries": self.max_entries,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": round(self.hits / total, 4) if total else None,
                "bytes": int(sum(a.nbytes for a in self._items.values())),
            }

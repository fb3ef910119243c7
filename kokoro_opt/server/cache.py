"""A small LRU cache of recently synthesized first segments (the "primer micro-cache").

Keyed by (segment text, voice, speed, language, model); values are read-only float32 arrays
with the segment's word timings (seconds of those samples; empty without timestamps).
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
        self._items: OrderedDict[CacheKey, tuple[np.ndarray, tuple[Any, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(text: str, *, voice: str, speed: float, lang: str, model: str) -> CacheKey:
        return (text, voice, round(float(speed), 4), lang, model)

    def get(self, key: CacheKey) -> np.ndarray | None:
        hit = self.lookup(key)
        return None if hit is None else hit[0]

    def lookup(self, key: CacheKey) -> tuple[np.ndarray, tuple[Any, ...]] | None:
        """(samples, word timings) of a cached segment, or None (counted as hit or miss)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: CacheKey, samples: np.ndarray, words: tuple[Any, ...] = ()) -> None:
        if self.max_entries <= 0:
            return
        stored = np.array(samples, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        with self._lock:
            self._items[key] = (stored, tuple(words))
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
                "bytes": int(sum(a.nbytes for a, _ in self._items.values())),
            }

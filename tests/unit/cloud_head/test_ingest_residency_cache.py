"""The map behind ingest's residency caches: bounded in size (least recently used forgotten)
and in age."""

from __future__ import annotations

import pytest

from cloud_head.ingest._residency import MISSING, LruCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestLruCache:
    def test_a_full_cache_forgets_the_least_recently_used_entry_only(self) -> None:
        cache: LruCache[str, int] = LruCache(3)
        for i, key in enumerate("abc"):
            cache.put(key, i)
        assert cache.get("a") == 0  # used: b is now the least recent
        cache.put("d", 3)
        assert len(cache) == 3
        assert cache.get("b") is MISSING
        assert [cache.get(k) for k in "acd"] == [0, 2, 3]

    def test_a_flood_of_new_keys_never_grows_it_past_its_bound(self) -> None:
        cache: LruCache[str, None] = LruCache(100)
        for i in range(10_000):
            cache.put(f"forged-{i}", None)
        assert len(cache) == 100
        assert cache.get("forged-9999") is None  # the newest are kept, None as a value
        assert cache.get("forged-0") is MISSING

    def test_an_entry_expires_after_its_ttl(self) -> None:
        clock = Clock()
        cache: LruCache[str, str] = LruCache(10, clock=clock)
        cache.put("short", "x", ttl_s=0.5)
        cache.put("forever", "y")
        clock.now += 0.4
        assert cache.get("short") == "x"
        clock.now += 0.2
        assert cache.get("short") is MISSING
        assert len(cache) == 1
        clock.now += 10**6
        assert cache.get("forever") == "y"

    def test_a_cache_of_no_entries_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            LruCache(0)

"""Ingest's daily samples quota on its own: what fits today, a new day, what a write took."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud_head.ingest._quota import DailyQuota, QuotaGrant
from cloud_head.tenants import Quotas

NOON = int(datetime(2026, 3, 2, 12, tzinfo=UTC).timestamp() * 1e9)
MIDNIGHT = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1e9)
DAY_NS = 86_400 * 10**9


class StoredToday:
    """The seen index's count of samples stored since a time, as a table of its own."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.asked: list[int] = []

    def __call__(self, since_ns: int) -> int:
        self.asked.append(since_ns)
        return self.count


class TestQuotaGrant:
    def test_a_write_takes_what_fits_and_nothing_once_it_is_spent(self) -> None:
        grant = QuotaGrant(5)
        assert [grant.take(3), grant.take(4), grant.take(2)] == [3, 2, 0]
        assert grant.taken == 5

    def test_without_a_quota_everything_fits(self) -> None:
        grant = QuotaGrant(None)
        assert grant.take(10**9) == 10**9


class TestDailyQuota:
    def test_the_room_is_the_quota_less_what_was_stored_today(self) -> None:
        stored = StoredToday(7)
        quota = DailyQuota("acme", Quotas(samples_per_day=10), stored)
        assert quota.grant(NOON).room == 3
        assert stored.asked == [MIDNIGHT]  # counted from the start of the UTC day

    def test_what_a_write_took_counts_once_spent_without_reading_the_index_again(
        self,
    ) -> None:
        stored = StoredToday(0)
        quota = DailyQuota("acme", Quotas(samples_per_day=10), stored)
        grant = quota.grant(NOON)
        assert grant.take(4) == 4
        assert quota.grant(NOON).room == 10  # not durable yet: not spent
        quota.spend(grant)
        assert quota.grant(NOON + 1).room == 6
        assert len(stored.asked) == 1  # once per day

    def test_a_new_day_reads_what_was_stored_since_its_start(self) -> None:
        stored = StoredToday(10)
        quota = DailyQuota("acme", Quotas(samples_per_day=10), stored)
        assert quota.grant(NOON).room == 0
        stored.count = 1  # tomorrow's samples so far, by every replica
        assert quota.grant(NOON + DAY_NS).room == 9
        assert stored.asked == [MIDNIGHT, MIDNIGHT + DAY_NS]

    def test_a_spent_quota_is_logged_once_a_day(self, caplog: pytest.LogCaptureFixture) -> None:
        quota = DailyQuota("acme", Quotas(samples_per_day=2), StoredToday(2))
        with caplog.at_level("WARNING", logger="cloud_head.ingest"):
            rooms = [quota.grant(NOON + i).room for i in range(3)]
            rooms.append(quota.grant(NOON + DAY_NS).room)
        assert rooms == [0, 0, 0, 0]
        held = [r for r in caplog.records if "held back today" in r.getMessage()]
        assert len(held) == 2  # the first of each day

    def test_without_quotas_there_is_no_limit(self) -> None:
        stored = StoredToday(10**9)
        assert DailyQuota("acme", None, stored).grant(NOON).room is None
        assert stored.asked == []

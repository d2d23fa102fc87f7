"""An ingest outcome named for its receipt keeps everything else it says."""

from __future__ import annotations

import dataclasses

from cloud_head.ingest import Outcome


class TestNamingAnOutcome:
    def test_every_field_but_the_receipts_is_kept(self) -> None:
        # Every field set away from its default, so a field that ``naming`` forgets (one
        # added to Outcome later, say) shows up here.
        outcome = Outcome(
            "stored",
            stored=3,
            duplicates=2,
            labels=1,
            reason="quota",
            detail="1 sample(s) over the samples_per_day quota",
            over_quota=1,
            node="old",
            seq_ranges=((1, 1),),
            label_ranges=((2, 2),),
        )
        named = outcome.naming("cam-1", ((5, 9),), ((7, 7),))
        expected = dataclasses.replace(
            outcome, node="cam-1", seq_ranges=((5, 9),), label_ranges=((7, 7),)
        )
        for field in dataclasses.fields(Outcome):
            assert getattr(named, field.name) == getattr(expected, field.name), field.name

    def test_a_final_refusal_stays_one(self) -> None:
        rejected = Outcome("rejected", reason="schema_mismatch", detail="sample cam-1:3")
        named = rejected.naming("cam-1", ((3, 3),), ())
        assert named == rejected
        assert (named.node, named.seq_ranges, named.label_ranges) == ("cam-1", ((3, 3),), ())

"""The fraud example's transactions, features and splits: identifiers, imbalance, drift."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.fraud.data import load_splits, reference_holdout
from pipelines.fraud.features import FEATURE_NAMES, N_FEATURES, features
from pipelines.fraud.transactions import (
    BRANCHES,
    DRIFT_BRANCH,
    PATTERNS,
    iban_is_valid,
    make_bank,
    simulate,
)

ATO = PATTERNS.index("ato")


class TestIbans:
    def test_every_customer_has_a_valid_luxembourg_iban(self) -> None:
        bank = make_bank()
        assert len(set(bank.ibans)) == len(bank.ibans)
        for iban in bank.ibans:
            assert iban.startswith("LU") and len(iban) == 20 and iban[2:].isdigit()
            # ISO 13616: the digits of BBAN + "LU" (21 30) + check digits, mod 97, are 1.
            assert int(iban[4:] + "2130" + iban[2:4]) % 97 == 1
            assert iban_is_valid(iban)

    def test_the_check_accepts_a_published_iban_and_refuses_a_typo(self) -> None:
        # The Luxembourg example of the SWIFT IBAN registry.
        assert iban_is_valid("LU28 0019 4006 4475 0000")
        assert not iban_is_valid("LU28 0019 4006 4475 0001")
        iban = make_bank().ibans[0]
        typo = iban[:10] + str((int(iban[10]) + 1) % 10) + iban[11:]
        assert not iban_is_valid(typo)
        assert not iban_is_valid(iban[:-1])

    def test_customers_have_names(self) -> None:
        names = make_bank().names
        assert all(len(n.split(" ")) >= 2 for n in names)
        assert len(set(names)) > 100


class TestImbalanceAndPatterns:
    def test_fraud_is_between_0_2_and_1_percent_before_and_after_the_drift(self) -> None:
        splits = load_splits()
        for split in (splits.train, splits.test_before, splits.stream_after, splits.test_after):
            assert 0.002 <= split.y.mean() <= 0.01, split.y.mean()
        # Every split the gate or a trainer reads has enough frauds to score recall on.
        assert splits.validation.y.sum() >= 40 and splits.test_before.y.sum() >= 40

    def test_the_new_pattern_appears_only_at_the_drift_branch_after_onset(self) -> None:
        splits = load_splits()
        for split in (splits.train, splits.validation, splits.stream_before, splits.test_before):
            assert not (split.rows.pattern == ATO).any()
        for split in (splits.stream_after, splits.test_after):
            takeovers = split.rows.pattern == ATO
            assert takeovers.sum() >= 40
            assert set(split.rows.branch[takeovers]) == {BRANCHES.index(DRIFT_BRANCH)}
            assert (split.rows.hour[takeovers] < 5).all()
            assert (split.rows.channel[takeovers] == 2).all()  # SEPA transfers
        gare = splits.test_after_drift_branch
        assert (gare.rows.pattern == ATO).mean() > 0.005

    def test_an_onset_inside_the_period_starts_the_wave_that_day(self) -> None:
        tx = simulate(20_000, day0=0.0, days=20.0, seed=4, drift_onset_day=10.0)
        takeovers = tx.pattern == ATO
        assert takeovers.any()
        assert tx.time_s[takeovers].min() >= 10 * 86_400

    def test_no_single_feature_separates_fraud(self) -> None:
        split = load_splits().train
        best = max(
            max(auc, 1 - auc)
            for auc in (roc_auc_score(split.y, split.x[:, i]) for i in range(N_FEATURES))
        )
        assert 0.7 < best < 0.9

    def test_the_history_is_a_function_of_the_seed(self) -> None:
        a = simulate(5_000, day0=0.0, days=5.0, seed=9)
        b = simulate(5_000, day0=0.0, days=5.0, seed=9)
        c = simulate(5_000, day0=0.0, days=5.0, seed=10)
        np.testing.assert_array_equal(features(a), features(b))
        assert len(a) != len(c) or not np.array_equal(features(a), features(c))


class TestFeatures:
    def test_rows_are_float32_of_the_documented_length_and_finite(self) -> None:
        split = load_splits().train
        assert split.x.dtype == np.float32
        assert split.x.shape == (len(split.y), N_FEATURES) == (len(split.y), len(FEATURE_NAMES))
        assert np.isfinite(split.x).all()
        # One-hot blocks: exactly one channel and one merchant category per row.
        channel = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("channel_")]
        mcc = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("mcc_")]
        assert (split.x[:, channel].sum(axis=1) == 1).all()
        assert (split.x[:, mcc].sum(axis=1) == 1).all()

    def test_identifiers_are_not_in_the_feature_vector(self) -> None:
        assert not any(
            word in name for name in FEATURE_NAMES for word in ("iban", "name", "customer")
        )
        split = load_splits().test_before
        # Two customers' transactions with the same behaviour give the same vector: the
        # vector is a function of the behaviour columns only.
        rows = split.rows
        swapped = type(rows)(**{**vars(rows), "customer": np.roll(rows.customer, 1)})
        np.testing.assert_array_equal(features(swapped), split.x)


class TestSplits:
    def test_splits_are_disjoint_and_reserved_rows_are_not_streamed(self) -> None:
        splits = load_splits()

        def keys(split):  # type: ignore[no-untyped-def]
            return set(zip(split.rows.time_s.tolist(), split.rows.customer.tolist(), strict=True))

        before = [keys(s) for s in (splits.train, splits.validation, splits.stream_before)]
        reserved = keys(splits.test_before)
        assert all(not (k & reserved) for k in before)
        assert not before[0] & before[1] and not before[0] & before[2]
        assert not keys(splits.stream_after) & keys(splits.test_after)

    def test_reference_holdout_is_the_validation_split(self) -> None:
        x, y = reference_holdout()
        validation = load_splits().validation
        np.testing.assert_array_equal(x, validation.x)
        np.testing.assert_array_equal(y, validation.y)
        assert x.flags.writeable  # a copy: the gate may not write into the cached splits
        assert y.sum() >= 40

    def test_cached_splits_are_read_only(self) -> None:
        with pytest.raises(ValueError, match="read-only"):
            load_splits().train.x[0, 0] = 1.0

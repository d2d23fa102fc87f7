"""The hospitals example's data: sites, non-IID shares, reserved tests, drift, scanner."""

from __future__ import annotations

import numpy as np
import pytest

from continuum.errors import ConfigError
from pipelines.hospitals.data import (
    AREA_COLUMNS,
    DRIFT_SITE,
    LINEAR_SIZE_COLUMNS,
    SITES,
    holdout_mask,
    load_splits,
    recalibrated,
    reference_holdout,
)
from pipelines.hospitals.scanner import SiteScanner


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(x, dtype=np.float32)}


class TestSplits:
    def test_every_row_is_dealt_to_one_site_and_one_split(self) -> None:
        splits = load_splits()
        seen: set[bytes] = set()
        total = 0
        for name in ("reference", "stream", "test"):
            for site in SITES:
                rows = _rows(getattr(splits, name)[site].x)
                assert not rows & seen, f"{name} of {site} shares rows with another split"
                seen |= rows
                total += len(getattr(splits, name)[site].y)
        assert total == 569

    def test_sites_differ_in_class_balance_and_device(self) -> None:
        splits = load_splits()
        shares = [
            float(
                np.concatenate(
                    [getattr(splits, n)[s].y for n in ("reference", "stream", "test")]
                ).mean()
            )
            for s in SITES
        ]
        assert max(shares) - min(shares) > 0.3, shares
        means = [splits.reference[s].x[:, 0].mean() for s in SITES]
        assert len({round(float(m), 1) for m in means}) == 3

    def test_every_site_keeps_both_classes_in_its_reserved_test(self) -> None:
        for site, test in load_splits().test.items():
            assert 0 < test.y.sum() < len(test.y), site

    def test_the_central_holdout_is_the_sites_holdout_rows_only(self) -> None:
        x, _ = reference_holdout()
        splits = load_splits()
        assert _rows(x) <= _rows(splits.pooled("reference").x)
        assert not _rows(x) & _rows(splits.pooled("test").x)
        n = len(splits.reference[DRIFT_SITE].y)
        assert holdout_mask(n).sum() == len(range(0, n, 5))


class TestDrift:
    def test_recalibration_shrinks_the_size_channels_only(self) -> None:
        x = load_splits().stream[DRIFT_SITE].x
        after = recalibrated(x)
        changed = sorted({*LINEAR_SIZE_COLUMNS, *AREA_COLUMNS})
        assert np.allclose(
            after[:, LINEAR_SIZE_COLUMNS], 0.65 * x[:, LINEAR_SIZE_COLUMNS], rtol=1e-5
        )
        assert np.allclose(after[:, AREA_COLUMNS], 0.65**2 * x[:, AREA_COLUMNS], rtol=1e-5)
        rest = [c for c in range(30) if c not in changed]
        assert np.array_equal(after[:, rest], x[:, rest])


class TestScanner:
    def test_replays_its_stream_rows_only_never_a_reserved_one(self) -> None:
        scanner = SiteScanner("hosp-metz", rate=1e4, max_frames=120, sleep=lambda s: None)
        frames = list(scanner)
        splits = load_splits()
        sent = _rows(np.stack([f.tensor for f in frames]))
        assert len(frames) == 120
        assert sent <= _rows(splits.stream["hosp-metz"].x)
        assert not sent & _rows(splits.pooled("test").x)
        assert all(f.label in (0, 1) and f.label_delay_s == 3.0 for f in frames)

    def test_only_the_drift_site_drifts(self) -> None:
        stream = load_splits().stream
        drifted = list(SiteScanner(DRIFT_SITE, rate=1e4, drift_after_frames=5, max_frames=10))
        assert _rows(np.stack([f.tensor for f in drifted[:5]])) <= _rows(stream[DRIFT_SITE].x)
        assert _rows(np.stack([f.tensor for f in drifted[5:]])) <= _rows(
            recalibrated(stream[DRIFT_SITE].x)
        )
        clean = list(SiteScanner("hosp-lux", rate=1e4, drift_after_frames=0, max_frames=5))
        assert _rows(np.stack([f.tensor for f in clean])) <= _rows(stream["hosp-lux"].x)

    def test_refuses_an_unknown_site(self) -> None:
        with pytest.raises(ConfigError, match="hosp-lux"):
            SiteScanner("hosp-nowhere")

"""A site's stores as its own node resolves them (CONTINUUM_SITE_DATA), and the site's split:
labelled samples held out by the central time-block rule, a fifth of the reference held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_head._training_data import is_holdout
from cloud_head.federated import SITE_DATA_ENV, site_split, site_stores
from cloud_head.federated.site_data import REFERENCE_HOLDOUT_EVERY
from continuum.errors import ConfigError
from continuum.spec import DataClass, PipelineSpec
from continuum.wire import codec

SPEC = PipelineSpec.from_dict(
    {
        "name": "tumour-risk",
        "tenant": "medica",
        "data_class": "restricted",
        "edge": {"model": "risk", "input": {"shape": [4]}},
        "uplink": {"policy": {"kind": "random", "rate": 0.1}},
        "retrain": {"trainer": "pkg.mod:train"},
    }
)


class TestSiteStores:
    def test_a_node_without_site_data_is_told_which_variable_to_set(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(SITE_DATA_ENV, raising=False)
        with pytest.raises(ConfigError, match=f"{SITE_DATA_ENV} is not set"):
            site_stores("medica", "tumour-risk")

    def test_an_object_store_root_needs_a_local_label_database(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(SITE_DATA_ENV, "s3://hospital-a/continuum")
        monkeypatch.delenv("CONTINUUM_SITE_LABELS", raising=False)
        with pytest.raises(ConfigError, match="CONTINUUM_SITE_LABELS"):
            site_stores("medica", "tumour-risk")


class TestSiteSplit:
    def test_samples_and_reference_are_split_by_the_central_rules(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(SITE_DATA_ENV, str(tmp_path))
        stores = site_stores("medica", "tumour-risk")
        base_ns = 1_700_000_000 * 10**9
        records = tuple(
            codec.SampleRecord(
                seq=s,
                captured_at_ns=base_ns + s * 2 * 10**9,  # 200 s of capture, 2 s apart
                tensor=np.full(4, s, np.float32),
                label=s % 2,
            )
            for s in range(100)
        )
        stores.samples.append(
            "medica", codec.SampleBatch("tumour-risk", "mri-1", "v1", DataClass.RESTRICTED, records)
        )
        stores.samples.flush()
        reference = tmp_path / "reference" / "medica"
        reference.mkdir(parents=True)
        np.savez(reference / "tumour-risk.npz", x=-np.ones((20, 4)), y=np.arange(20) % 2)

        split = site_split(SPEC, stores)
        stores.close()

        held = [is_holdout("mri-1", r.captured_at_ns) for r in records]
        assert split.counts == {
            "samples_train": 100 - sum(held),
            "samples_holdout": sum(held),
            "reference_train": 20 - 20 // REFERENCE_HOLDOUT_EVERY,
            "reference_holdout": 20 // REFERENCE_HOLDOUT_EVERY,
        }
        assert 0 < sum(held) < 100
        held_values = {float(r.tensor[0]) for r, h in zip(records, held, strict=True) if h}
        assert held_values <= {float(v) for v in split.holdout_x[:, 0]}
        assert not held_values & {float(v) for v in split.train_x[:, 0]}
        assert split.train_x.shape == (len(split.train_y), 4) and split.train_y.dtype == np.int64

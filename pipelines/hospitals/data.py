"""The hospitals example's fixed data: scikit-learn's breast-cancer measurements split by site.

569 fine-needle aspirates, 30 measurements each (the nuclei's radius, texture, area... as the
mean, the standard error and the worst of each image), labelled malignant or benign by
pathology.  Label 1 is *malignant* (the finding the screening flags).

Three hospitals (``SITES``), each seeing a different population and reading through its own
imaging device, so the data is not IID across sites:

* **class balance**: a screening centre sees mostly benign lumps, a referral centre mostly
  malignant ones (``MALIGNANT_ROWS`` per site: 20 %, 40 % and 63 % malignant);
* **measurement device**: each site's device reads every measurement with its own gain
  (``DEVICE_GAIN``) and the texture channels with its own offset (``TEXTURE_OFFSET``).

Each site's rows are cut, stratified, into ``reference`` (the site's own seed data: what
the first model learns there, and from which the site's holdout for the federated gate is
drawn), ``stream`` (what the site's edge box replays) and the RESERVED ``test`` (scored by
the demo's report only; no box streams it, no trainer reads it).

The drift: ``DRIFT_SITE``'s device is recalibrated mid-run (``recalibrated``): its size
channels (radius, perimeter, area; mean and worst) read ``DRIFT_SIZE_GAIN`` times larger,
areas the square of it, so benign lumps there look like malignant ones to a model that
never saw the new calibration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DRIFT_SITE",
    "N_FEATURES",
    "SHAPE",
    "SITES",
    "HospitalSplits",
    "SiteSplit",
    "load_splits",
    "recalibrated",
    "reference_holdout",
]

#: The three hospitals, with the country and jurisdiction their on-site server stands in.
SITES: dict[str, str] = {"hosp-lux": "LU", "hosp-metz": "FR", "hosp-trier": "DE"}
#: The site whose imaging device is recalibrated mid-run.
DRIFT_SITE = "hosp-trier"
N_FEATURES = 30
SHAPE = (N_FEATURES,)
#: (malignant, benign) rows per site: 212 and 357 in all.
MALIGNANT_ROWS: dict[str, tuple[int, int]] = {
    "hosp-lux": (45, 180),
    "hosp-metz": (70, 105),
    "hosp-trier": (97, 72),
}
DEVICE_GAIN: dict[str, float] = {"hosp-lux": 1.0, "hosp-metz": 1.06, "hosp-trier": 0.95}
TEXTURE_OFFSET: dict[str, float] = {"hosp-lux": 0.0, "hosp-metz": 1.5, "hosp-trier": -1.0}
#: The texture channels (mean and worst), read with the site's offset.
TEXTURE_COLUMNS = (1, 21)
#: The size channels: radius, perimeter (linear) and area (square), mean and worst.
LINEAR_SIZE_COLUMNS = (0, 2, 20, 22)
AREA_COLUMNS = (3, 23)
DRIFT_SIZE_GAIN = 0.65
#: Shares of each site's rows, stratified: reference, stream; the rest is the reserved test.
SHARES = (0.45, 0.30)
#: One reference row in this many (by position) is the site's gate holdout, never trained on:
#: the rule of ``cloud_head.federated.site_data`` (REFERENCE_HOLDOUT_EVERY), which cuts it at
#: the site.
HOLDOUT_EVERY = 5


@dataclass(frozen=True)
class SiteSplit:
    """One site's rows of one split: measurements (n, 30) float32 and labels (1 malignant)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]


@dataclass(frozen=True)
class HospitalSplits:
    """Every site's ``reference``, ``stream`` and reserved ``test`` rows, as its device reads
    them before the drift."""

    reference: dict[str, SiteSplit]
    stream: dict[str, SiteSplit]
    test: dict[str, SiteSplit]

    def pooled(self, split: str) -> SiteSplit:
        """Return ``split`` of every site stacked (what the policy forbids to gather)."""
        parts = list(getattr(self, split).values())
        return SiteSplit(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def device_reading(site: str, x: NDArray[np.floating]) -> NDArray[np.float32]:
    """Return measurements ``x`` as ``site``'s device reads them (gain, texture offset)."""
    out = np.asarray(x, dtype=np.float64) * DEVICE_GAIN[site]
    out[:, TEXTURE_COLUMNS] += TEXTURE_OFFSET[site]
    return out.astype(np.float32)


def recalibrated(x: NDArray[np.floating]) -> NDArray[np.float32]:
    """Return ``x`` as the drift site's device reads it after its recalibration."""
    out = np.array(x, dtype=np.float64)
    out[:, LINEAR_SIZE_COLUMNS] *= DRIFT_SIZE_GAIN
    out[:, AREA_COLUMNS] *= DRIFT_SIZE_GAIN**2
    return out.astype(np.float32)


def _frozen(x: NDArray[np.floating], y: NDArray[np.integer]) -> SiteSplit:
    split = SiteSplit(np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))
    split.x.setflags(write=False)
    split.y.setflags(write=False)
    return split


@functools.cache
def load_splits(seed: int = 0) -> HospitalSplits:
    """Deal the 569 rows to the sites and split each (cached: the arrays are read only)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x_all = np.asarray(data.data, dtype=np.float64)
    y_all = (np.asarray(data.target) == 0).astype(np.int64)  # sklearn's 0 is malignant
    rng = np.random.default_rng([seed, 17])
    pools = {label: list(rng.permutation(np.flatnonzero(y_all == label))) for label in (1, 0)}
    splits: dict[str, dict[str, SiteSplit]] = {"reference": {}, "stream": {}, "test": {}}
    for site in SITES:
        parts: dict[str, list[int]] = {"reference": [], "stream": [], "test": []}
        for label, count in zip((1, 0), MALIGNANT_ROWS[site], strict=True):
            rows, pools[label] = pools[label][:count], pools[label][count:]
            cuts = np.cumsum(np.array(SHARES) * count).round().astype(int)
            for name, chunk in zip(
                ("reference", "stream", "test"), np.split(np.array(rows), cuts), strict=True
            ):
                parts[name].extend(int(i) for i in chunk)
        for name, index in parts.items():
            order = rng.permutation(np.array(index, dtype=np.int64))
            splits[name][site] = _frozen(device_reading(site, x_all[order]), y_all[order])
    return HospitalSplits(**splits)


def holdout_mask(n: int) -> NDArray[np.bool_]:
    """Return which of a site's ``n`` reference rows are its gate holdout (every fifth)."""
    mask: NDArray[np.bool_] = np.arange(n) % HOLDOUT_EVERY == 0
    return mask


def reference_holdout(seed: int = 0) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Return the central gate's labelled set: every site's holdout rows of its reference.

    Only the oracle (the demo's offline baseline) and a central plan use this; a federated
    plan gates on each site's own holdout at the site.
    """
    splits = load_splits(seed)
    xs, ys = [], []
    for site in SITES:
        ref = splits.reference[site]
        mask = holdout_mask(len(ref.y))
        xs.append(ref.x[mask])
        ys.append(ref.y[mask])
    return np.concatenate(xs), np.concatenate(ys)

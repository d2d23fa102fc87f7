"""Synthetic card and transfer transactions of a retail bank in Luxembourg, fraud included.

The bank has ``N_CUSTOMERS`` customers, each with a valid Luxembourg IBAN (ISO 13616 check
digits), a name, a home branch, a spending scale and an activity rate.  A period of days is
simulated in one vectorised pass; every rule below is a draw with noise, so no single field
separates fraud from legitimate use.

Legitimate use: a merchant category (MCC) by the population's shares; the channel by category
(card present, e-commerce, SEPA transfer); the amount log-normal per category times the
customer's scale; the hour from a day-time mixture (a few late purchases, and standing orders
that the bank's night batch executes between 00:00 and 03:00); abroad 6 % of the time (half of
airline purchases); a new counterparty 12-30 % of the time by channel; a new e-banking device
for 4-6 % of e-commerce and transfers.

Fraud (``FRAUD_SHARE`` of transactions, in bursts of a few on one compromised customer):

* ``cnp`` (card not present, 55 %): e-commerce at electronics, digital goods, airlines or
  jewellery; mostly 3-4x the customer's usual amount, a quarter are small card tests; abroad
  55 %, new merchant 80 %, a third at any hour, the rest at day-time hours; a new device no
  more often than legitimate e-commerce (4 %: the card's details, not the customer's
  e-banking, are stolen);
* ``skimming`` (a cloned card, 45 %): card present, mostly cash withdrawals; 2-3x usual;
  abroad 70 %, half at any hour; longer bursts.

The concept drift (``drift=True`` from ``drift_onset_day`` on): ``ato``, account-takeover
SEPA transfers at night from branch ``DRIFT_BRANCH`` only (a phishing wave on its customers):
00:00-05:00, 1.8x the usual transfer, to a new payee (90 %), from a new device (85 %), abroad
half the time, adding ``ATO_SHARE`` of that branch's transactions.  Training never sees it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ATO_SHARE",
    "BRANCHES",
    "CHANNELS",
    "DRIFT_BRANCH",
    "FRAUD_SHARE",
    "MCCS",
    "PATTERNS",
    "Bank",
    "Mcc",
    "Transactions",
    "iban_is_valid",
    "make_bank",
    "simulate",
]

BRANCHES = ("lux-gare", "lux-kirchberg", "lux-esch", "lux-ettelbruck")
DRIFT_BRANCH = "lux-gare"
CHANNELS = ("card_present", "ecommerce", "sepa_transfer")
#: Index 0 is legitimate use; the others are the fraud patterns of the module docstring.
PATTERNS = ("legit", "cnp", "skimming", "ato")
N_CUSTOMERS = 3000
#: Share of all transactions that are the two known fraud patterns (before the drift).
FRAUD_SHARE = 0.0035
#: Share of the drift branch's transactions that are account takeovers after the onset.
ATO_SHARE = 0.012
#: A fictitious three-digit Luxembourg bank code (the IBAN's first BBAN field).
BANK_CODE = "042"
DAY_S = 86_400.0


@dataclass(frozen=True)
class Mcc:
    """A merchant category: ISO 18245 code, log-normal amount (EUR) and channel shares."""

    code: int
    name: str
    log_mean: float
    log_sd: float
    channels: tuple[float, float, float]
    share: float


MCCS = (
    Mcc(5411, "grocery", 3.3, 0.6, (0.95, 0.05, 0.0), 0.28),
    Mcc(5812, "restaurants", 3.5, 0.5, (0.97, 0.03, 0.0), 0.17),
    Mcc(5541, "fuel", 4.0, 0.3, (1.0, 0.0, 0.0), 0.10),
    Mcc(5732, "electronics", 5.3, 0.9, (0.4, 0.6, 0.0), 0.04),
    Mcc(4511, "airlines", 5.8, 0.7, (0.05, 0.95, 0.0), 0.02),
    Mcc(5818, "digital_goods", 2.8, 1.0, (0.0, 1.0, 0.0), 0.12),
    Mcc(5944, "jewellery", 6.0, 0.9, (0.8, 0.2, 0.0), 0.01),
    Mcc(6011, "atm_cash", 4.6, 0.6, (1.0, 0.0, 0.0), 0.10),
    Mcc(4829, "transfer", 6.2, 1.1, (0.0, 0.0, 1.0), 0.16),
)
_MCC_INDEX = {m.name: i for i, m in enumerate(MCCS)}

_FIRST = (
    "Anne", "Marc", "Sophie", "Luc", "Claire", "Paul", "Marie", "Jean", "Laura", "Tom",
    "Ana", "João", "Sara", "Pedro", "Lena", "Ben", "Mia", "Noah", "Elena", "Yves",
)  # fmt: skip
_LAST = (
    "Schmit", "Muller", "Weber", "Wagner", "Hoffmann", "Thill", "Kieffer", "Reuter",
    "Da Silva", "Pereira", "Ferreira", "Santos", "Martin", "Bernard", "Dubois", "Rossi",
    "Klein", "Schroeder", "Meyer", "Welter",
)  # fmt: skip


def _check_digits(country: str, bban: str) -> str:
    """Return the two ISO 13616 check digits of ``country`` + ``bban`` (mod 97-10)."""
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(digits) % 97:02d}"


def iban_is_valid(iban: str) -> bool:
    """Return whether ``iban`` passes the ISO 13616 mod-97 check (a Luxembourg one: 20 chars)."""
    compact = iban.replace(" ", "").upper()
    if not compact.isalnum() or len(compact) < 5 or (compact[:2] == "LU" and len(compact) != 20):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


@dataclass(frozen=True)
class Bank:
    """The customer population; index ``c`` of every array is customer ``c``."""

    ibans: tuple[str, ...]
    names: tuple[str, ...]
    branch: NDArray[np.int64]
    scale: NDArray[np.float64]
    activity: NDArray[np.float64]
    tenure_days: NDArray[np.float64]


@functools.cache
def make_bank(seed: int = 0, n_customers: int = N_CUSTOMERS) -> Bank:
    """Return the bank's customers, a pure function of ``seed``."""
    rng = np.random.default_rng([seed, 7])
    accounts = rng.integers(0, 10**13, n_customers)
    ibans = []
    for account in accounts:
        bban = f"{BANK_CODE}{int(account):013d}"
        ibans.append(f"LU{_check_digits('LU', bban)}{bban}")
    first = rng.integers(0, len(_FIRST), n_customers)
    last = rng.integers(0, len(_LAST), n_customers)
    activity = rng.lognormal(0.0, 0.8, n_customers)
    return Bank(
        ibans=tuple(ibans),
        names=tuple(f"{_FIRST[f]} {_LAST[s]}" for f, s in zip(first, last, strict=True)),
        branch=rng.choice(len(BRANCHES), n_customers, p=[0.3, 0.3, 0.25, 0.15]).astype(np.int64),
        scale=rng.lognormal(0.0, 0.4, n_customers),
        activity=activity / activity.sum(),
        tenure_days=rng.uniform(30.0, 8000.0, n_customers),
    )


@dataclass(frozen=True)
class Transactions:
    """One simulated period, sorted by time; one row per transaction.

    ``amount_vs_usual`` is log(amount / the customer's usual amount at that category), the
    figure the bank's profile keeps; ``txn_1h``, ``txn_24h`` and ``gap_min`` count the same
    customer's transactions in the hour and day before (this one excluded) and the minutes
    since the previous one (capped at 30 days).  ``pattern`` indexes ``PATTERNS``.
    """

    time_s: NDArray[np.float64]
    customer: NDArray[np.int64]
    branch: NDArray[np.int64]
    channel: NDArray[np.int64]
    mcc: NDArray[np.int64]
    amount: NDArray[np.float64]
    amount_vs_usual: NDArray[np.float64]
    hour: NDArray[np.float64]
    foreign: NDArray[np.bool_]
    new_counterparty: NDArray[np.bool_]
    new_device: NDArray[np.bool_]
    pattern: NDArray[np.int64]
    txn_1h: NDArray[np.int64]
    txn_24h: NDArray[np.int64]
    gap_min: NDArray[np.float64]
    tenure_days: NDArray[np.float64]

    @property
    def fraud(self) -> NDArray[np.bool_]:
        """Return whether each row is fraud (any pattern but ``legit``)."""
        return self.pattern > 0

    def __len__(self) -> int:
        return len(self.time_s)

    def take(self, index: NDArray[np.int64]) -> Transactions:
        """Return the rows at ``index`` (in that order)."""
        return Transactions(**{k: v[index] for k, v in vars(self).items()})


@dataclass
class _Draws:
    """Columns being drawn for one group of rows, before behaviour features are added."""

    time_s: NDArray[np.float64]
    customer: NDArray[np.int64]
    mcc: NDArray[np.int64]
    channel: NDArray[np.int64]
    log_ratio: NDArray[np.float64]
    hour: NDArray[np.float64]
    foreign: NDArray[np.bool_]
    new_counterparty: NDArray[np.bool_]
    new_device: NDArray[np.bool_]
    pattern: NDArray[np.int64]


def _legit(rng: np.random.Generator, bank: Bank, n: int, day0: float, days: float) -> _Draws:
    """Draw ``n`` legitimate transactions spread over ``days`` days from ``day0``."""
    customer = rng.choice(len(bank.scale), n, p=bank.activity)
    mcc = rng.choice(len(MCCS), n, p=np.array([m.share for m in MCCS]) / sum(m.share for m in MCCS))
    cum = np.cumsum([m.channels for m in MCCS], axis=1)[mcc]
    channel = (rng.random(n)[:, None] > cum[:, :-1]).sum(axis=1)
    sd = np.array([m.log_sd for m in MCCS])[mcc]
    # A day-time mixture (lunch and evening peaks) with a few late purchases.
    which = rng.random(n)
    hour = np.where(
        which < 0.55,
        rng.normal(12.5, 3.0, n),
        np.where(which < 0.95, rng.normal(18.5, 2.5, n), rng.uniform(0, 24, n)),
    )
    log_ratio = rng.normal(0.0, sd)
    sepa = channel == 2
    # Standing orders: the bank's night batch pays known payees their usual amount.
    standing = sepa & (rng.random(n) < 0.15)
    hour = np.where(standing, rng.uniform(0.0, 3.0, n), hour) % 24
    log_ratio = np.where(standing, rng.normal(0.0, 0.2, n), log_ratio)
    airline = mcc == _MCC_INDEX["airlines"]
    new_cp_rate = np.choose(channel, [0.12, 0.30, 0.12])
    return _Draws(
        time_s=(day0 + rng.integers(0, int(days), n)) * DAY_S + hour * 3600.0,
        customer=customer.astype(np.int64),
        mcc=mcc.astype(np.int64),
        channel=channel.astype(np.int64),
        log_ratio=log_ratio,
        hour=hour,
        foreign=rng.random(n) < np.where(airline, 0.5, 0.06),
        new_counterparty=(rng.random(n) < new_cp_rate) & ~standing,
        new_device=(channel > 0) & (rng.random(n) < np.where(sepa, 0.06, 0.04)),
        pattern=np.zeros(n, dtype=np.int64),
    )


def _bursts(
    rng: np.random.Generator,
    customers: NDArray[np.int64],
    start_s: NDArray[np.float64],
    extra_mean: float,
    window_min: float,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Expand episodes into 1 + Poisson(``extra_mean``) rows within ``window_min`` minutes."""
    sizes = 1 + rng.poisson(extra_mean, len(customers))
    customer = np.repeat(customers, sizes)
    offsets = rng.uniform(0.0, window_min * 60.0, int(sizes.sum()))
    # The first row of each episode opens it.
    firsts = np.cumsum(sizes) - sizes
    offsets[firsts] = 0.0
    return customer, np.repeat(start_s, sizes) + offsets


def _pick(rng: np.random.Generator, names: tuple[str, ...], p: tuple[float, ...], n: int) -> Any:
    return np.array([_MCC_INDEX[m] for m in names])[rng.choice(len(names), n, p=p)]


def _card_fraud(
    rng: np.random.Generator, bank: Bank, n_rows: float, day0: float, days: float
) -> _Draws:
    """Draw about ``n_rows`` rows of the two known patterns, in bursts per compromised card."""
    mean_cnp, mean_skim = 2.2, 3.0
    n_cnp = rng.poisson(0.55 * n_rows / mean_cnp)
    n_skim = rng.poisson(0.45 * n_rows / mean_skim)
    parts = []
    for pattern, episodes, extra, window in ((1, n_cnp, 1.2, 40.0), (2, n_skim, 2.0, 60.0)):
        who = rng.choice(len(bank.scale), episodes, p=bank.activity).astype(np.int64)
        # An episode starts at any hour or at a day-time one; its burst follows within minutes.
        any_hour = rng.random(episodes) < (0.35 if pattern == 1 else 0.5)
        hour0 = np.where(any_hour, rng.uniform(0, 24, episodes), rng.normal(14.0, 3.5, episodes))
        day = day0 + rng.integers(0, max(1, int(days)), episodes)
        start = day * DAY_S + np.clip(hour0, 0.0, 23.0) * 3600.0
        customer, time_s = _bursts(rng, who, start, extra, window)
        n = len(customer)
        hour = (time_s % DAY_S) / 3600.0
        if pattern == 1:
            mcc = _pick(rng, ("electronics", "digital_goods", "airlines", "jewellery"),
                        (0.35, 0.35, 0.15, 0.15), n)  # fmt: skip
            testing = rng.random(n) < 0.25
            mcc = np.where(testing, _MCC_INDEX["digital_goods"], mcc)
            log_ratio = np.where(testing, rng.normal(-1.5, 0.5, n), rng.normal(1.2, 0.8, n))
            channel = np.ones(n, dtype=np.int64)
            foreign = rng.random(n) < 0.55
            new_cp = rng.random(n) < 0.8
            new_device = rng.random(n) < 0.04
        else:
            mcc = _pick(rng, ("atm_cash", "jewellery", "electronics", "fuel"),
                        (0.6, 0.15, 0.15, 0.1), n)  # fmt: skip
            log_ratio = rng.normal(0.9, 0.7, n)
            channel = np.zeros(n, dtype=np.int64)
            foreign = rng.random(n) < 0.7
            new_cp = rng.random(n) < 0.6
            new_device = np.zeros(n, dtype=np.bool_)
        parts.append(
            _Draws(time_s, customer, mcc.astype(np.int64), channel, log_ratio, hour,
                   foreign, new_cp, new_device, np.full(n, pattern, dtype=np.int64))
        )  # fmt: skip
    return _concat(parts)


def _ato(rng: np.random.Generator, bank: Bank, n_rows: float, day0: float, days: float) -> _Draws:
    """Draw about ``n_rows`` account-takeover transfers on the drift branch's customers."""
    at_branch = np.flatnonzero(bank.branch == BRANCHES.index(DRIFT_BRANCH))
    weights = bank.activity[at_branch] / bank.activity[at_branch].sum()
    episodes = rng.poisson(n_rows / 2.0)
    who = at_branch[rng.choice(len(at_branch), episodes, p=weights)].astype(np.int64)
    start = (day0 + rng.integers(0, max(1, int(days)), episodes)) * DAY_S
    start = start + rng.uniform(0.0, 4.5, episodes) * 3600.0
    customer, time_s = _bursts(rng, who, start, 1.0, 30.0)
    n = len(customer)
    hour = (time_s % DAY_S) / 3600.0
    return _Draws(
        time_s=time_s,
        customer=customer,
        mcc=np.full(n, _MCC_INDEX["transfer"], dtype=np.int64),
        channel=np.full(n, 2, dtype=np.int64),
        log_ratio=rng.normal(0.6, 0.6, n),
        hour=hour,
        foreign=rng.random(n) < 0.5,
        new_counterparty=rng.random(n) < 0.9,
        new_device=rng.random(n) < 0.85,
        pattern=np.full(n, 3, dtype=np.int64),
    )


def _concat(parts: list[_Draws]) -> _Draws:
    return _Draws(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in vars(parts[0])})


def _behaviour(customer: NDArray[np.int64], time_s: NDArray[np.float64]) -> tuple[Any, Any, Any]:
    """Return each row's count of the customer's rows in the hour and day before, and the gap.

    Rows are first ordered by (customer, time); within a customer's run a binary search finds
    the first row inside each window, so the whole period costs one sort.
    """
    order = np.lexsort((time_s, customer))
    c, t = customer[order], time_s[order]
    # A key that is monotonic across customers: each customer's times shifted far apart.
    key = c.astype(np.float64) * 1e9 + t
    position = np.arange(len(key))
    txn_1h = position - np.searchsorted(key, key - 3600.0, side="left")
    txn_24h = position - np.searchsorted(key, key - DAY_S, side="left")
    previous_same = np.r_[False, c[1:] == c[:-1]]
    gap = np.where(previous_same, np.r_[np.inf, np.diff(t)] / 60.0, np.inf)
    out_1h, out_24h, out_gap = (np.empty_like(a) for a in (txn_1h, txn_24h, gap))
    out_1h[order], out_24h[order], out_gap[order] = txn_1h, txn_24h, gap
    return out_1h, out_24h, np.minimum(out_gap, 30 * 24 * 60.0)


def simulate(
    n_legit: int,
    *,
    day0: float,
    days: float,
    seed: int,
    drift_onset_day: float | None = None,
    bank_seed: int = 0,
) -> Transactions:
    """Simulate ``days`` days from ``day0``: ``n_legit`` legitimate rows plus the fraud.

    With ``drift_onset_day`` the account takeovers at ``DRIFT_BRANCH`` run from that day to the
    period's end.  The result is a pure function of the arguments.
    """
    bank = make_bank(bank_seed)
    rng = np.random.default_rng([seed, 11])
    n_fraud = FRAUD_SHARE * n_legit / (1 - FRAUD_SHARE)
    parts = [_legit(rng, bank, n_legit, day0, days), _card_fraud(rng, bank, n_fraud, day0, days)]
    if drift_onset_day is not None and drift_onset_day < day0 + days:
        onset = max(day0, drift_onset_day)
        span = day0 + days - onset
        branch_share = float(
            bank.activity[bank.branch == BRANCHES.index(DRIFT_BRANCH)].sum() * span / days
        )
        parts.append(_ato(rng, bank, ATO_SHARE * n_legit * branch_share, onset, span))
    draws = _concat(parts)
    order = np.argsort(draws.time_s, kind="stable")
    d = _Draws(**{k: v[order] for k, v in vars(draws).items()})
    usual = bank.scale[d.customer] * np.exp(np.array([m.log_mean for m in MCCS])[d.mcc])
    txn_1h, txn_24h, gap = _behaviour(d.customer, d.time_s)
    return Transactions(
        time_s=d.time_s,
        customer=d.customer,
        branch=bank.branch[d.customer],
        channel=d.channel,
        mcc=d.mcc,
        amount=np.round(usual * np.exp(d.log_ratio), 2).clip(0.5),
        amount_vs_usual=d.log_ratio,
        hour=d.hour,
        foreign=d.foreign,
        new_counterparty=d.new_counterparty,
        new_device=d.new_device,
        pattern=d.pattern,
        txn_1h=txn_1h.astype(np.int64),
        txn_24h=txn_24h.astype(np.int64),
        gap_min=gap,
        tenure_days=bank.tenure_days[d.customer] + d.time_s / DAY_S,
    )

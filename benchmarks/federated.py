"""Federated against central training on the hospitals example: rounds, wall time, bytes.

Side by side in one run, on the three hospitals of ``pipelines.hospitals`` (non-IID: class
balance and device per site), scored on the reserved per-site test rows pooled:

- **central (the oracle)**: one model trained on every site's training rows shipped to one
  place, what the residency policy forbids for restricted data.  Its wall time is the one
  training run; its bytes are every training row and label on the wire, in the agents' own
  sample and feedback encoding (``continuum.wire.codec``).
- **federated**: FedAvg rounds, each site fitting the pipeline's own ``fit`` from the round's
  global weights on its own rows, the updates passing the rounds' norm check and averaged by
  Flower (``cloud_head.federated.aggregate``, the code the real rounds run).  Reported: the
  first round whose model is within ``TOLERANCE`` of the oracle's accuracy, the wall time to
  it (sites in parallel: the slowest site per round, as on three sites' nodes; and all of
  them one after another, as on this machine), and the bytes that crossed the sites' borders
  to it (global weights down, local weights, counts and metrics up, as pickled for Ray).
- **each site alone**: the yardstick the federated model must beat (the weakest site's).

The rounds run in this process: Ray's task dispatch and the sites' Ray Train local mode
(about a second per site per round on these machines) are not counted; the demo's
``report.json`` (``continuum demo --scenario hospitals``) has the rounds as they ran on the
sites' Ray nodes.  Each benchmark round uses another data seed (another deal of the rows to
the sites and another split), so the spread is over deals, not only over timing noise.
"""

from __future__ import annotations

import argparse
import logging
import time

import _harness as harness

#: How close to the oracle's accuracy the federated model must come.
TOLERANCE = 0.02
#: Most federated rounds tried before giving up on reaching the oracle.
MAX_ROUNDS = 15
ROUNDS = 3


def measure(seed: int) -> dict[str, float]:
    """Run central, federated and each-site-alone once on data seed ``seed``."""
    from pipelines.hospitals.baselines import (
        federated_rounds,
        oracle,
        shipped_bytes,
        site_alone,
    )
    from pipelines.hospitals.data import SITES

    central = oracle(seed=seed)
    target = central["scores"]["pooled"] - TOLERANCE
    figures, _ = federated_rounds(MAX_ROUNDS, seed=seed)
    reached = next((f for f in figures if f.accuracy >= target), None)
    upto = figures if reached is None else figures[: reached.round]
    alone = [site_alone(site, seed=seed)["scores"]["pooled"] for site in SITES]
    out = {
        "central_accuracy": central["scores"]["pooled"],
        "central_s": central["train_s"],
        "central_bytes": float(shipped_bytes(seed=seed)),
        "federated_best_accuracy": max(f.accuracy for f in figures),
        "federated_rounds": float(reached.round if reached else MAX_ROUNDS + 1),
        "federated_parallel_s": sum(f.slowest_site_s for f in upto),
        "federated_sequential_s": sum(f.all_sites_s for f in upto),
        "federated_bytes": float(sum(f.bytes_crossed for f in upto)),
        "federated_bytes_per_round": float(figures[-1].bytes_crossed),
        "worst_site_alone_accuracy": min(alone),
        "best_site_alone_accuracy": max(alone),
    }
    out["gap_to_oracle"] = out["central_accuracy"] - out["federated_best_accuracy"]
    return out


UNITS = {
    "central_accuracy": "accuracy",
    "central_s": "s",
    "central_bytes": "bytes",
    "federated_best_accuracy": "accuracy",
    "federated_rounds": "rounds",
    "federated_parallel_s": "s",
    "federated_sequential_s": "s",
    "federated_bytes": "bytes",
    "federated_bytes_per_round": "bytes",
    "worst_site_alone_accuracy": "accuracy",
    "best_site_alone_accuracy": "accuracy",
    "gap_to_oracle": "accuracy",
}


def main() -> None:
    """Measure every seed, print the side-by-side table, the verdicts and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_arguments(parser, rounds=ROUNDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    started = time.perf_counter()
    report = harness.Report("federated")
    print(
        f"federated (FedAvg via Flower, {MAX_ROUNDS} rounds at most) vs central training on "
        f"the hospitals example; target: within {TOLERANCE} of the central model's accuracy"
    )
    from pipelines.hospitals.baselines import training_rows
    from pipelines.hospitals.train import FINE_TUNE, fit

    fit(*training_rows("hosp-lux"), recipe=FINE_TUNE)  # warm torch up: no case pays for it
    per_seed = []
    for seed in range(args.rounds):
        figures = measure(seed)
        per_seed.append(figures)
        print(
            f"  seed {seed}: central {figures['central_accuracy']:.3f} in "
            f"{figures['central_s']:.2f} s, {figures['central_bytes']:,.0f} B shipped; "
            f"federated {figures['federated_best_accuracy']:.3f} best, within {TOLERANCE} "
            f"after {figures['federated_rounds']:.0f} rounds, "
            f"{figures['federated_parallel_s']:.2f} s (sites in parallel), "
            f"{figures['federated_bytes']:,.0f} B crossed; sites alone "
            f"{figures['worst_site_alone_accuracy']:.3f}-{figures['best_site_alone_accuracy']:.3f}"
        )
    spreads = {
        key: report.case(key, [f[key] for f in per_seed], unit) for key, unit in UNITS.items()
    }
    harness.print_table(
        "Side by side (median over seeds)",
        ["", "accuracy", "rounds", "wall time", "bytes across site borders"],
        [
            [
                "central (pooled, forbidden)",
                spreads["central_accuracy"].fmt(".3f"),
                "1 run",
                spreads["central_s"].fmt(".2f", " s"),
                spreads["central_bytes"].fmt(",.0f"),
            ],
            [
                "federated (to within tolerance)",
                spreads["federated_best_accuracy"].fmt(".3f"),
                spreads["federated_rounds"].fmt(".0f"),
                spreads["federated_parallel_s"].fmt(".2f", " s"),
                spreads["federated_bytes"].fmt(",.0f"),
            ],
            [
                "weakest site alone",
                spreads["worst_site_alone_accuracy"].fmt(".3f"),
                "1 run",
                "-",
                "0",
            ],
        ],
    )
    report.verdict(
        harness.at_most(
            "federated within tolerance of the oracle", spreads["gap_to_oracle"], TOLERANCE
        )
    )
    report.verdict(
        harness.at_most("rounds to within tolerance", spreads["federated_rounds"], MAX_ROUNDS)
    )
    beats = [f["federated_best_accuracy"] - f["worst_site_alone_accuracy"] for f in per_seed]
    report.verdict(
        harness.at_least("federated minus the weakest site alone", harness.Spread.of(beats), 0.0)
    )
    ratio = harness.ratios(
        [f["federated_bytes"] for f in per_seed], [f["central_bytes"] for f in per_seed]
    )
    print(
        f"\nbytes across the borders, federated / shipping the data: {ratio.fmt('.2f')} "
        "(the model is about as big as this small data set; the figure that matters is that "
        "no sample crossed)"
    )
    print(f"(took {time.perf_counter() - started:.0f} s)")
    report.finish(args.json)


if __name__ == "__main__":
    main()

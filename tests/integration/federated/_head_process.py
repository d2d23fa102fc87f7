"""A cloud head's federated training in a process of its own, for the restart test to kill.

Usage: python -m tests.integration.federated._head_process ADDRESS NAMESPACE SPEC_JSON
PLAN_JSON DB WORKDIR.  It connects to the Ray cluster at ADDRESS (auth from the environment)
and runs ``FederatedTrainer.train`` as run ``run-1``; each audit record is printed as a JSON
line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import ray

    from cloud_head.federated import FederatedTrainer
    from continuum.residency import TrainingPlan
    from continuum.spec import PipelineSpec

    address, namespace, spec_json, plan_json, db, workdir = argv
    ray.init(address=address, namespace=namespace, log_to_driver=False)
    trainer = FederatedTrainer(
        PipelineSpec.model_validate_json(spec_json),
        TrainingPlan.from_record(json.loads(plan_json)),
        Path(db),
        record=lambda record: print(json.dumps(record), flush=True),
    )
    trainer.train("run-1", parent=None, base_model=None, base_graph=None, workdir=Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

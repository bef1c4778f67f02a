"""Look-alikes and clusters against their baselines on several generated programmes: the spread their quality gates
(tests/test_quality_gates.py) are set from.

For each seed: generated data (features.synthetic.generator), then the training protocol `segments train` runs with
its defaults:
- look-alike of the `best_members` rule seed (training.train.train_lookalike): the out-of-time headline,
  entry_lift_at_10 (how many times more often the top 10% of non-members joined the seed within the horizon than
  non-members in general), for the model and each baseline (rule near-miss, centroid similarity, random);
- clusters (training.train.train_clusters): agreement with the planted personas (adjusted Rand index) of the
  product's pipeline, and of plain KMeans (standardized features, the same k) as the baseline.

Usage: python bench/gate_seeds.py [--seeds 11 12 13 14 15] [--customers 4000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from features.pipeline import load_validated
from features.synthetic.generator import generate_tables, write_tables
from training import train as training
from training.estimators.clusters import label_agreement

AS_OF = datetime(2026, 7, 1)


def seed_row(seed: int, customers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate_tables(customers, 24, seed=seed, end="2026-07-01")
        write_tables(generated, Path(tmp))
        data = training.TrainingData(load_validated(Path(tmp)), AS_OF, tmp)
        lookalike = training.train_lookalike(data, {}, "best_members")
        clusters = training.train_clusters(data, {})
    truth = generated.ground_truth.set_index("customer_id")["persona"]
    agreement = label_agreement(clusters.model, data.current_features, truth)
    metrics, baselines = lookalike.evaluation.metrics, lookalike.evaluation.baselines
    return {"seed": seed, "entry_lift_at_10": metrics.get("entry_lift_at_10"),
            **{f"{b}_entry_lift_at_10": m.get("entry_lift_at_10") for b, m in baselines.items()},
            "recall_at_10": metrics.get("recall_at_10"), "k": clusters.model.k_, **agreement}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate_seeds.json")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        rows.append(seed_row(seed, args.customers))
        print(json.dumps(rows[-1]), flush=True)
    summary = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": f"{platform.machine()}, Python {platform.python_version()}",
               "command": "python bench/gate_seeds.py --seeds " + " ".join(map(str, args.seeds)),
               "customers": args.customers, "rows": rows}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

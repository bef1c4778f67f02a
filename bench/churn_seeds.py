"""Churn against its baselines on several generated programmes: the spread the quality gates are set from.

For each seed: `segments generate`-equivalent data (features.synthetic.generator), then the training protocol of
`segments train churn` (training.train.train_churn: backtest out of time, refit) with its defaults. Prints the
backtest ROC-AUC of the model and of each baseline, the margin over the best baseline with its paired-bootstrap
95% interval, and the grade.

Usage: python bench/churn_seeds.py [--seeds 11 12 13 14 15] [--customers 4000] [--out FILE]
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
from training.grading import grade_model

AS_OF = datetime(2026, 7, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "churn_seeds.json")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            write_tables(generate_tables(args.customers, 24, seed=seed, end="2026-07-01"), Path(tmp))
            data = training.TrainingData(load_validated(Path(tmp)), AS_OF, tmp)
            record = training.train_churn(data, {}, horizon_days=90)
        ev = record.evaluation
        graded = grade_model("churn", ev.metrics, ev.baselines)
        row = {"seed": seed, "roc_auc": ev.metrics["roc_auc"],
               **{f"{b}_roc_auc": m["roc_auc"] for b, m in ev.baselines.items()},
               "best_baseline": graded.best_baseline, "margin": graded.margin, "ci": graded.ci, "grade": graded.grade}
        rows.append(row)
        print(json.dumps(row), flush=True)
    margins = [r["margin"] for r in rows]
    summary = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": f"{platform.machine()}, Python {platform.python_version()}",
               "command": "python bench/churn_seeds.py " + " ".join(f"--seeds {s}" for s in args.seeds),
               "customers": args.customers, "rows": rows, "margin_min": min(margins), "margin_max": max(margins)}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

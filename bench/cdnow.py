"""Real-data churn benchmark on CDNOW: who buys again in the 39 weeks after 1997-10-01?

Protocol (issue 3): features as of 1997-10-01 from data before it; training labels also end by then (the churn
model's training and validation snapshots have outcome windows ending on or before 1997-10-01); every customer is
scored; the label is "any purchase from 1997-10-01 to 1998-06-30". The model's config is the default one, fixed
before looking at the test label. Baselines: recency only, BG/NBD expected purchases over 39 weeks (fitted on the
history before 1997-10-01). Paired bootstrap (1,000 resamples of customers) gives 95% intervals of the AUC margins.

Usage: python bench/cdnow.py [--horizon 90] [--out bench/results/cdnow.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from features.cdnow import import_cdnow
from features.pipeline import load_validated
from training.baselines import BGNBDBaseline, align_rfm, recency_score, rfm_summary
from training.churn import ChurnConfig, ChurnModel, snapshot_dates
from training.data import make_snapshot
from training.evaluation import expected_calibration_error

AS_OF = datetime(1997, 10, 1)
LABEL_END = datetime(1998, 7, 1)  # purchases on 1997-10-01 .. 1998-06-30 inclusive
LABEL_DAYS = (LABEL_END - AS_OF).days


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, rounds: int = 1000, seed: int = 0):
    """95% interval of roc_auc(a) - roc_auc(b) over bootstrap resamples of customers."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--horizon", type=int, default=90, help="churn model horizon (days) used for training")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cdnow.json")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        import_cdnow(Path(tmp))
        validation = load_validated(Path(tmp))
        config = ChurnConfig(horizon_days=args.horizon)
        dates = snapshot_dates(AS_OF, args.horizon, config.n_snapshots, config.step_days)
        train = [make_snapshot(validation, d, args.horizon) for d in dates]
        model = ChurnModel(config).fit(train)
        scoring = make_snapshot(validation, AS_OF, with_outcomes=False).features
        buyers = buyers_between(validation, AS_OF, LABEL_END)
        horizon_buyers = buyers_between(validation, AS_OF, AS_OF + timedelta(days=args.horizon))
        rfm = rfm_summary(validation, AS_OF)
    y = scoring["customer_id"].isin(buyers).to_numpy().astype(int)
    active = 1.0 - model.predict_proba(scoring)  # P(purchase within the model's horizon)
    rows, present = align_rfm(rfm, scoring["customer_id"])
    bgnbd = np.zeros(len(scoring))
    bgnbd[present] = BGNBDBaseline().fit(rfm).expected_purchases(rows, LABEL_DAYS)
    recency = -recency_score(scoring)  # more recent = more likely to buy
    scores = {"model": active, "bgnbd": bgnbd, "recency": recency}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "command": "python bench/cdnow.py" + (f" --horizon {args.horizon}" if args.horizon != 90 else ""),
        "customers": len(scoring), "buyers_in_label_window": int(y.sum()),
        "training_as_of": [d.isoformat() for d in dates], "config": asdict(config),
        "roc_auc": {name: float(roc_auc_score(y, s)) for name, s in scores.items()},
        "pr_auc": {name: float(average_precision_score(y, s)) for name, s in scores.items()},
        "margin_ci95": {f"model-{b}": paired_bootstrap(y, active, scores[b]) for b in ("recency", "bgnbd")},
        "note": f"model calibration is for its own {args.horizon}-day horizon; ECE below is against that horizon's "
                "label from 1997-10-01",
        "seconds": round(time.perf_counter() - start, 1),
    }
    y_h = scoring["customer_id"].isin(horizon_buyers).to_numpy().astype(int)
    result["ece_model_own_horizon"] = float(expected_calibration_error(y_h, active))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def buyers_between(validation, start: datetime, end: datetime) -> set[str]:
    """Customers with a purchase in [start, end)."""
    rows = validation.con.execute(
        "SELECT DISTINCT customer_id FROM transactions WHERE NOT is_return AND timestamp >= ? AND timestamp < ?",
        [start, end]).fetchall()
    return {r[0] for r in rows}


if __name__ == "__main__":
    main()

"""Real-data churn benchmark on CDNOW through the product's own commands, with their defaults.

What a new user does (issue 11): keep the transactions before the cut-off only, `segments train churn --data D
--as-of T`, then `segments score --data D --as-of T` (the registered champion scores every customer). The served
`churn_probability` is then judged against what CDNOW says happened next: no purchase from T to the label end
(default 1998-07-01, the end of the log: 39 weeks after 1997-10-01). Baselines on the same customers and label,
fitted on the history before T only: BG/NBD and Pareto/NBD expected purchases over the label window, recency.
Intervals: paired bootstrap over customers (training.evaluation.paired_bootstrap, 1,000 resamples).

Usage: python bench/cdnow.py [--as-of 1997-10-01] [--label-end 1998-07-01] [--horizon 90] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from features.pipeline import load_validated
from features.synthetic.cdnow import import_cdnow
from training.estimators.baselines import BGNBDBaseline, ParetoNBDBaseline, align_rfm, rfm_summary
from training.evaluation import paired_bootstrap, roc_auc

SEGMENTS = str(Path(sys.executable).with_name("segments"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--as-of", default="1997-10-01", help="cut-off: the product sees transactions before it")
    parser.add_argument("--label-end", default="1998-07-01", help="label: no purchase in [as_of, label_end)")
    parser.add_argument("--horizon", type=int, default=90, help="passed to segments train (its default is 90)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    as_of, label_end = datetime.fromisoformat(args.as_of), datetime.fromisoformat(args.label_end)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import_cdnow(work / "full")
        full = pd.read_parquet(work / "full" / "transactions.parquet")
        (work / "cut").mkdir()
        full[full["timestamp"] < as_of].to_parquet(work / "cut" / "transactions.parquet", index=False)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
        train = ["train", "churn", "--data", "cut", "--as-of", args.as_of]
        if args.horizon != 90:
            train += ["--horizon", str(args.horizon)]
        for command in (train, ["score", "--data", "cut", "--as-of", args.as_of, "--out", "scores.parquet"]):
            subprocess.run([SEGMENTS, *command], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        scores = pd.read_parquet(work / "scores.parquet")
        rfm = rfm_summary(load_validated(work / "cut"), as_of)
    buyers = set(full.loc[(full["timestamp"] >= as_of) & (full["timestamp"] < label_end), "customer_id"])
    churned = (~scores["customer_id"].isin(buyers)).to_numpy().astype(int)
    rows, present = align_rfm(rfm, scores["customer_id"])
    label_days = (label_end - as_of).days

    def minus_expected(model) -> np.ndarray:
        out = np.zeros(len(scores))
        out[present] = -model.fit(rfm).expected_purchases(rows, label_days)
        return out

    churn_scores = {"model": scores["churn_probability"].to_numpy(), "bgnbd": minus_expected(BGNBDBaseline()),
                    "pnbd": minus_expected(ParetoNBDBaseline()),
                    "recency": np.full(len(scores), np.inf)}
    churn_scores["recency"][present] = (rows["T"] - rows["recency"]).to_numpy()  # days since the last purchase
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": " ".join(["python bench/cdnow.py", *sys.argv[1:]]),
        "as_of": args.as_of, "label_end": args.label_end, "horizon_days": args.horizon,
        "customers": len(scores), "churners": int(churned.sum()),
        "roc_auc": {n: float(roc_auc_score(churned, s)) for n, s in churn_scores.items()},
        "pr_auc": {n: float(average_precision_score(churned, s)) for n, s in churn_scores.items()},
        "margin_ci95": {f"model-{b}": paired_bootstrap(roc_auc, churned, churn_scores["model"], s, rounds=1000)
                        for b, s in churn_scores.items() if b != "model"},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    out = args.out or Path(__file__).parent / "results" / f"cdnow_{args.as_of}_{args.horizon}d.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Serving benchmark (c): exact TreeSHAP throughput of the default churn model, FastTreeShap vs LightGBM pred_contrib.

Usage (2 cores, one run): python bench/serving_bench.py --data DIR --as-of YYYY-MM-DD [--rows 1000] [--repeat 5]
Trains a default churn model (ChurnConfig()) on DIR, then times both engines on the same rows and checks that their
values agree to 1e-6. Benchmarks (a) (single-customer latency at 50 req/s) and (b) (batches of 1,000 against the
in-process limit) are in bench/serving_load.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import numpy as np

    from features.pipeline import load_validated
    from serving.explain.treeshap import FastTreeShap, pred_contrib
    from training import train as training

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    as_of = datetime.fromisoformat(args.as_of)
    shared = training.TrainingData(load_validated(args.data), as_of, args.data)
    model = training.train_churn(shared, {}, 90).model
    X = model.encoder_.transform(shared.current_features).to_numpy()[: args.rows]
    start = time.perf_counter()
    fast = FastTreeShap(model.booster_)
    build_s = time.perf_counter() - start
    baseline = pred_contrib(model.booster_)
    max_diff = float(np.abs(fast(X) - baseline(X)).max())
    t_base, t_fast = best_of(lambda: baseline(X), args.repeat), best_of(lambda: fast(X), args.repeat)
    t_predict = best_of(lambda: model.booster_.predict(X), args.repeat)
    result = {"rows": len(X), "trees": model.booster_.num_trees(), "num_leaves": model.config.num_leaves,
              "pred_contrib_rows_per_s": len(X) / t_base, "fast_rows_per_s": len(X) / t_fast,
              "predict_rows_per_s": len(X) / t_predict, "speedup": t_base / t_fast, "max_abs_diff": max_diff,
              "table_build_s": build_s}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

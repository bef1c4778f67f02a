"""Is the table-driven TreeSHAP worth its code? End-to-end share of explained scoring, FastTreeShap against LightGBM's
own `pred_contrib` (issue 12).

Usage: python bench/explain_engines.py --workdir DIR [--repeat 7] [--singles 300]
Uses bench/serving_load.py's set-up in DIR (20,000 customers, `segments train all`, `segments build`; steps already
done are skipped), loads the serve folder as the service does, then times the in-process service path (resolve ids,
`Scorer.results` with reasons, response validation and JSON) for one customer at a time (median of --singles) and
for a batch of 1,000 (best of --repeat), first with the served engines, then with every model on `pred_contrib`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving_load import env_for, setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--singles", type=int, default=300)
    args = parser.parse_args()
    setup(args.workdir, args.customers)
    os.environ.update(env_for(args.workdir))
    from serving.explain.treeshap import engine_name, pred_contrib
    from serving.http.request_features import resolve_features
    from serving.http.schemas import CustomerInput, ScoreResponse
    from serving.state import load_state

    state = load_state(args.workdir / "serve")
    assert state.ready, state.problems
    ids = list(state.table.index[:1000])

    def service_path(chosen: list[str]) -> bytes:
        resolved = resolve_features(state, [CustomerInput(customer_id=i) for i in chosen], None)
        scored = iter(state.scorer.results(resolved.features, True, 3))
        items = [err if err is not None else next(scored) for err in resolved.errors]
        versions = {"models": state.versions, "feature_set_version": "x", "as_of": resolved.as_of.isoformat()}
        return ScoreResponse.model_validate({"versions": versions, "customers": items}).model_dump_json().encode()

    def measure() -> dict:
        singles = []
        for i in range(args.singles):
            start = time.perf_counter()
            service_path([ids[i % len(ids)]])
            singles.append(time.perf_counter() - start)
        batch = min(_timed(lambda: service_path(ids)) for _ in range(args.repeat))
        engines = {name: engine_name(e.engine) for name, e in state.scorer.explainers.items()}
        return {"engines": engines, "one_customer_median_ms": 1000 * statistics.median(singles),
                "batch_1000_best_ms": 1000 * batch}

    served = measure()
    for explainer in state.scorer.explainers.values():
        explainer.engine = pred_contrib(explainer.booster)
    lightgbm_only = measure()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": os.getloadavg(), "command": " ".join(["python bench/explain_engines.py", *sys.argv[1:]]),
        "served_engines": served, "pred_contrib_only": lightgbm_only,
        "saved_share_one_customer": 1 - served["one_customer_median_ms"] / lightgbm_only["one_customer_median_ms"],
        "saved_share_batch_1000": 1 - served["batch_1000_best_ms"] / lightgbm_only["batch_1000_best_ms"],
    }
    print(json.dumps(result, indent=1))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

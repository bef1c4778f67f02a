"""Is the table-driven TreeSHAP worth its code? End-to-end share of explained scoring, FastTreeShap against LightGBM's
own `pred_contrib` (issue 12).

Usage: python bench/explain_engines.py --workdir DIR [--repeat 7] [--singles 300]
Uses bench/serving_load.py's set-up in DIR (20,000 customers, `segments train all`, `segments build`; steps already
done are skipped), loads the serve folder as the service does, then times the in-process service path (resolve ids,
`Scorer.results` with reasons and segments, response validation and JSON) for one customer at a time (median over
--singles) and for a batch of 1,000 (median and best of --repeat), with the served engines and with every model on
`pred_contrib`, in interleaved rounds; and the churn engine alone on one row.
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
    from serving.cli.serve_commands import batch_segment_rules
    from serving.explain.treeshap import engine_name, pred_contrib
    from serving.http.request_features import resolve_features
    from serving.http.schemas import CustomerInput, ScoreResponse
    from serving.http.service import segment_evaluation
    from serving.state import load_state

    state = load_state(args.workdir / "serve")
    assert state.ready, state.problems
    ids = list(state.table.index[:1000])
    rules = batch_segment_rules(None, state.table.reset_index(drop=True), state.scorer.bundle, None)

    def service_path(chosen: list[str]) -> bytes:
        resolved = resolve_features(state, [CustomerInput(customer_id=i) for i in chosen], None)
        scored = iter(state.scorer.results(resolved.features, True, 3, rules))
        items = [err if err is not None else next(scored) for err in resolved.errors]
        versions = {"models": state.versions, "feature_set_version": "x", "as_of": resolved.as_of.isoformat()}
        return ScoreResponse.model_validate({"versions": versions, "segment_evaluation": segment_evaluation(rules),
                                             "customers": items}).model_dump_json().encode()

    served_engines = {name: e.engine for name, e in state.scorer.explainers.items()}
    lightgbm = {name: pred_contrib(e.booster) for name, e in state.scorer.explainers.items()}
    singles = {"served": [], "pred_contrib": []}
    batches = {"served": [], "pred_contrib": []}
    engine_only = {"served": [], "pred_contrib": []}
    churn = state.scorer.explainers["segments-churn"]
    one_row = churn.matrix(state.table.loc[[ids[0]]].reset_index(drop=True))
    # Interleaved rounds (A, B, A, B, ...) so load changes and warm-up hit both engines alike.
    for round_ in range(args.repeat):
        for label, engines in (("served", served_engines), ("pred_contrib", lightgbm)):
            for name, explainer in state.scorer.explainers.items():
                explainer.engine = engines[name]
            for i in range(args.singles // args.repeat):
                singles[label].append(_timed(lambda i=i: service_path([ids[(round_ * 97 + i) % len(ids)]])))
                engine_only[label].append(_timed(lambda: churn.engine(one_row)))
            batches[label].append(_timed(lambda: service_path(ids)))

    def summary(label: str) -> dict:
        return {"one_customer_median_ms": 1000 * statistics.median(singles[label]),
                "churn_engine_one_row_median_ms": 1000 * statistics.median(engine_only[label]),
                "batch_1000_median_ms": 1000 * statistics.median(batches[label]),
                "batch_1000_best_ms": 1000 * min(batches[label])}

    served, lightgbm_only = summary("served"), summary("pred_contrib")
    served["engines"] = {name: engine_name(engine) for name, engine in served_engines.items()}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": os.getloadavg(), "command": " ".join(["python bench/explain_engines.py", *sys.argv[1:]]),
        "served_engines": served, "pred_contrib_only": lightgbm_only,
        "saved_share_one_customer": 1 - served["one_customer_median_ms"] / lightgbm_only["one_customer_median_ms"],
        "saved_share_batch_1000": 1 - served["batch_1000_median_ms"] / lightgbm_only["batch_1000_median_ms"],
    }
    print(json.dumps(result, indent=1))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

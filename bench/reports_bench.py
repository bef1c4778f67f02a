"""Reports and counterfactuals (issue 6): how long `segments report` takes, and a counterfactual per customer.

Usage (after `make demo`, which trains, builds `demo/serve` and refreshes `demo/segments.db` at two dates):
    python bench/reports_bench.py --workdir demo [--customers 30]

Measures, in this process, with the demo's serve folder, MLflow and membership store:
- writing every report (`serving.reports.site.write_reports`, what `segments report` runs) into a temp folder;
- `serving.segments.counterfactuals.counterfactuals` for `--customers` members of likely_to_churn (goal: leave it) and as many
  customers outside loyal (goal: enter loyal): time per call, rebuilds per call, share with a plan;
- rendering the customer page (`serving.reports.customer.customer_page`) for the same at-risk customers.
Results: printed and written to bench/results/reports.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"n": len(ordered), "p50_s": statistics.median(ordered), "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
            "max_s": ordered[-1]}


def counterfactual_runs(processor, customers: list[str], goal: str) -> dict:
    from serving.segments.counterfactuals import counterfactuals

    times, rebuilds, reached = [], [], 0
    for customer in customers:
        result, seconds = timed(lambda c=customer: counterfactuals(processor, c, goal))
        times.append(seconds)
        rebuilds.append(result.to_dict()["search"]["evaluations"])
        reached += result.reached
    return {"goal": goal, **summary(times), "mean_rebuilds": statistics.mean(rebuilds),
            "reached_share": reached / len(customers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("demo"))
    parser.add_argument("--customers", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "reports.json")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    os.chdir(workdir)  # the demo's relative defaults: ./serve, ./segments.db, ./mlflow.db, ./bentoml
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))

    from serving.reports.customer import customer_page
    from serving.reports.site import write_reports
    from serving.segments.events import EventProcessor
    from serving.segments.store import SegmentStore
    from serving.state import load_state

    load_average = os.getloadavg()
    state, load_seconds = timed(lambda: load_state(workdir / "serve"))
    store = SegmentStore(f"sqlite:///{workdir / 'segments.db'}")
    with tempfile.TemporaryDirectory() as out:
        pages, report_seconds = timed(lambda: write_reports(Path(out), workdir / "serve", store, state=state))
    processor = EventProcessor(state, store)
    at_risk = [m["customer_id"] for m in store.current.members("likely_to_churn", limit=args.customers)]
    loyal = {m["customer_id"] for m in store.current.members("loyal", limit=100_000)}
    others = [c for c in state.table["customer_id"].head(10 * args.customers) if c not in loyal][:args.customers]
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_before": load_average, "customers_served": len(state.table),
        "command": f"python bench/reports_bench.py --workdir {args.workdir} --customers {args.customers}",
        "load_state_s": load_seconds, "write_reports": {"pages": len(pages), "seconds": report_seconds},
        "counterfactual_leave_at_risk": counterfactual_runs(processor, at_risk, "leave likely_to_churn"),
        "counterfactual_enter_loyal": counterfactual_runs(processor, others, "enter loyal"),
        "customer_page": summary([timed(lambda c=c: customer_page(processor, c))[1] for c in at_risk]),
        "load_after": os.getloadavg(),
    }
    print(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

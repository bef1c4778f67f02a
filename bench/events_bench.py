"""Events (issue 5): latency from a posted event to its recorded membership change, against a real `segments serve`.

Usage (one command; setup steps whose outputs exist in DIR are skipped):
    python bench/events_bench.py --workdir DIR [--rate 20] [--duration 30] [--in-process]

Setup (bench/serving_load.py's helpers): `segments generate --customers 20000 --months 24 --seed 3` -> DIR/data,
`segments train all` into sqlite:///DIR/mlflow.db, `segments build --as-of 2026-07-01` -> DIR/serve (with
history.sqlite); then `segments refresh --as-of 2026-07-01` once into the SQLite store DIR/refreshed.db (skipped when
it exists). Every run starts from a fresh copy of that store (DIR/events.db), so runs are comparable.

HTTP (default): `segments serve` (bentoml serve, 1 worker) on a free port of 127.0.0.1 with SEGMENTS_DB_URL =
DIR/events.db; an open loop posts one transaction per request (POST /events, one customer, one transaction) every
1/rate s for `duration` s, each for a different customer with >= 12 orders in the 365 days before as_of (a year of
history), sent on schedule whatever the answers. Latency: from the scheduled send time to the 200 answer (the
service answers after the store transaction holding the event and its changes has committed), so queueing is not
hidden. Also a closed loop (one request at a time) first, for the service time without queueing.

--in-process: the same kind of events through `EventProcessor.ingest` in this process (no HTTP, no BentoML), one at
a time, with the time split into features / scoring / segment evaluation / the rest (store reads and writes).

Results: printed and written to bench/results/events.json (--out); the target is p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving_load import (  # the shared setup of the serving benchmarks
    AS_OF,
    BIN,
    env_for,
    free_port,
    percentiles,
    send_on_schedule,
    setup,
    start_server,
    stop_server,
)

TARGET_P99_MS = 50
WARMUP = 10


def refreshed_store(workdir: Path) -> Path:
    """DIR/refreshed.db: the store after one `segments refresh` as of AS_OF (built once)."""
    path = workdir / "refreshed.db"
    if not path.exists():
        tmp = workdir / "refreshed.tmp.db"
        tmp.unlink(missing_ok=True)
        print("[setup] refresh", file=sys.stderr, flush=True)
        start = time.monotonic()
        subprocess.run([str(BIN / "segments"), "refresh", "--data", str(workdir / "data"), "--as-of", AS_OF,
                        "--db", f"sqlite:///{tmp}"], cwd=workdir, env=env_for(workdir), check=True, timeout=3600,
                       stdout=subprocess.DEVNULL)
        tmp.rename(path)
        print(f"[setup] refresh done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return path


def fresh_store(workdir: Path) -> str:
    target = workdir / "events.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(refreshed_store(workdir), target)
    return f"sqlite:///{target}"


def heavy_customers(workdir: Path) -> list[str]:
    """Customers with >= 12 orders in the year before as_of, in a fixed random order."""
    import numpy as np
    import pandas as pd

    table = pd.read_parquet(workdir / "serve" / "features.parquet", columns=["customer_id", "orders_count_365d"])
    ids = table.loc[table["orders_count_365d"] >= 12, "customer_id"].astype(str).to_numpy()
    return [str(i) for i in np.random.default_rng(5).permutation(ids)]


def event_body(customer_id: str, i: int) -> dict:
    """One transaction, just after as_of (a distinct minute per event)."""
    moment = datetime.fromisoformat(AS_OF) + timedelta(minutes=1 + i)
    return {"transactions": [{"customer_id": customer_id, "transaction_id": f"bench-{customer_id}-{i}",
                              "timestamp": moment.isoformat() + "Z", "amount": 42.5, "quantity": 1,
                              "channel": "app"}]}


def check(body: dict, answer: dict) -> str | None:
    update = answer["customers"][0]
    expected = body["transactions"][0]["transaction_id"]
    if update["stored"] != [expected] or update["as_of"] is None:
        return f"not stored: {json.dumps(update)[:200]}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# HTTP


def sequential(base: str, customers: list[str], n: int, offset: int) -> dict:
    import httpx

    latencies = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in range(n):
            body = event_body(customers[(offset + i) % len(customers)], offset + i)
            start = time.perf_counter()
            response = client.post("/events", json=body)
            latencies.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200 and check(body, response.json()) is None, response.text[:300]
    return {"requests": n, **percentiles(latencies), "capacity_per_s": 1000 / statistics.mean(latencies)}


async def open_loop(base: str, customers: list[str], rate: float, duration: float, timeout: float,
                    offset: int) -> dict:
    import httpx

    interval, n = 1.0 / rate, round(rate * duration)
    latencies, service, errors, statuses, send_lag = [], [], [], {}, []
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        async def one(i: int, scheduled: float) -> None:
            sent = time.perf_counter()
            send_lag.append(sent - scheduled)
            body = event_body(customers[(offset + i) % len(customers)], offset + i)
            try:
                response = await client.post("/events", json=body)
                done = time.perf_counter()
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                problem = (check(body, response.json()) if response.status_code == 200
                           else f"{response.status_code}: {response.text[:200]}")
                if problem:
                    errors.append(problem)
                    return
                latencies.append((done - scheduled) * 1000)
                service.append((done - sent) * 1000)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(f"{type(exc).__name__}: {exc}")

        sent_s, pending, elapsed = await send_on_schedule(one, n, interval, timeout)
    return {"requests": n, "rate_per_s": rate, "duration_s": duration, "wall_s": elapsed,
            "achieved_send_rate_per_s": n / sent_s if sent_s > 0 else None,
            "achieved_answer_rate_per_s": len(latencies) / elapsed,
            "answered_200": len(latencies), "errors": len(errors) + len(pending), "unfinished": len(pending),
            "error_samples": errors[:5], "statuses": {str(k): v for k, v in statuses.items()},
            "max_send_lag_ms": max(send_lag) * 1000 if send_lag else None,
            "from_scheduled_send": percentiles(latencies), "from_actual_send": percentiles(service)}


def run_http(args, workdir: Path, customers: list[str]) -> dict:
    import httpx

    os.environ["SEGMENTS_DB_URL"] = fresh_store(workdir)  # env_for copies os.environ into the server's env
    port = args.port or free_port()
    process = start_server(workdir, port)
    base = f"http://127.0.0.1:{port}"
    out = {}
    try:
        info = httpx.get(f"{base}/v1/info", timeout=10).json()
        out["models"] = info.get("models")
        out["warmup"] = sequential(base, customers, WARMUP, 0)
        if args.sequential:
            out["sequential"] = sequential(base, customers, args.sequential, WARMUP)
            print(json.dumps(out["sequential"], indent=1), file=sys.stderr, flush=True)
        out["load_before_open_loop"] = os.getloadavg()
        out["open_loop"] = asyncio.run(open_loop(base, customers, args.rate, args.duration, args.timeout,
                                                 WARMUP + args.sequential))
        out["open_loop"]["target_p99_ms"] = TARGET_P99_MS
        out["open_loop"]["target_met"] = (out["open_loop"]["errors"] == 0
                                          and out["open_loop"]["from_scheduled_send"]["p99_ms"] <= TARGET_P99_MS)
        print(json.dumps(out["open_loop"], indent=1), file=sys.stderr, flush=True)
    finally:
        stop_server(process)
    return out


# ---------------------------------------------------------------------------------------------------------------
# in process


class Timer:
    """Wraps a callable and adds its wall time to `total` (seconds)."""

    def __init__(self, fn):
        self.fn, self.total = fn, 0.0

    def __call__(self, *a, **k):
        start = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.total += time.perf_counter() - start


def run_in_process(args, workdir: Path, customers: list[str]) -> dict:
    os.environ.update(env_for(workdir))
    from serving.http.schemas import EventsRequest
    from serving.segments import events as realtime
    from serving.segments.store import SegmentStore
    from serving.state import load_state

    state = load_state(workdir / "serve")
    assert state.ready, state.problems
    store = SegmentStore(fresh_store(workdir))
    processor = realtime.EventProcessor(state, store)
    n = args.in_process_events
    for i in range(WARMUP):
        processor.ingest(EventsRequest.model_validate(event_body(customers[i % len(customers)], i)).rows())
    # As the service does once loaded (SegmentsService.__init__): full collections then skip the long-lived objects.
    gc.collect()
    gc.freeze()
    timers = {"features": Timer(processor.features), "scoring": Timer(processor.bundle.score),
              "segments": Timer(realtime.changes_for)}
    processor.features, processor.bundle.score, realtime.changes_for = (timers["features"], timers["scoring"],
                                                                        timers["segments"])
    latencies, changes = [], 0
    try:
        for i in range(WARMUP, WARMUP + n):
            body = event_body(customers[i % len(customers)], i)
            start = time.perf_counter()
            result = processor.ingest(EventsRequest.model_validate(body).rows())
            latencies.append((time.perf_counter() - start) * 1000)
            assert result[0]["stored"] == [body["transactions"][0]["transaction_id"]], result
            changes += len(result[0]["changes"])
    finally:
        realtime.changes_for = timers["segments"].fn
        gc.unfreeze()
    total = sum(latencies)
    split = {name: t.total * 1000 / n for name, t in timers.items()}
    split["store_and_rest"] = total / n - sum(split.values())
    return {"events": n, "changes_recorded": changes, **percentiles(latencies),
            "mean_split_ms": split, "target_p99_ms": TARGET_P99_MS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second (open loop)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of open loop")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--sequential", type=int, default=50, help="closed-loop requests before the open loop")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--in-process", action="store_true", help="time EventProcessor.ingest, no HTTP")
    parser.add_argument("--in-process-events", type=int, default=200)
    parser.add_argument("--label", default="", help="free text stored with the results (e.g. before/after)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "events.json")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    setup(workdir, args.customers)
    refreshed_store(workdir)
    customers = heavy_customers(workdir)
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "label": args.label,
              "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "command": " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
              "customers_with_12_orders_365d": len(customers), "load_before": os.getloadavg()}
    if args.in_process:
        result["in_process"] = run_in_process(args, workdir, customers)
    else:
        result["http"] = run_http(args, workdir, customers)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1, default=str)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = previous.get("runs", []) if isinstance(previous, dict) else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"latest": result, "runs": [*runs, result]}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()

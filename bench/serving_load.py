"""Serving benchmarks (a) and (b) against a real `segments serve` (bentoml serve, 1 worker) on 127.0.0.1.

Usage (one command; each setup step is skipped when its output exists in DIR):
    python bench/serving_load.py --workdir DIR [--rate 50] [--duration 60] [--batch 1000] [--batch-repeat 5]

Setup in DIR: `segments generate --customers 20000 --months 24 --seed 3` -> DIR/data; `segments train all` (default
configs) into MLflow at sqlite:///DIR/mlflow.db (a few minutes); `segments build --as-of 2026-07-01` -> DIR/serve with
BENTOML_HOME=DIR/bentoml; then `segments serve` on a free port of 127.0.0.1 (log: DIR/server.log).

(a) Open loop: one POST /score per 1/rate s ({"customers": [{"customer_id": ID}], "explain": true}, ids rotating
    through the serve folder's feature table), sent on schedule whatever the answers; latency is measured from the
    scheduled send time to the full response (so queueing is not hidden). p50/p95/p99/max and errors (target p99 <=
    25 ms).
(b) Batches of --batch customers by id, POST /score with explain false and true (best and median of --batch-repeat),
    against the in-process limit on the same rows in this process: LightGBM predict of every booster of every served
    model plus pred_contrib of every explained booster, on already encoded matrices (target: HTTP >= 60% of it); and
    the in-process service path (serving.scorer.Scorer, and resolve_features + Scorer + response validation + JSON)
    so that the HTTP/JSON share is visible.

The client runs on the same machine as the server (2 cores): its CPU competes with the server's. Results: printed as
JSON and written to bench/results/serving_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

AS_OF = "2026-07-01"
QUIET = {"BENTOML_DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
         "OMP_WAIT_POLICY": "PASSIVE"}
READY_TIMEOUT_S = 180
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def env_for(workdir: Path) -> dict:
    return {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
            "BENTOML_HOME": str(workdir / "bentoml"), "SEGMENTS_SERVE_DIR": str(workdir / "serve")}


def run_step(label: str, args: list[str], workdir: Path) -> None:
    print(f"[setup] {label}: {' '.join(args)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    subprocess.run([str(BIN / "segments"), *args], cwd=workdir, env=env_for(workdir), check=True, timeout=3600)
    print(f"[setup] {label} done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def setup(workdir: Path, customers: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    if not (data.exists() and any(data.iterdir())):
        run_step("generate", ["generate", "--out", str(data), "--customers", str(customers), "--months", "24",
                              "--seed", "3"], workdir)
    if not (workdir / "trained.ok").exists():
        run_step("train", ["train", "all", "--data", str(data), "--as-of", AS_OF], workdir)
        (workdir / "trained.ok").touch()
    if not (workdir / "serve" / "manifest.json").exists():
        run_step("build", ["build", "--data", str(data), "--as-of", AS_OF, "--serve-dir", str(workdir / "serve")],
                 workdir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, port: int) -> subprocess.Popen:
    import httpx

    log = open(workdir / "server.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([str(BIN / "segments"), "serve", "--serve-dir", str(workdir / "serve"),
                                "--host", "127.0.0.1", "--port", str(port)], cwd=workdir, env=env_for(workdir),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/v1/ready", timeout=2)
            if ready.status_code == 200:
                return process
            if ready.status_code == 503:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise SystemExit(f"server not ready; see {workdir / 'server.log'}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def percentiles(values_ms: list[float]) -> dict:
    import numpy as np

    if not values_ms:
        return {}
    a = np.asarray(values_ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "mean_ms": float(a.mean())}


# ---------------------------------------------------------------------------------------------------------------
# (a) open-loop single-customer score + explain


def sequential(base: str, ids: list[str], n: int) -> dict:
    """Closed loop, one request at a time (no queueing): the service time of one score + explain request."""
    import httpx

    latencies = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(n + 5):
            start = time.perf_counter()
            response = client.post("/score", json={"customers": [{"customer_id": ids[i]}], "explain": True})
            if i >= 5:  # the first five warm up
                latencies.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text[:300]
    return {"requests": n, **percentiles(latencies), "capacity_req_per_s": 1000 / statistics.mean(latencies)}


async def send_on_schedule(one, n: int, interval: float, timeout: float) -> tuple[float, set, float]:
    """Start `one(i, scheduled)` for i < n at fixed steps of `interval` s, whatever earlier requests are doing (an
    open loop: a slow server cannot slow the sender down). Returns (seconds spent sending, the tasks still pending
    after `timeout` + 5 s, cancelled, and the wall time)."""
    tasks = []
    t0 = time.perf_counter() + 0.1
    for i in range(n):
        scheduled = t0 + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    sent_s = time.perf_counter() - t0
    _, pending = await asyncio.wait(tasks, timeout=timeout + 5)
    for task in pending:
        task.cancel()
    return sent_s, pending, time.perf_counter() - t0


async def open_loop(base: str, ids: list[str], rate: float, duration: float, timeout: float) -> dict:
    import httpx

    interval, n = 1.0 / rate, round(rate * duration)
    latencies, errors, statuses, send_lag = [], [], {}, []
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        async def one(i: int, scheduled: float) -> None:
            send_lag.append(time.perf_counter() - scheduled)
            body = {"customers": [{"customer_id": ids[i % len(ids)]}], "explain": True}
            try:
                response = await client.post("/score", json=body)
                done = time.perf_counter()
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                item = response.json()["customers"][0] if response.status_code == 200 else None
                if item is None or item.get("error") is not None or not item.get("reasons"):
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                latencies.append((done - scheduled) * 1000)
            except Exception as exc:  # noqa: BLE001 - every failure is counted as an error
                errors.append(f"{type(exc).__name__}: {exc}")

        # warm-up (not measured): connections, first-call paths
        for i in range(20):
            await client.post("/score", json={"customers": [{"customer_id": ids[-1 - i]}], "explain": True})
        # The client's own full garbage collections (pandas and numpy are loaded here) paused the send loop for
        # ~100 ms; frozen, they scan only what the loop allocates, so client pauses are not counted as latency.
        gc.collect()
        gc.freeze()
        _, pending, elapsed = await send_on_schedule(one, n, interval, timeout)
    return {"requests": n, "rate_per_s": rate, "duration_s": duration, "wall_s": elapsed,
            "completed": len(latencies), "errors": len(errors) + len(pending), "unfinished": len(pending),
            "error_samples": errors[:5], "statuses": {str(k): v for k, v in statuses.items()},
            "max_send_lag_ms": max(send_lag) * 1000 if send_lag else None, **percentiles(latencies)}


# ---------------------------------------------------------------------------------------------------------------
# (b) batches over HTTP vs in process


def http_batches(base: str, ids: list[str], repeat: int) -> dict:
    import httpx

    out = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        for explain in (False, True):
            body = json.dumps({"customers": [{"customer_id": i} for i in ids], "explain": explain}).encode()
            client.post("/score", content=body, headers={"content-type": "application/json"})  # warm-up
            times, size = [], 0
            for _ in range(repeat):
                start = time.perf_counter()
                response = client.post("/score", content=body, headers={"content-type": "application/json"})
                content = response.content
                times.append(time.perf_counter() - start)
                items = response.json()["customers"]
                assert response.status_code == 200 and len(items) == len(ids), response.text[:300]
                assert all(it["error"] is None and (it["reasons"] is not None) == explain for it in items)
                size = len(content)
            out["explain" if explain else "no_explain"] = {
                "best_s": min(times), "median_s": statistics.median(times),
                "rows_per_s_best": len(ids) / min(times), "rows_per_s_median": len(ids) / statistics.median(times),
                "response_bytes": size, "request_bytes": len(body)}
    return out


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def in_process(workdir: Path, ids: list[str], repeat: int) -> dict:
    os.environ.update(env_for(workdir))
    from serving.cli.serve_commands import batch_segment_rules
    from serving.http.request_features import resolve_features
    from serving.http.schemas import CustomerInput, ScoreResponse
    from serving.http.service import segment_evaluation
    from serving.state import load_state

    state = load_state(workdir / "serve")
    assert state.ready, state.problems
    features = state.table.loc[ids].reset_index(drop=True)
    scorer = state.scorer
    n = len(ids)
    # The limit: LightGBM on already encoded matrices, every booster predicted, every explained booster contributed.
    matrices, boosters, explained = {}, [], []
    for name, e in scorer.explainers.items():
        X = e.matrix(features)
        model = e.model
        for booster in (model.boosters_.values() if hasattr(model, "boosters_") else [model.booster_]):
            if booster is not None:  # a served textbook candidate has no trees
                boosters.append((booster, X))
        if e.declared.booster is not None:
            explained.append((e.declared.booster, X))
        matrices[name] = X
    t_predict = best_of(lambda: [b.predict(X) for b, X in boosters], repeat)
    t_contrib = best_of(lambda: [b.predict(X, pred_contrib=True) for b, X in explained], repeat)
    t_encode = best_of(lambda: [e.matrix(features) for e in scorer.explainers.values()], repeat)
    t_scorer = best_of(lambda: scorer.results(features, False), repeat)
    t_scorer_x = best_of(lambda: scorer.results(features, True), repeat)
    customers = [CustomerInput(customer_id=i) for i in ids]
    # The service's segments, thresholds fitted on the served table (a refresh's, when the store has one).
    table = state.table.reset_index(drop=True)
    rules = batch_segment_rules(None, table.head(1), lambda: iter([table]), scorer.bundle, None)

    def service_path(explain: bool) -> bytes:
        resolved = resolve_features(state, customers, None)
        scored = iter(scorer.results(resolved.features, explain, 3, rules))
        items = [err if err is not None else next(scored) for err in resolved.errors]
        versions = {"models": state.versions, "feature_set_version": "x", "as_of": resolved.as_of.isoformat()}
        return ScoreResponse.model_validate({"versions": versions, "segment_evaluation": segment_evaluation(rules),
                                             "customers": items}).model_dump_json().encode()

    t_path = best_of(lambda: service_path(False), repeat)
    t_path_x = best_of(lambda: service_path(True), repeat)
    t_resolve = best_of(lambda: resolve_features(state, customers, None), repeat)
    models = {name: {"engine": "pred_contrib", "trees": e.declared.booster.num_trees() if e.declared.booster else 0, "inputs": e.n_inputs}
              for name, e in scorer.explainers.items()}
    return {
        "rows": n, "models": models,
        "limit_no_explain_rows_per_s": n / t_predict, "limit_explain_rows_per_s": n / (t_predict + t_contrib),
        "lgb_predict_s": t_predict, "lgb_pred_contrib_s": t_contrib, "encode_s": t_encode,
        "scorer_no_explain_rows_per_s": n / t_scorer, "scorer_explain_rows_per_s": n / t_scorer_x,
        "resolve_ids_s": t_resolve,
        "service_path_no_explain_rows_per_s": n / t_path, "service_path_explain_rows_per_s": n / t_path_x,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request in (a), seconds")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batch-repeat", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=50, help="closed-loop requests before (a)")
    parser.add_argument("--skip", choices=["seq", "a", "b"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serving_load.json")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    setup(workdir, args.customers)

    import numpy as np
    import pandas as pd

    all_ids = pd.read_parquet(workdir / "serve" / "features.parquet", columns=["customer_id"])["customer_id"]
    ids = [str(i) for i in np.random.default_rng(7).permutation(all_ids.astype(str).to_numpy())]
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "python": platform.python_version(), "customers_served": len(ids),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    result["load_before"] = os.getloadavg()
    port = args.port or free_port()
    process = start_server(workdir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        result["info"] = {k: v for k, v in httpx.get(f"{base}/v1/info", timeout=10).json().items()
                          if k in ("explanation_engines", "models", "customers_in_feature_table")}
        if "seq" not in args.skip:
            result["a_sequential"] = sequential(base, ids, args.sequential)
            print(json.dumps(result["a_sequential"], indent=1), file=sys.stderr, flush=True)
        if "a" not in args.skip:
            result["load_before_a"] = os.getloadavg()
            result["a"] = asyncio.run(open_loop(base, ids, args.rate, args.duration, args.timeout))
            result["a"]["target_p99_ms"] = 25
            print(json.dumps(result["a"], indent=1), file=sys.stderr, flush=True)
        if "b" not in args.skip:
            result["load_before_b"] = os.getloadavg()
            result["b_http"] = http_batches(base, ids[: args.batch], args.batch_repeat)
    finally:
        stop_server(process)
    if "b" not in args.skip:
        result["b_in_process"] = limit = in_process(workdir, ids[: args.batch], args.batch_repeat)
        for key, ref in (("no_explain", "limit_no_explain_rows_per_s"), ("explain", "limit_explain_rows_per_s")):
            http = result["b_http"][key]
            http["share_of_limit_best"] = http["rows_per_s_best"] / limit[ref]
            http["share_of_limit_median"] = http["rows_per_s_median"] / limit[ref]
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1, default=str)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""The product's commands at scale, run as a user would (issue 14): wall time and peak memory of each step.

Usage:
    python bench/scale.py [--customers 1000000] [--transactions-per-customer 10] [--steps features,train,...]
                          [--work bench/work] [--out bench/results/scale_1000000.json]
    python bench/scale.py --growth 250000,500000,1000000,2000000   # the growth table and chart, one run per size
    python bench/scale.py --growth 1000000,2000000 --steps features --repeat 5   # each size 5 times, medians shown
    python bench/scale.py --chart bench/results/scale_growth.json     # redraw the chart and tables from a results file
    python bench/scale.py --customers 250000 --steps features,train,score,refresh_first,score_spark,refresh_spark

Data: `bench/make_data.py` (customers and transactions only, all contract columns; three years, 2023-2025), made on
first use under the work folder. Each step is the CLI command a user types (`segments features`, `train all`,
`score`, `build`, `refresh` twice two weeks apart, `report`), run from the step's own work folder (its MLflow
SQLite store, BentoML store and SQLite membership store; emptied first when every step runs) under `/usr/bin/time`, so peak memory is the command's own
maximum resident set size. A step that fails is recorded with the end of its error output; the next steps still run
(e.g. `train all` fails when one kind fails, and the others are registered).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_data import make

BIN = Path(sys.executable).parent
AS_OF, LATER = "2025-10-01", "2025-10-15"  # the data ends 2025-12-31: 90-day outcome windows fit before it
BUDGETS = {"features": (15, 4), "train": (300, 4), "score": (60, 4), "refresh_first": (90, 4),
           "refresh_later": (60, 4), "report": (60, 4)}  # seconds, peak GB at 1M customers (issue 14)
STEPS = {
    "features": ["features", "--data", "{data}", "--as-of", AS_OF, "--out", "features.parquet"],
    "train": ["train", "all", "--data", "{data}", "--as-of", AS_OF],
    "score": ["score", "--data", "{data}", "--as-of", AS_OF, "--out", "scores.parquet"],
    "build": ["build", "--data", "{data}", "--as-of", AS_OF],
    "refresh_first": ["refresh", "--data", "{data}", "--as-of", AS_OF],
    "refresh_later": ["refresh", "--data", "{data}", "--as-of", LATER],
    "report": ["report", "--out", "reports"],
}

# The batch path on Spark in local mode on this machine (opt-in: --steps ...,score_spark,refresh_spark): after `train`,
# the same scoring and a first refresh into a store of its own, for comparison with `score` and `refresh_first`.
SPARK = ["--engine", "spark", "--spark-master", "local[2]"]
SPARK_STEPS = {
    "score_spark": ["score", "--data", "{data}", "--as-of", AS_OF, "--out", "scores_spark.parquet", *SPARK],
    "refresh_spark": ["refresh", "--data", "{data}", "--as-of", AS_OF, "--db", "sqlite:///segments_spark.db", *SPARK],
}


def dataset(work: Path, customers: int, per_customer: int) -> Path:
    data = work / f"data_{customers}x{per_customer}"
    if not (data / "customers.parquet").exists():
        print(f"making {customers:,} customers, {customers * per_customer:,} transactions in {data}", flush=True)
        make(data, customers * per_customer, customers)
    return data


def run_step(name: str, data: Path, folder: Path, timeout_s: float) -> dict:
    command = [str(BIN / "segments"), *(part.format(data=data) for part in {**STEPS, **SPARK_STEPS}[name])]
    started = time.perf_counter()
    try:
        proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *command], check=False, cwd=folder,
                              capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"step": name, "ok": False, "seconds": round(time.perf_counter() - started, 1),
                "error": f"stopped after {timeout_s:.0f} s"}
    timing = [line for line in proc.stderr.splitlines() if line.startswith("TIME ")]
    wall, peak_kb = timing[-1].split()[1:] if timing else ("nan", "0")
    result = {"step": name, "ok": proc.returncode == 0, "seconds": float(wall),
              "peak_gb": round(int(peak_kb) / 1024 ** 2, 2), "command": "segments " + " ".join(command[1:])}
    if proc.returncode != 0:
        result["error"] = "\n".join(proc.stderr.splitlines()[-12:])
    return result


def run_size(customers: int, per_customer: int, steps: list[str], work: Path, timeout_s: float) -> dict:
    data = dataset(work, customers, per_customer)
    folder = work / f"run_{customers}"
    if set(steps) == set(STEPS):  # a whole run starts from nothing: no models, no membership store
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    if "refresh_first" in steps:  # a first refresh starts from an empty membership store
        (folder / "segments.db").unlink(missing_ok=True)
    results = []
    for name in steps:
        print(f"[{customers:,}] {name} ...", flush=True)
        result = run_step(name, data, folder, timeout_s)
        results.append(result)
        print(f"[{customers:,}] {name}: {'ok' if result['ok'] else 'FAILED'} {result.get('seconds')} s, "
              f"{result.get('peak_gb')} GB" + (f"\n{result['error']}" if not result["ok"] else ""), flush=True)
    return {"customers": customers, "transactions": customers * per_customer, "steps": results}


def by_step(run: dict) -> dict[str, dict]:
    """A size's results by step name."""
    return {r["step"]: r for r in run["steps"]}


def table(runs: list[dict]) -> str:
    names = [*STEPS, *(s for s in SPARK_STEPS if any(r["step"] == s for run in runs for r in run["steps"]))]
    lines = ["| customers | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for run in runs:
        steps = by_step(run)
        cells = [f"{r['seconds']:.0f} s / {r['peak_gb']:.1f} GB" if (r := steps.get(s)) and r["ok"]
                 else (f"failed ({r['seconds']:.0f} s)" if r else "") for s in names]
        lines.append(f"| {run['customers']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def doubling(runs: list[dict]) -> str:
    """Time and peak memory ratio per doubling of customers, per step (the issue's budget: time <= 2.2x)."""
    runs = sorted(runs, key=lambda run: run["customers"])
    steps = [by_step(run) for run in runs]
    names = [s for s in [*STEPS, *SPARK_STEPS] if any(s in found for found in steps)]
    lines = ["| step | " + " | ".join(f"{a['customers']:,} -> {b['customers']:,}" for a, b in pairwise(runs))
             + " |", "|---|" + "---:|" * (len(runs) - 1)]
    for name in names:
        cells = []
        for a, b in pairwise(steps):
            ra, rb = a.get(name), b.get(name)
            ok = ra and rb and ra["ok"] and rb["ok"]
            cells.append(f"{rb['seconds'] / ra['seconds']:.2f}x / {rb['peak_gb'] / ra['peak_gb']:.2f}x" if ok else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(runs: list[dict], path: Path) -> Path:
    """Wall time and peak memory per step against customers, log-log, with the 2x-per-doubling line."""
    from matplotlib.figure import Figure

    runs = sorted(runs, key=lambda run: run["customers"])
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    time_ax, memory_ax = figure.subplots(1, 2)
    for name in [*STEPS, *SPARK_STEPS]:
        points = [(run["customers"], r) for run in runs for r in run["steps"] if r["step"] == name and r["ok"]]
        if points:
            x = [customers for customers, _ in points]
            time_ax.plot(x, [r["seconds"] for _, r in points], marker="o", label=name)
            memory_ax.plot(x, [r["peak_gb"] for _, r in points], marker="o", label=name)
    sizes = [run["customers"] for run in runs]
    start = median([r["seconds"] for r in runs[0]["steps"] if r["ok"]] or [1])
    (reference,) = time_ax.plot(sizes, [start * c / sizes[0] for c in sizes], color="grey", linestyle=":",
                                label="2x per doubling")
    time_ax.legend(handles=[reference], fontsize=8, loc="upper left")
    time_ax.set(xscale="log", yscale="log", xlabel="customers (10 transactions each)", ylabel="wall time (s)",
                title="Time per step")
    memory_ax.axhline(4, color="grey", linestyle="--", label="4 GB budget")
    memory_ax.set(xscale="log", xlabel="customers (10 transactions each)", ylabel="peak RSS (GB)", ylim=(0, None),
                  title="Peak memory per step")
    for ax in (time_ax, memory_ax):
        ax.set_xticks(sizes, [f"{c / 1e6:g}M" for c in sizes])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    memory_ax.legend(fontsize=8, loc="upper left")
    figure.savefig(path)
    return path


def medians(passes: list[list[dict]]) -> list[dict]:
    """One run per size from several passes over the sizes: each step's median time and peak memory over the passes
    where it succeeded (their times in `all_seconds`, the others counted in `failed_passes`), failed only if it failed
    in every pass."""
    runs = []
    for size_runs in zip(*passes, strict=True):
        steps = []
        for name in [r["step"] for r in size_runs[0]["steps"]]:
            tries = [r for run in size_runs for r in run["steps"] if r["step"] == name]
            ok = [r for r in tries if r["ok"]] or tries
            steps.append({**ok[0], "seconds": median(r["seconds"] for r in ok),
                          "peak_gb": median(r.get("peak_gb", 0) for r in ok),
                          "all_seconds": [r["seconds"] for r in ok], "failed_passes": len(tries) - len(ok)})
        runs.append({**size_runs[0], "steps": steps})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--growth", default="", help="comma-separated sizes: one run per size (the growth table)")
    parser.add_argument("--transactions-per-customer", type=int, default=10)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per step")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeat", type=int, default=1,
                        help="passes over the sizes (one after the other); the tables show each step's median")
    parser.add_argument("--chart", type=Path, help="only draw the growth chart and table from this results file")
    args = parser.parse_args()
    if args.chart:
        runs = json.loads(args.chart.read_text())["runs"]
        print(table(runs), doubling(runs), f"chart: {chart(runs, args.chart.with_suffix('.svg'))}", sep="\n\n")
        return
    sizes = [int(s) for s in args.growth.split(",") if s] or [args.customers]
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS) - set(SPARK_STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; known: {', '.join([*STEPS, *SPARK_STEPS])}")
    passes = [[run_size(n, args.transactions_per_customer, steps, args.work.resolve(), args.timeout) for n in sizes]
              for _ in range(max(1, args.repeat))]
    runs = medians(passes) if len(passes) > 1 else passes[0]
    out = args.out or HERE / "results" / f"scale_{'growth' if len(sizes) > 1 else sizes[0]}.json"
    out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
                               "cpus": os.cpu_count(), "python": platform.python_version(),
                               "budgets_at_1m": BUDGETS, "runs": runs,
                               **({"passes": passes} if len(passes) > 1 else {})}, indent=1))
    print(table(runs))
    if len(runs) > 1:
        print(doubling(runs), f"chart: {chart(runs, out.with_suffix('.svg'))}", sep="\n\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()

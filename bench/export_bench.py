"""Exports (issue 15): `segments export` of a large segment, time and peak memory per format and size.

Usage:
    python bench/export_bench.py [--members 250000,1000000] [--workdir /tmp/export-bench]

For each size: a SQLite store whose segment `loyal` has that many members, each with evaluated values (written
once per size, directly through the store's write path), then `segments export --segment loyal --fields
churn_probability,churn_band` to .csv and .parquet, each in its own process, timed from the outside, with the peak
RSS of that process (psutil, sampled every 50 ms). Memory that stays flat as the members grow is the point.
Results: printed and written to bench/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
SEGMENTS = Path(sys.executable).with_name("segments")


def fill(url: str, members: int, chunk: int = 100_000) -> None:
    from serving.segments.store import SegmentStore

    store = SegmentStore(url)
    at = datetime(2026, 7, 1)
    for start in range(0, members, chunk):
        ids = [f"C{i:08d}" for i in range(start, min(members, start + chunk))]
        changes = [{"customer_id": c, "segment": "loyal", "change": "entered", "at": at, "cause": [],
                    "source": "refresh"} for c in ids]
        states = {c: {"churn_probability": (i % 1000) / 1000, "churn_band": "high"} for i, c in enumerate(ids)}
        with store.transaction() as conn:
            store.write.record(conn, changes, states, at)
    store.close()


def run_export(url: str, out: Path) -> dict:
    started = time.monotonic()
    process = subprocess.Popen([str(SEGMENTS), "export", "--segment", "loyal", "--out", str(out), "--db", url,
                                "--fields", "churn_probability,churn_band"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"segments export failed ({process.returncode})")
    position = json.loads(out.with_name(out.name + ".export.json").read_text())
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 2**20), "rows": position["rows"],
            "file_mb": round(out.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="250000,1000000")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/export-bench"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "export.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for members in (int(n) for n in args.members.split(",")):
        db = args.workdir / f"members_{members}.db"
        url = f"sqlite:///{db}"
        if not db.exists():
            started = time.monotonic()
            fill(url, members)
            print(f"[setup] {members:,} members written in {time.monotonic() - started:.0f} s", file=sys.stderr)
        for suffix in (".csv", ".parquet"):
            row = {"members": members, "format": suffix[1:],
                   **run_export(url, args.workdir / f"loyal_{members}{suffix}")}
            print(json.dumps(row), file=sys.stderr, flush=True)
            results.append(row)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cores": psutil.cpu_count(), "command": " ".join(sys.argv), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

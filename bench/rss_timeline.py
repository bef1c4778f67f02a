"""Where a command's memory peaks: run it, print each output line with the elapsed time and its resident memory
(now and peak so far), then the peak and a timeline of samples.

Usage (from a bench run folder): python bench/rss_timeline.py segments refresh --data ... --as-of 2025-10-01
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

SAMPLE_S = 0.25


def resident_gb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1e6
    except (OSError, StopIteration):
        return None


def main() -> None:
    start = time.time()
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    samples: list[tuple[float, float]] = []

    def poll() -> None:
        while proc.poll() is None and (rss := resident_gb(proc.pid)) is not None:
            samples.append((time.time() - start, rss))
            time.sleep(SAMPLE_S)

    threading.Thread(target=poll, daemon=True).start()
    for line in proc.stdout:
        now = samples[-1][1] if samples else 0.0
        peak = max((rss for _, rss in samples), default=0.0)
        print(f"{time.time() - start:7.1f} s  rss {now:.2f} GB  peak {peak:.2f} GB | {line.rstrip()}", flush=True)
    proc.wait()
    if samples:
        at, peak = max(samples, key=lambda sample: sample[1])
        print(f"peak {peak:.2f} GB at {at:.1f} s; every 2 s: " + "  ".join(
            f"{t:.0f}:{rss:.2f}" for t, rss in samples[:: int(2 / SAMPLE_S)]))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()

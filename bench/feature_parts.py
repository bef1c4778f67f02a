"""The feature query run in ranges of customers: wall time of each range for several range sizes (issue 14).

Usage: python bench/feature_parts.py DATA_FOLDER [--as-of 2025-10-01] [--per-part 2000000,1000000,500000]

Validates DATA_FOLDER once (as `segments features` does), then runs the feature query over every customer in ranges
of at most each `--per-part` customers (`features.build.customer_parts`, as `FeatureQuery.run_batches` does with
its memory-derived size), reading the result as Arrow batches without converting it. Shows what a range costs beyond
its own customers: each range reads the whole transactions table and filters it to its ids.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from features.build import FeatureQuery, customer_parts, customers_per_part
from features.pipeline import load_validated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--as-of", default="2025-10-01")
    parser.add_argument("--per-part", default="", help="comma-separated range sizes; default: the memory-derived one")
    args = parser.parse_args()
    started = time.perf_counter()
    validation = load_validated(args.data)
    print(f"validated in {time.perf_counter() - started:.1f} s", flush=True)
    con, query, as_of = validation.con, FeatureQuery(validation.columns), datetime.fromisoformat(args.as_of)
    for per_part in [int(n) for n in args.per_part.split(",") if n] or [customers_per_part(con)]:
        seconds, rows = [], 0
        for part in customer_parts(con, list(query.columns), per_part):
            started = time.perf_counter()
            with part as restricted:
                rows += sum(b.num_rows for b in query._relation(restricted, as_of).to_arrow_reader(batch_size=200_000))
            seconds.append(time.perf_counter() - started)
        print(f"at most {per_part:,} customers per range: {len(seconds)} range(s), "
              f"{' + '.join(f'{s:.1f}' for s in seconds)} = {sum(seconds):.1f} s for {rows:,} customers", flush=True)


if __name__ == "__main__":
    main()

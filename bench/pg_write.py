"""How fast rows reach PostgreSQL from Python: COPY row by row (what the store does from COPY_MIN_ROWS rows), COPY of
one CSV block, and INSERT ... SELECT FROM unnest(arrays). Writes a throwaway table `bench_pg_write` in the database.

Usage: python bench/pg_write.py --url postgresql://USER:PASSWORD@127.0.0.1:55432/DB [--rows 1000000]
(`.ci/run postgres` starts a throwaway server; its role may create databases.)
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from datetime import datetime, timedelta

import psycopg

COLUMNS = "customer_id, segment, at, cause"


def rows_of(n: int) -> list[tuple]:
    start = datetime(2025, 10, 1)
    return [(f"C{i:07d}", "loyal" if i % 2 else "at_risk", start + timedelta(seconds=i),
             f'{{"condition": "orders_count_90d >= 2", "new": {i}}}') for i in range(n)]


def copy_rows(con: psycopg.Connection, rows: list[tuple]) -> None:
    with con.cursor().copy(f"COPY bench_pg_write ({COLUMNS}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def copy_csv(con: psycopg.Connection, rows: list[tuple]) -> None:
    block = io.StringIO()
    csv.writer(block).writerows(rows)
    with con.cursor().copy(f"COPY bench_pg_write ({COLUMNS}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(block.getvalue())


def insert_unnest(con: psycopg.Connection, rows: list[tuple], batch: int = 50_000) -> None:
    columns = [list(values) for values in zip(*rows, strict=True)]
    for start in range(0, len(rows), batch):
        con.execute(f"INSERT INTO bench_pg_write ({COLUMNS}) "
                    "SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamp[], %s::text[])",
                    [column[start:start + batch] for column in columns])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows = rows_of(args.rows)
    with psycopg.connect(args.url) as con:
        con.execute("DROP TABLE IF EXISTS bench_pg_write")
        con.execute("CREATE TABLE bench_pg_write (customer_id text, segment text, at timestamp, cause text)")
        con.commit()
        for _ in range(args.repeat):
            for name, write in {"COPY, write_row": copy_rows, "COPY, one CSV block": copy_csv,
                                "INSERT ... unnest": insert_unnest}.items():
                started = time.perf_counter()
                write(con, rows)
                con.commit()
                print(f"{name}: {args.rows:,} rows in {time.perf_counter() - started:.2f} s", flush=True)
                con.execute("TRUNCATE bench_pg_write")
                con.commit()
        con.execute("DROP TABLE bench_pg_write")


if __name__ == "__main__":
    main()

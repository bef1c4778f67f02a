"""Benchmark data: N transactions over C customers, all contract columns, written as clean Parquet by DuckDB.

Not the behavioural generator (that one models personas; here only volume and realistic cardinalities matter).
Usage: python bench/make_data.py --out bench/data/10m --transactions 10000000 --customers 1000000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb

CATEGORIES = "['grocery','apparel','home','toys','books','beauty','sports','electronics']"
CHANNELS = "['store','online','app']"


def make(out: Path, transactions: int, customers: int, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SELECT setseed({seed / 1000})")
    con.execute(f"""
        COPY (SELECT
            'T' || i AS transaction_id,
            'C' || lpad((hash(i, {seed}) % {customers})::VARCHAR, 7, '0') AS customer_id,
            TIMESTAMP '2023-01-01' + to_seconds((hash(i, 7) % (3 * 365 * 86400))::BIGINT) AS timestamp,
            CASE WHEN hash(i, 5) % 20 = 0 THEN -1 ELSE 1 END * ((hash(i, 3) % 20000) / 100.0 + 1) AS amount,
            hash(i, 5) % 20 = 0 AS is_return,
            (hash(i, 19) % 4 + 1)::DOUBLE AS quantity,
            'P' || (hash(i, 23) % 5000) AS product_id,
            {CATEGORIES}[(hash(i, 11) % 8 + 1)::BIGINT] AS category,
            {CHANNELS}[(hash(i, 13) % 3 + 1)::BIGINT] AS channel,
            (hash(i, 17) % 5)::DOUBLE AS discount_amount,
            (hash(i, 29) % 200)::DOUBLE AS points_earned,
            (hash(i, 31) % 50)::DOUBLE AS points_redeemed
        FROM range({transactions}) r(i)) TO '{out}/transactions.parquet' (FORMAT parquet)""")
    con.execute(f"""
        COPY (SELECT 'C' || lpad(i::VARCHAR, 7, '0') AS customer_id,
                     TIMESTAMP '2022-06-01' + to_days((hash(i) % 200)::INTEGER) AS signup_date,
                     (1950 + hash(i, 2) % 55)::BIGINT AS birth_year,
                     ['north','south','east','west'][(hash(i, 3) % 4 + 1)::BIGINT] AS region,
                     hash(i, 4) % 3 = 0 AS loyalty_member,
                     CASE WHEN hash(i, 4) % 3 = 0 THEN TIMESTAMP '2022-07-01' END AS loyalty_join_date,
                     CASE WHEN hash(i, 4) % 3 = 0 THEN 'silver' END AS loyalty_tier,
                     (hash(i, 6) % 5000)::DOUBLE AS points_balance,
                     hash(i, 7) % 2 = 0 AS email_opt_in
              FROM range({customers}) r(i)) TO '{out}/customers.parquet' (FORMAT parquet)""")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    make(args.out, args.transactions, args.customers)

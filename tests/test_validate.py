"""Validation against the data contract: every reason code, what survives, types, and when the run stops.

Fixtures are tiny CSV files written as text (so the raw values are exactly what the test says), plus Parquet and
DuckDB inputs for typed data. RUN_TIME is the run's wall clock for future_timestamp.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import DataContractError
from features.io import load_raw
from features.validate import REASONS, BadShareError, ValidationResult, validate

RUN_TIME = datetime(2025, 1, 1)
TX_HEADER = [
    "transaction_id",
    "customer_id",
    "timestamp",
    "amount",
    "quantity",
    "discount_amount",
    "is_return",
]
GOOD_TX = [
    ["T1", "C1", "2024-01-01", "10.50", "1", "", ""],
    ["T2", "C2", "2024-01-02 10:00:00", "20", "2", "0.5", "no"],
    ["T3", "C1", "2024-01-03T11:00:00", "5", "1", "", "false"],
]
CUSTOMERS_HEADER = ["customer_id", "signup_date", "birth_year", "loyalty_member", "region"]
GOOD_CUSTOMERS = [
    ["C1", "2023-01-01", "1980", "yes", "north"],
    ["C2", "2023-02-01", "", "no", "south"],
    ["C3", "", "1990.0", "", ""],
]
EVENTS_HEADER = ["event_id", "customer_id", "timestamp", "event_type", "channel"]
GOOD_EVENTS = [
    ["E1", "C1", "2024-01-01", "email_open", "email"],
    ["E2", "C2", "2024-01-02", "app_open", "app"],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Write rows as plain CSV text (no quoting needed for these fixtures)."""
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n", encoding="utf-8")
    return path


def run(
    folder: Path,
    *,
    transactions=None,
    customers=None,
    events=None,
    run_time=RUN_TIME,
    max_bad_share=1.0,
    tx_header=TX_HEADER,
) -> ValidationResult:
    """Write the given tables as CSV into ``folder`` and validate them."""
    write_csv(folder / "transactions.csv", tx_header, GOOD_TX if transactions is None else transactions)
    if customers is not None:
        write_csv(folder / "customers.csv", CUSTOMERS_HEADER, customers)
    if events is not None:
        write_csv(folder / "events.csv", EVENTS_HEADER, events)
    return validate(load_raw(folder), run_time=run_time, max_bad_share=max_bad_share)


def quarantined(result: ValidationResult, table: str) -> list[tuple]:
    """(row_number, reason, column, value) of the table's quarantine rows, in file order."""
    rows = result.quarantine[result.quarantine["table"] == table]
    return list(rows[["row_number", "reason", "column", "value"]].itertuples(index=False, name=None))


def clean_ids(result: ValidationResult, table: str, id_column: str) -> list[str]:
    return sorted(r[0] for r in result.con.execute(f"SELECT {id_column} FROM {table}").fetchall())


def with_bad_tx(**values: str) -> list[list[str]]:
    """GOOD_TX with a fourth row (row_number 4) that differs from a good row in the given columns."""
    bad = dict(zip(TX_HEADER, ["T9", "C1", "2024-02-01", "7", "1", "", ""]))
    bad.update(values)
    return [*GOOD_TX, [bad[c] for c in TX_HEADER]]


@pytest.mark.parametrize(
    ("values", "reason", "column", "value"),
    [
        ({"transaction_id": ""}, "missing_key", "transaction_id", ""),
        ({"customer_id": "  "}, "missing_key", "customer_id", "  "),
        ({"timestamp": "yesterday"}, "unparseable_timestamp", "timestamp", "yesterday"),
        ({"timestamp": "2024-02-30"}, "unparseable_timestamp", "timestamp", "2024-02-30"),
        ({"timestamp": ""}, "unparseable_timestamp", "timestamp", ""),
        ({"amount": "12;50"}, "non_numeric_amount", "amount", "12;50"),
        ({"amount": "NaN"}, "non_numeric_amount", "amount", "NaN"),
        ({"amount": "inf"}, "non_numeric_amount", "amount", "inf"),
        ({"amount": ""}, "non_numeric_amount", "amount", ""),
        ({"transaction_id": "T2"}, "duplicate_id", "transaction_id", "T2"),
        ({"timestamp": "2025-01-01T00:00:01"}, "future_timestamp", "timestamp", "2025-01-01T00:00:01"),
        ({"quantity": "-1"}, "negative_quantity", "quantity", "-1"),
        ({"quantity": "x"}, "wrong_type", "quantity", "x"),
        ({"discount_amount": "?"}, "wrong_type", "discount_amount", "?"),
        ({"quantity": "1e300"}, "wrong_type", "quantity", "1e300"),  # beyond MAX_ABS_AMOUNT: no exact sum holds it
        ({"discount_amount": "-2e9"}, "wrong_type", "discount_amount", "-2e9"),
        ({"is_return": "maybe"}, "wrong_type", "is_return", "maybe"),
    ],
)
def test_each_transaction_rule_quarantines_exactly_the_bad_row(tmp_path, values, reason, column, value):
    result = run(tmp_path, transactions=with_bad_tx(**values))
    assert quarantined(result, "transactions") == [(4, reason, column, value)]
    assert result.rows_in["transactions"] == 4
    assert result.rows_clean["transactions"] == 3
    assert set(clean_ids(result, "transactions", "transaction_id")) == {"T1", "T2", "T3"}
    assert reason in REASONS
    counts = result.counts
    assert counts.to_dict("records") == [{"table": "transactions", "reason": reason, "rows": 1}]


def test_a_quarantined_customer_row_does_not_take_its_transactions_with_it(tmp_path):
    customers = [["C1", "2023-01-01", "abc", "yes", "north"], *GOOD_CUSTOMERS[1:]]  # C1: bad birth_year
    result = run(tmp_path, customers=customers)
    assert quarantined(result, "customers") == [(1, "wrong_type", "birth_year", "abc")]
    assert quarantined(result, "transactions") == []
    assert result.rows_clean == {"customers": 2, "transactions": 3}  # both of C1's transactions are kept


def test_unknown_customer_only_when_customers_are_given(tmp_path):
    rows = with_bad_tx(customer_id="C404")
    without = run(tmp_path / "a", transactions=rows) if (tmp_path / "a").mkdir() is None else None
    assert quarantined(without, "transactions") == []
    assert without.rows_clean["transactions"] == 4

    (tmp_path / "b").mkdir()
    with_customers = run(tmp_path / "b", transactions=rows, customers=GOOD_CUSTOMERS)
    assert quarantined(with_customers, "transactions") == [(4, "unknown_customer", "customer_id", "C404")]
    assert with_customers.rows_clean == {"customers": 3, "transactions": 3}


@pytest.mark.parametrize(
    ("values", "reason", "column", "value"),
    [
        (["", "2023-01-01", "1980", "yes", "x"], "missing_key", "customer_id", ""),
        (["C1", "2023-01-01", "1970", "yes", "dup"], "duplicate_id", "customer_id", "C1"),
        (["C9", "soon", "1980", "yes", "x"], "wrong_type", "signup_date", "soon"),
        (["C9", "2023-01-01", "abc", "yes", "x"], "wrong_type", "birth_year", "abc"),
        (["C9", "2023-01-01", "1980.5", "yes", "x"], "wrong_type", "birth_year", "1980.5"),
        (["C9", "2023-01-01", "1980", "maybe", "x"], "wrong_type", "loyalty_member", "maybe"),
    ],
)
def test_each_customer_rule_quarantines_exactly_the_bad_row(tmp_path, values, reason, column, value):
    result = run(tmp_path, customers=[*GOOD_CUSTOMERS, values])
    assert quarantined(result, "customers") == [(4, reason, column, value)]
    assert clean_ids(result, "customers", "customer_id") == ["C1", "C2", "C3"]
    assert quarantined(result, "transactions") == []


@pytest.mark.parametrize(
    ("values", "reason", "column", "value"),
    [
        (["", "C1", "2024-01-01", "email_open", "email"], "missing_key", "event_id", ""),
        (["E3", "C1", "2024-01-01", "", "email"], "missing_key", "event_type", ""),
        (["E1", "C1", "2024-01-05", "email_open", "email"], "duplicate_id", "event_id", "E1"),
        (
            ["E3", "C1", "01/05/2024", "email_open", "email"],
            "unparseable_timestamp",
            "timestamp",
            "01/05/2024",
        ),
        (["E3", "C1", "2026-01-01", "email_open", "email"], "future_timestamp", "timestamp", "2026-01-01"),
        (["E3", "C404", "2024-01-01", "email_open", "email"], "unknown_customer", "customer_id", "C404"),
    ],
)
def test_each_event_rule_quarantines_exactly_the_bad_row(tmp_path, values, reason, column, value):
    result = run(tmp_path, customers=GOOD_CUSTOMERS, events=[*GOOD_EVENTS, values])
    assert quarantined(result, "events") == [(3, reason, column, value)]
    assert clean_ids(result, "events", "event_id") == ["E1", "E2"]


def test_unknown_event_types_are_kept_and_counted(tmp_path):
    events = [
        *GOOD_EVENTS,
        ["E3", "C1", "2024-01-03", "hologram_view", ""],
        ["E4", "C2", "2024-01-03", "hologram_view", ""],
    ]
    result = run(tmp_path, events=events)
    assert result.rows_clean["events"] == 4
    assert result.unknown_event_types == {"hologram_view": 2}


def test_duplicate_keeps_the_first_occurrence(tmp_path):
    rows = [
        *GOOD_TX,
        ["T1", "C2", "2024-03-01", "99", "1", "", ""],
        ["T1", "C2", "2024-03-02", "98", "1", "", ""],
    ]
    result = run(tmp_path, transactions=rows)
    assert quarantined(result, "transactions") == [
        (4, "duplicate_id", "transaction_id", "T1"),
        (5, "duplicate_id", "transaction_id", "T1"),
    ]
    kept = result.con.execute(
        "SELECT customer_id, amount FROM transactions WHERE transaction_id = 'T1'"
    ).fetchall()
    assert kept == [("C1", 10.5)]


def test_bad_first_occurrence_does_not_take_the_good_second_with_it(tmp_path):
    rows = [
        ["T1", "C1", "not a date", "10", "1", "", ""],
        ["T1", "C1", "2024-01-05", "11", "1", "", ""],
        ["T2", "C1", "2024-01-06", "12", "1", "", ""],
    ]
    result = run(tmp_path, transactions=rows)
    assert quarantined(result, "transactions") == [(1, "unparseable_timestamp", "timestamp", "not a date")]
    kept = result.con.execute("SELECT transaction_id, amount FROM transactions ORDER BY 1").fetchall()
    assert kept == [("T1", 11.0), ("T2", 12.0)]


def test_first_broken_rule_wins(tmp_path):
    # Missing customer, bad timestamp and bad amount at once: missing_key comes first.
    result = run(tmp_path, transactions=with_bad_tx(customer_id="", timestamp="x", amount="y"))
    assert quarantined(result, "transactions") == [(4, "missing_key", "customer_id", "")]


def test_future_timestamp_is_relative_to_run_time(tmp_path):
    rows = [
        ["T1", "C1", "2024-06-01 12:00:00", "1", "1", "", ""],  # exactly the run time: fine
        ["T2", "C1", "2024-06-01 12:00:01", "1", "1", "", ""],  # one second later
        ["T3", "C1", "2024-06-01T13:30:00+02:00", "1", "1", "", ""],
    ]  # 11:30 UTC: fine
    aware = datetime(2024, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))  # 12:00 UTC
    result = run(tmp_path, transactions=rows, run_time=aware)
    assert result.run_time == datetime(2024, 6, 1, 12, 0)
    assert quarantined(result, "transactions") == [
        (2, "future_timestamp", "timestamp", "2024-06-01 12:00:01")
    ]


def test_run_time_defaults_to_now(tmp_path):
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    result = run(tmp_path, transactions=with_bad_tx(timestamp=tomorrow), run_time=None)
    assert quarantined(result, "transactions") == [(4, "future_timestamp", "timestamp", tomorrow)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01", datetime(2024, 3, 1)),
        ("2024-3-1", datetime(2024, 3, 1)),
        ("2024-03-01 10:15:00", datetime(2024, 3, 1, 10, 15)),
        ("2024-03-01T10:15:00", datetime(2024, 3, 1, 10, 15)),
        ("2024-03-01T10:15", datetime(2024, 3, 1, 10, 15)),
        ("2024-03-01T10:15:00Z", datetime(2024, 3, 1, 10, 15)),
        ("2024-03-01T10:15:00+02:00", datetime(2024, 3, 1, 8, 15)),
        ("2024-03-01T10:15+02:00", datetime(2024, 3, 1, 8, 15)),
        ("2024-03-01 10:15:00.250-05:00", datetime(2024, 3, 1, 15, 15, 0, 250000)),
        ("2024-03-01T00:30:00+02:00", datetime(2024, 2, 29, 22, 30)),
        (" 2024-03-01 ", datetime(2024, 3, 1)),
    ],
)
def test_timestamp_formats_become_naive_utc(tmp_path, text, expected):
    result = run(tmp_path, transactions=[["T1", "C1", text, "1", "1", "", ""]])
    assert quarantined(result, "transactions") == []
    assert result.con.execute("SELECT timestamp, typeof(timestamp) FROM transactions").fetchall() == [
        (expected, "TIMESTAMP")
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("Yes", True),
        ("no", False),
        ("t", True),
        ("F", False),
        ("", False),
    ],
)
def test_booleans(tmp_path, text, expected):
    result = run(tmp_path, transactions=[["T1", "C1", "2024-01-01", "1", "1", "", text]])
    assert result.con.execute("SELECT is_return FROM transactions").fetchall() == [(expected,)]


def test_customer_types(tmp_path):
    result = run(tmp_path, customers=GOOD_CUSTOMERS)
    rows = result.con.execute(
        "SELECT customer_id, signup_date, birth_year, loyalty_member, region FROM customers ORDER BY 1"
    ).fetchall()
    # Empty strings in optional columns are NULL, not errors; '1990.0' is an integral birth year.
    assert rows == [
        ("C1", datetime(2023, 1, 1), 1980, True, "north"),
        ("C2", datetime(2023, 2, 1), None, False, "south"),
        ("C3", None, 1990, None, None),
    ]
    types = dict(result.con.execute("SELECT column_name, column_type FROM (DESCRIBE customers)").fetchall())
    assert types == {
        "customer_id": "VARCHAR",
        "signup_date": "TIMESTAMP",
        "birth_year": "BIGINT",
        "loyalty_member": "BOOLEAN",
        "region": "VARCHAR",
    }


def test_returns_are_flagged_or_negative_amounts(tmp_path):
    rows = [
        ["T1", "C1", "2024-01-01", "-10", "-1", "", ""],  # negative amount: a return, negative quantity ok
        ["T2", "C1", "2024-01-01", "10", "-1", "", "yes"],  # flagged
        ["T3", "C1", "2024-01-01", "10", "1", "", "no"],
        ["T4", "C1", "2024-01-01", "10", "1", "", ""],
    ]
    result = run(tmp_path, transactions=rows)
    assert quarantined(result, "transactions") == []
    got = result.con.execute("SELECT transaction_id, is_return FROM transactions ORDER BY 1").fetchall()
    assert got == [("T1", True), ("T2", True), ("T3", False), ("T4", False)]


def test_is_return_is_always_added_and_absent_optional_columns_stay_absent(tmp_path):
    header = ["transaction_id", "customer_id", "timestamp", "amount", "store_note"]
    result = run(tmp_path, transactions=[["T1", "C1", "2024-01-01", "-3", "keep me"]], tx_header=header)
    assert result.columns["transactions"] == [
        "transaction_id",
        "customer_id",
        "timestamp",
        "amount",
        "store_note",
        "is_return",
    ]
    types = dict(
        result.con.execute("SELECT column_name, column_type FROM (DESCRIBE transactions)").fetchall()
    )
    assert (
        types["is_return"] == "BOOLEAN" and types["store_note"] == "VARCHAR" and types["amount"] == "DOUBLE"
    )
    assert result.con.execute("SELECT store_note, is_return FROM transactions").fetchall() == [
        ("keep me", True)
    ]


def test_quarantine_record_is_the_raw_row_and_files_are_written(tmp_path):
    result = run(
        tmp_path / "in" if (tmp_path / "in").mkdir() is None else None,
        transactions=with_bad_tx(amount="12;5x"),
    )
    record = json.loads(result.quarantine["record"].iloc[0])
    assert record == {
        "transaction_id": "T9",
        "customer_id": "C1",
        "timestamp": "2024-02-01",
        "amount": "12;5x",
        "quantity": "1",
        "discount_amount": None,
        "is_return": None,
    }
    assert result.quarantine["source"].iloc[0] == str(tmp_path / "in" / "transactions.csv")
    assert list(result.quarantine.columns) == [
        "table",
        "source",
        "row_number",
        "reason",
        "column",
        "value",
        "record",
    ]

    path = result.write_quarantine(tmp_path / "out")
    assert path == tmp_path / "out" / "quarantine.parquet"
    from_parquet = pd.read_parquet(path)
    from_csv = pd.read_csv(tmp_path / "out" / "quarantine.csv", dtype=str, keep_default_na=False)
    assert len(from_parquet) == len(from_csv) == 1
    assert from_csv["value"].iloc[0] == "12;5x" and from_parquet["row_number"].iloc[0] == 4


def test_summary_rows_and_table(tmp_path):
    result = run(tmp_path, transactions=with_bad_tx(amount="x"), customers=GOOD_CUSTOMERS)
    rows = result.summary_rows()
    assert [r["table"] for r in rows] == ["customers", "transactions"]
    assert rows[1]["rows_in"] == 4 and rows[1]["rows_clean"] == 3 and rows[1]["quarantined"] == 1
    assert rows[1]["bad_share"] == pytest.approx(0.25)
    assert rows[1]["reasons"] == "non_numeric_amount 1"
    table = result.summary_table()
    assert table.row_count == 2


def test_bad_share_over_the_limit_stops_with_file_column_and_how_to_raise_it(tmp_path):
    rows = [
        *GOOD_TX,
        ["T7", "C1", "2024-01-01", "oops", "1", "", ""],
        ["T8", "C1", "2024-01-01", "x", "1", "", ""],
    ]
    write_csv(tmp_path / "transactions.csv", TX_HEADER, rows)
    with pytest.raises(
        BadShareError,
        match=r"transactions\.csv: 40\.0% of transactions rows \(2 of 5\).*limit of "
        r"5\.0%.*non_numeric_amount 2.*Column with most failures: 'amount'.*"
        r"--max-bad-share 0\.41",
    ) as info:
        validate(load_raw(tmp_path), run_time=RUN_TIME)
    assert isinstance(info.value, DataContractError)
    # The caller can still write the quarantine for the user.
    assert len(info.value.result.quarantine) == 2


def test_bad_share_at_the_limit_passes(tmp_path):
    rows = [[f"T{i}", "C1", "2024-01-01", "1", "1", "", ""] for i in range(19)]
    rows.append(["T99", "C1", "2024-01-01", "not money", "1", "", ""])
    write_csv(tmp_path / "transactions.csv", TX_HEADER, rows)
    result = validate(load_raw(tmp_path), run_time=RUN_TIME, max_bad_share=0.05)
    assert result.bad_share("transactions") == pytest.approx(0.05)
    assert result.rows_clean["transactions"] == 19


def test_malformed_csv_row_stops_with_file_and_line(tmp_path):
    lines = ["transaction_id,customer_id,timestamp,amount"] + [f"T{i},C1,2024-01-01,1" for i in range(3000)]
    lines.insert(2500, "T-x,C1,2024-01-01,1,surplus")  # line 2501 of the file (the header is line 1)
    (tmp_path / "transactions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataContractError,
        match=r"Cannot read .*transactions\.csv \(table transactions\): "
        r".*Line: 2501 Original Line: T-x,C1,2024-01-01,1,surplus "
        r"Expected Number of Columns: 4 Found: 5",
    ):
        validate(load_raw(tmp_path), run_time=RUN_TIME)


def test_row_numbers_follow_file_order_in_a_large_csv(tmp_path):
    # Large enough for DuckDB to read the file in several parallel chunks.
    n = 300_000
    bad = {7, 123_457, 299_999}
    lines = ["transaction_id,customer_id,timestamp,amount"]
    lines += [f"T{i},C{i % 97},2024-01-01 10:00:00,{'bad' if i in bad else i % 50}" for i in range(1, n + 1)]
    (tmp_path / "transactions.csv").write_text("\n".join(lines) + "\n")
    result = validate(load_raw(tmp_path), run_time=RUN_TIME)
    assert quarantined(result, "transactions") == [
        (i, "non_numeric_amount", "amount", "bad") for i in sorted(bad)
    ]
    assert json.loads(result.quarantine["record"].iloc[1])["transaction_id"] == "T123457"
    assert result.rows_clean["transactions"] == n - 3


def test_parquet_with_typed_columns_passes(tmp_path):
    berlin = pd.DatetimeIndex(["2024-01-01 10:00", "2024-07-01 10:00"]).tz_localize("Europe/Berlin")
    pq.write_table(
        pa.table(
            {
                "transaction_id": ["T1", "T2"],
                "customer_id": ["C1", "C2"],
                "timestamp": pa.array(berlin.to_pydatetime(), pa.timestamp("ns", tz="Europe/Berlin")),
                "amount": pa.array([10.0, -4.0], pa.float32()),
                "quantity": pa.array([1, 2], pa.int64()),
                "is_return": [False, None],
                "points_earned": pa.array([5, 0], pa.int32()),
            }
        ),
        tmp_path / "transactions.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "customer_id": ["C1", "C2"],
                "birth_year": pa.array([1980, None], pa.int64()),
                "loyalty_member": [True, False],
                "signup_date": pa.array([pd.Timestamp("2023-05-01").date()] * 2, pa.date32()),
                "points_balance": pa.array([1, 2], pa.int16()),
            }
        ),
        tmp_path / "customers.parquet",
    )
    result = validate(load_raw(tmp_path), run_time=RUN_TIME, max_bad_share=0.0)
    assert result.quarantine.empty
    rows = result.con.execute(
        "SELECT transaction_id, timestamp, amount, quantity, is_return, points_earned "
        "FROM transactions ORDER BY 1"
    ).fetchall()
    # Berlin is UTC+1 in winter and UTC+2 in summer.
    assert rows == [
        ("T1", datetime(2024, 1, 1, 9), 10.0, 1.0, False, 5.0),
        ("T2", datetime(2024, 7, 1, 8), -4.0, 2.0, True, 0.0),
    ]
    types = dict(
        result.con.execute("SELECT column_name, column_type FROM (DESCRIBE transactions)").fetchall()
    )
    assert types == {
        "transaction_id": "VARCHAR",
        "customer_id": "VARCHAR",
        "timestamp": "TIMESTAMP",
        "amount": "DOUBLE",
        "quantity": "DOUBLE",
        "is_return": "BOOLEAN",
        "points_earned": "DOUBLE",
    }
    customers = result.con.execute("SELECT * FROM customers ORDER BY 1").fetchall()
    assert customers == [
        ("C1", 1980, True, datetime(2023, 5, 1), 1.0),
        ("C2", None, False, datetime(2023, 5, 1), 2.0),
    ]


def test_parquet_amount_stored_as_text_is_checked_per_value(tmp_path):
    pq.write_table(
        pa.table(
            {
                "transaction_id": ["T1", "T2", "T3"],
                "customer_id": ["C1", "C1", "C1"],
                "timestamp": pa.array([datetime(2024, 1, 1)] * 3, pa.timestamp("us")),
                "amount": ["12.5", "twelve", None],
                "customer_id_int": pa.array([1, 2, 3], pa.int64()),
            }
        ),
        tmp_path / "transactions.parquet",
    )
    result = validate(load_raw(tmp_path), run_time=RUN_TIME, max_bad_share=1.0)
    assert quarantined(result, "transactions") == [
        (2, "non_numeric_amount", "amount", "twelve"),
        (3, "non_numeric_amount", "amount", ""),
    ]
    assert result.con.execute("SELECT amount, customer_id_int FROM transactions").fetchall() == [(12.5, 1)]


def test_parquet_nan_amount_and_integer_ids(tmp_path):
    pq.write_table(
        pa.table(
            {
                "transaction_id": pa.array([1, 2, 3], pa.int64()),
                "customer_id": pa.array([7, 7, 7], pa.int64()),
                "timestamp": pa.array([datetime(2024, 1, 1)] * 3, pa.timestamp("ms")),
                "amount": pa.array([1.0, float("nan"), float("-inf")], pa.float64()),
            }
        ),
        tmp_path / "transactions.parquet",
    )
    result = validate(load_raw(tmp_path), run_time=RUN_TIME, max_bad_share=1.0)
    assert [(r, reason) for r, reason, _, _ in quarantined(result, "transactions")] == [
        (2, "non_numeric_amount"),
        (3, "non_numeric_amount"),
    ]
    assert result.con.execute("SELECT transaction_id, customer_id FROM transactions").fetchall() == [
        ("1", "7")
    ]


def test_duckdb_input_reports_database_table_and_scan_order(tmp_path):
    path = tmp_path / "shop.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE transactions (transaction_id VARCHAR, customer_id VARCHAR, "
            "timestamp TIMESTAMPTZ, amount DECIMAL(10, 2))"
        )
        con.execute(
            "INSERT INTO transactions VALUES ('T1', 'C1', '2024-01-01 10:00:00+02', 3.50), "
            "('T1', 'C1', '2024-01-02', 4), ('T2', NULL, '2024-01-03', 5)"
        )
    result = validate(load_raw(path), run_time=RUN_TIME, max_bad_share=1.0)
    assert quarantined(result, "transactions") == [
        (2, "duplicate_id", "transaction_id", "T1"),
        (3, "missing_key", "customer_id", ""),
    ]
    assert result.sources["transactions"] == f"{path}:main.transactions"
    assert result.con.execute("SELECT timestamp, amount FROM transactions").fetchall() == [
        (datetime(2024, 1, 1, 8), 3.5)
    ]


def test_validate_twice_on_the_same_raw_tables(tmp_path):
    write_csv(tmp_path / "transactions.csv", TX_HEADER, with_bad_tx(timestamp="2024-12-31"))
    raw = load_raw(tmp_path)
    assert validate(raw, run_time=RUN_TIME).rows_clean["transactions"] == 4
    later = validate(raw, run_time=datetime(2024, 6, 1), max_bad_share=1.0)
    assert later.rows_clean["transactions"] == 3
    assert quarantined(later, "transactions") == [(4, "future_timestamp", "timestamp", "2024-12-31")]

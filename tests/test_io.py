"""Loading raw tables: folders of CSV/Parquet, DuckDB files, and the errors that stop a run before validation."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import DataContractError
from features.io import load_raw, replace_atomically

TRANSACTIONS_CSV = (
    "transaction_id,customer_id,timestamp,amount,note\n"
    "T1,00042,2024-01-01,10.00,first\n"
    "T2,00042,2024-01-02,1e3,second\n"
    "T3,007,2024-01-03,abc,third\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_columns_are_read_as_text_so_nothing_is_coerced(tmp_path):
    write(tmp_path / "transactions.csv", TRANSACTIONS_CSV)
    raw = load_raw(tmp_path)
    table = raw.tables["transactions"]
    assert raw.present == ["transactions"]
    assert table.kind == "csv"
    assert table.source == str(tmp_path / "transactions.csv")
    assert set(table.columns.values()) == {"VARCHAR"}
    assert list(table.columns) == ["transaction_id", "customer_id", "timestamp", "amount", "note"]
    rows = raw.con.execute(
        f"SELECT __row_number, customer_id, amount FROM {table.relation} ORDER BY __row_number"
    ).fetchall()
    # Zero padding survives and 'abc' and '1e3' arrive as written.
    assert rows == [(1, "00042", "10.00"), (2, "00042", "1e3"), (3, "007", "abc")]
    assert raw.row_counts == {"transactions": 3}


def test_optional_tables_are_picked_up_and_parquet_keeps_its_types(tmp_path):
    write(tmp_path / "transactions.csv", TRANSACTIONS_CSV)
    write(tmp_path / "customers.csv", "customer_id,region\n00042,north\n")
    pq.write_table(
        pa.table(
            {
                "event_id": ["E1", "E2"],
                "customer_id": ["00042", "00042"],
                "timestamp": pa.array([1_700_000_000_000_000, 1_700_000_060_000_000], pa.timestamp("us")),
                "event_type": ["email_open", "app_open"],
                "score": pa.array([1, 2], pa.int64()),
            }
        ),
        tmp_path / "events.parquet",
    )
    raw = load_raw(tmp_path)
    assert raw.present == ["customers", "transactions", "events"]
    assert raw.tables["events"].kind == "parquet"
    assert raw.tables["events"].columns["timestamp"] == "TIMESTAMP"
    assert raw.tables["events"].columns["score"] == "BIGINT"
    assert raw.row_counts == {"customers": 1, "transactions": 3, "events": 2}
    assert raw.con.execute("SELECT list(__row_number ORDER BY __row_number) FROM raw_events").fetchall() == [
        ([1, 2],)
    ]


def test_missing_folder(tmp_path):
    with pytest.raises(
        DataContractError, match=r"does not exist.*transactions\.csv or transactions\.parquet"
    ):
        load_raw(tmp_path / "nowhere")


def test_missing_transactions_table(tmp_path):
    write(tmp_path / "customers.csv", "customer_id\nC1\n")
    with pytest.raises(
        DataContractError,
        match=r"No transactions table in .*expected transactions\.csv or "
        r"transactions\.parquet with columns transaction_id, customer_id",
    ):
        load_raw(tmp_path)


def test_same_table_as_csv_and_parquet_is_ambiguous(tmp_path):
    write(tmp_path / "transactions.csv", TRANSACTIONS_CSV)
    pq.write_table(pa.table({"transaction_id": ["T1"]}), tmp_path / "transactions.parquet")
    with pytest.raises(DataContractError, match=r"given twice .*transactions\.csv, transactions\.parquet"):
        load_raw(tmp_path)


def test_missing_required_column_names_file_column_and_columns_found(tmp_path):
    write(tmp_path / "transactions.csv", "transaction_id,customer_id,amount\nT1,C1,3\n")
    path = tmp_path / "transactions.csv"
    with pytest.raises(DataContractError) as info:
        load_raw(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "required column 'timestamp' is missing" in message
    assert "Columns found: transaction_id, customer_id, amount" in message


def test_missing_required_column_in_optional_table(tmp_path):
    write(tmp_path / "transactions.csv", TRANSACTIONS_CSV)
    write(tmp_path / "events.csv", "event_id,customer_id,timestamp\nE1,C1,2024-01-01\n")
    with pytest.raises(DataContractError, match=r"events\.csv: required column 'event_type' is missing"):
        load_raw(tmp_path)


def test_column_names_match_case_insensitively(tmp_path):
    write(tmp_path / "transactions.csv", "Transaction_ID,CUSTOMER_ID,Timestamp,Amount\nT1,C1,2024-01-01,3\n")
    raw = load_raw(tmp_path)
    assert raw.tables["transactions"].find("customer_id") == "CUSTOMER_ID"


def test_unreadable_csv_names_file_and_duckdb_reason(tmp_path):
    (tmp_path / "transactions.csv").write_bytes(b"\xff\xfe\x00\x01garbage\x00\n\x00\x9f\x92\x96")
    with pytest.raises(
        DataContractError, match=r"Cannot read .*transactions\.csv: the header line is not UTF-8"
    ):
        load_raw(tmp_path)


def test_unreadable_parquet_names_file(tmp_path):
    (tmp_path / "transactions.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(
        DataContractError, match=r"Cannot read .*transactions\.parquet \(table transactions\)"
    ):
        load_raw(tmp_path)


def test_duckdb_database_file(tmp_path):
    path = tmp_path / "shop.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE transactions AS SELECT * FROM (VALUES ('T1', 'C1', TIMESTAMP '2024-01-01', 5.0),"
            " ('T2', 'C2', TIMESTAMP '2024-01-02', 6.0)) t(transaction_id, customer_id, timestamp, amount)"
        )
        con.execute("CREATE TABLE customers AS SELECT 'C1' AS customer_id")
        con.execute("CREATE TABLE unrelated AS SELECT 1 AS x")
    raw = load_raw(path)
    assert raw.present == ["customers", "transactions"]
    assert raw.tables["transactions"].kind == "duckdb"
    assert raw.source("transactions") == f"{path}:main.transactions"
    assert raw.tables["transactions"].columns["amount"] == "DECIMAL(2,1)"
    assert raw.row_counts == {"customers": 1, "transactions": 2}
    rows = raw.con.execute("SELECT __row_number, transaction_id FROM raw_transactions ORDER BY 1").fetchall()
    assert rows == [(1, "T1"), (2, "T2")]


def test_duckdb_database_without_transactions(tmp_path):
    path = tmp_path / "shop.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE customers AS SELECT 'C1' AS customer_id")
    with pytest.raises(
        DataContractError,
        match=r"No transactions table in DuckDB database .*shop\.db; "
        r"tables found: main\.customers",
    ):
        load_raw(path)


def test_file_that_is_not_a_database(tmp_path):
    path = write(tmp_path / "shop.db", "not a database")
    with pytest.raises(DataContractError, match=r"Cannot open DuckDB database .*shop\.db"):
        load_raw(path)
    other = write(tmp_path / "transactions.csv", TRANSACTIONS_CSV)
    with pytest.raises(DataContractError, match=r"is a file but not a DuckDB database"):
        load_raw(other)


def test_semicolon_file_is_read_as_one_column_and_named_in_the_error(tmp_path):
    write(tmp_path / "transactions.csv", "transaction_id;customer_id;timestamp;amount\nT1;C1;2024-01-01;3\n")
    with pytest.raises(
        DataContractError,
        match=r"required column 'transaction_id' is missing.*Columns found: "
        r"transaction_id;customer_id;timestamp;amount",
    ):
        load_raw(tmp_path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        ("transaction_id,customer_id,timestamp,amount,amount\n", "column 'amount' appears twice"),
        ("transaction_id,,timestamp,amount\n", "a column has no name"),
    ],
)
def test_bad_csv_header(tmp_path, text, problem):
    write(tmp_path / "transactions.csv", text)
    with pytest.raises(DataContractError, match=rf"Cannot read .*transactions\.csv: .*{problem}"):
        load_raw(tmp_path)


def test_header_only_csv_quoted_fields_crlf_and_bom(tmp_path):
    (tmp_path / "transactions.csv").write_bytes(
        b"\xef\xbb\xbftransaction_id, customer_id ,timestamp,amount,note\r\n"
        b'T1,C1,2024-01-01,3,"a, b"\r\nT2,C1,2024-01-01,4,"two\nlines"\r\n'
    )
    raw = load_raw(tmp_path)
    assert list(raw.tables["transactions"].columns) == [
        "transaction_id",
        "customer_id",
        "timestamp",
        "amount",
        "note",
    ]
    assert raw.con.execute("SELECT note FROM raw_transactions ORDER BY __row_number").fetchall() == [
        ("a, b",),
        ("two\nlines",),
    ]
    write(tmp_path / "transactions.csv", "transaction_id,customer_id,timestamp,amount\n")
    assert load_raw(tmp_path).row_counts == {"transactions": 0}


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "status.json"
    replace_atomically(path, lambda partial: partial.write_text("first"))
    assert path.read_text() == "first"

    def half_then_fail(partial):
        partial.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, half_then_fail)
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["status.json"]

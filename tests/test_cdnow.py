"""CDNOW import: the published shape of the data set, contract types, and a clean validation."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.errors import DataContractError
from features.io import load_raw
from features.synthetic.cdnow import default_cdnow_path, import_cdnow, read_cdnow
from features.validate import validate


@pytest.fixture(scope="module")
def cdnow(tmp_path_factory):
    return import_cdnow(tmp_path_factory.mktemp("cdnow"))


def test_cdnow_has_the_published_shape(cdnow):
    assert cdnow.rows == 69_659
    assert cdnow.customers == 23_570
    assert (cdnow.first_date, cdnow.last_date) == (date(1997, 1, 1), date(1998, 6, 30))
    assert cdnow.path == cdnow.out_dir / "transactions.parquet"
    assert os.fspath(cdnow) == str(cdnow.out_dir)
    assert "69,659 transactions of 23,570 customers, 1997-01-01 to 1998-06-30" in cdnow.summary()


def test_cdnow_keeps_every_line_and_its_totals(cdnow):
    # Independent reading of the text file: every data line, zero-value lines included.
    lines = [line.split() for line in default_cdnow_path().read_text().splitlines()[1:] if line.strip()]
    table = pq.read_table(cdnow.path)
    assert table.num_rows == len(lines)
    assert cdnow.zero_value_rows == sum(Decimal(fields[3]) == 0 for fields in lines) > 0
    total = sum(Decimal(fields[3]) for fields in lines)
    assert round(Decimal(str(pc.sum(table["amount"]).as_py())), 2) == total
    assert pc.sum(table["quantity"]).as_py() == sum(int(fields[2]) for fields in lines)


def test_cdnow_follows_the_contract_types(cdnow):
    table = pq.read_table(cdnow.path)
    assert table.schema.names == [
        "transaction_id",
        "customer_id",
        "timestamp",
        "amount",
        "quantity",
        "currency",
    ]
    assert table.schema.field("timestamp").type == pa.timestamp("us")
    first = table.slice(0, 1).to_pylist()[0]
    assert first == {
        "transaction_id": "00001-1",
        "customer_id": "00001",
        "timestamp": datetime(1997, 1, 1),
        "amount": 11.77,
        "quantity": 1.0,
        "currency": "USD",
    }
    assert len(set(table["transaction_id"].to_pylist())) == table.num_rows


def test_cdnow_passes_validation_with_no_bad_rows(cdnow):
    result = validate(load_raw(cdnow.out_dir), max_bad_share=0.0)
    assert result.quarantine.empty
    assert result.rows_clean == {"transactions": 69_659}
    assert result.con.execute("SELECT count(*) FROM transactions WHERE is_return").fetchall() == [(0,)]


def test_read_cdnow_with_and_without_header(tmp_path):
    body = " 00007 19970105  2   20.50\r\n 00007 19970301  1    0.00\r\n 00012 19980630  3   33.10\r\n"
    plain = tmp_path / "plain.txt"
    plain.write_text(body)
    headed = tmp_path / "headed.txt"
    headed.write_text(" customer_id  date number_of_cds  dollar_value\r\n" + body)
    for source in (plain, headed):
        frame = read_cdnow(source)
        assert frame["transaction_id"].tolist() == ["00007-1", "00007-2", "00012-3"]
        assert frame["timestamp"].tolist() == [
            datetime(1997, 1, 5),
            datetime(1997, 3, 1),
            datetime(1998, 6, 30),
        ]
        assert frame["amount"].tolist() == [20.5, 0.0, 33.1]
    result = import_cdnow(tmp_path / "out", source=plain)
    assert (result.rows, result.customers, result.zero_value_rows) == (3, 2, 1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (" 00007 19971345  2   20.50\n", r"data line 2, column date: cannot parse '19971345'"),
        (" 00007 19970105  2   lots\n", r"data line 2, column dollar_value: cannot parse 'lots'"),
        (" 00007 19970105  2\n", r"data line 2 does not have four fields"),
    ],
)
def test_read_cdnow_names_the_bad_line(tmp_path, line, message):
    source = tmp_path / "cdnow.txt"
    source.write_text(" 00001 19970101  1   11.77\n" + line)
    with pytest.raises(DataContractError, match=message):
        read_cdnow(source)


def test_locating_the_file_does_not_import_lifetimes():
    code = (
        "import sys; from features.synthetic.cdnow import default_cdnow_path; p = default_cdnow_path(); "
        "print(p.is_file(), 'lifetimes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]

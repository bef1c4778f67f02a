"""Import of the public CDNOW purchase log as a transactions table that follows the data contract.

CDNOW_master.txt (shipped with the ``lifetimes`` package) holds every purchase of 23,570 customers who first bought
at CDNOW in the first quarter of 1997, up to June 1998: one line per customer and day, whitespace separated:
customer id (zero padded), date (YYYYMMDD), number of CDs, dollar value. It is the classic benchmark for
BG/NBD-style models, so the churn baselines can be checked against published figures.

Only the file is taken from ``lifetimes``: its helper functions break on pandas 3, and importing the package
pulls in its fitters, so the file is located without importing it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import DataContractError

CDNOW_FILE = "CDNOW_master.txt"
RAW_COLUMNS = ["customer_id", "date", "number_of_cds", "dollar_value"]
# Written with the contract's canonical types (features/contract.py) so validation only checks, never converts.
TRANSACTIONS_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("customer_id", pa.string()),
        ("timestamp", pa.timestamp("us")),
        ("amount", pa.float64()),
        ("quantity", pa.float64()),
        ("currency", pa.string()),
    ]
)


@dataclass(frozen=True)
class CdnowImport:
    """What ``import_cdnow`` wrote. ``os.fspath(result)`` is the output folder, so it can be used as a path.

    Attributes:
        out_dir: folder holding ``transactions.parquet``.
        path: the Parquet file written.
        source: the CDNOW text file read.
        rows: transactions written (one per input line; nothing is dropped).
        customers: distinct customer ids.
        first_date, last_date: first and last purchase day.
        zero_value_rows: lines with dollar value 0 (kept: they are real lines of the log).
    """

    out_dir: Path
    path: Path
    source: Path
    rows: int
    customers: int
    first_date: date
    last_date: date
    zero_value_rows: int

    def __fspath__(self) -> str:
        return str(self.out_dir)

    def __str__(self) -> str:
        return self.summary()

    def __rich__(self):
        """Lets ``console.print(result)`` show the summary line (as plain text: a path may hold '[')."""
        from rich.text import Text

        return Text(self.summary())

    def summary(self) -> str:
        """One line for the CLI: rows, customers, date range, zero-value lines and where it went."""
        return (
            f"CDNOW: {self.rows:,} transactions of {self.customers:,} customers, {self.first_date} to "
            f"{self.last_date} ({self.zero_value_rows:,} with dollar value 0, kept) -> {self.path}"
        )


def default_cdnow_path() -> Path:
    """Location of CDNOW_master.txt inside the installed ``lifetimes`` package (the package is not imported)."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The lifetimes package is not installed, so its CDNOW data cannot be found. Install it "
            "(pip install lifetimes) or pass the path of CDNOW_master.txt as source."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / CDNOW_FILE


def read_cdnow(source: Path) -> pd.DataFrame:
    """Read the CDNOW text file into contract transactions.

    Returns:
        DataFrame with transaction_id (``<customer>-<data line number>``, stable across imports), customer_id
        (zero-padded text, as in the file), timestamp (the day at 00:00, naive UTC), amount (dollar value),
        quantity (number of CDs), currency ("USD"); one row per data line, in file order.

    Raises:
        DataContractError: a line does not have four fields, or a date or number does not parse.
    """
    try:
        raw = pd.read_csv(
            source, sep=r"\s+", header=None, names=RAW_COLUMNS, dtype=str, skiprows=_header_lines(source)
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataContractError(f"Cannot read {source} as the CDNOW log: {exc}") from exc
    short = raw[RAW_COLUMNS].isna().any(axis=1)
    if short.any():
        raise DataContractError(
            f"{source}: data line {_first(short)} does not have four fields {RAW_COLUMNS}."
        )
    line_no = pd.RangeIndex(1, len(raw) + 1).astype(str)
    return pd.DataFrame(
        {
            "transaction_id": raw["customer_id"] + "-" + line_no,
            "customer_id": raw["customer_id"],
            "timestamp": _parse(
                raw, "date", lambda s: pd.to_datetime(s, format="%Y%m%d", errors="coerce"), source
            ),
            "amount": _parse(raw, "dollar_value", lambda s: pd.to_numeric(s, errors="coerce"), source),
            "quantity": _parse(raw, "number_of_cds", lambda s: pd.to_numeric(s, errors="coerce"), source),
            "currency": "USD",
        }
    )


def _header_lines(source: Path) -> int:
    """1 when the file starts with a header line (lifetimes' copy does; the original log does not), else 0."""
    with open(source, encoding="ascii", errors="replace") as handle:
        first = handle.readline().split()
    return 0 if first and first[0].isdigit() else 1


def _parse(raw: pd.DataFrame, column: str, parse, source: Path) -> pd.Series:
    """Parse one column (``parse`` turns failures into NaN); the error names the data line, column and value."""
    parsed = parse(raw[column])
    failed = parsed.isna()
    if failed.any():
        line = _first(failed)
        raise DataContractError(
            f"{source}: data line {line}, column {column}: cannot parse {raw[column].iloc[line - 1]!r}."
        )
    return parsed


def _first(mask: pd.Series) -> int:
    """1-based position of the first True."""
    return int(mask.to_numpy().argmax()) + 1


def import_cdnow(out_dir: Path, source: Path | None = None) -> CdnowImport:
    """Write the CDNOW log as ``<out_dir>/transactions.parquet`` (contract columns and types).

    Args:
        out_dir: folder to write into (created if missing); usable as ``segments ... --data <out_dir>``.
        source: a CDNOW_master.txt; default: the copy inside the installed ``lifetimes`` package.

    Returns:
        CdnowImport with the counts and date range (``summary()`` prints them).
    """
    source = Path(source) if source is not None else default_cdnow_path()
    transactions = read_cdnow(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "transactions.parquet"
    pq.write_table(pa.Table.from_pandas(transactions, schema=TRANSACTIONS_SCHEMA, preserve_index=False), path)
    return CdnowImport(
        out_dir=out_dir,
        path=path,
        source=source,
        rows=len(transactions),
        customers=int(transactions["customer_id"].nunique()),
        first_date=transactions["timestamp"].min().date(),
        last_date=transactions["timestamp"].max().date(),
        zero_value_rows=int((transactions["amount"] == 0).sum()),
    )

"""Reading the raw input tables (customers, transactions, events) into one in-memory DuckDB connection.

The input is a folder with ``<table>.csv`` (or ``.csv.gz``) or ``<table>.parquet`` files, or a DuckDB database file
(``*.duckdb`` / ``*.db``) holding tables of those names (DESIGN.md section 3). Each table becomes a view
``raw_<table>`` in the connection: CSV with every column as VARCHAR, so that a bad value reaches the validator as
the text the user wrote instead of being coerced or rejected by type sniffing; Parquet and DuckDB tables with their
own types. Every view starts with ``__row_number``, the 1-based data row in the file (scan order for a DuckDB table).
CSV means RFC 4180: UTF-8, comma separated, '"' quotes, a header line (the dialect is fixed, not sniffed, so a
ragged row is reported by line instead of silently changing how the whole file is split).

The views are not copied into memory: at 10M rows a copy of every string column costs more than all the checks, so
the validator reads each file once and writes only the clean table. Nothing is checked here beyond what makes a
table unusable as a whole (missing, unreadable, ambiguous, a required column absent); row-level rules live in
``features.validate``. A CSV row that DuckDB cannot split into the header's columns surfaces when the file is read
in full, i.e. in ``validate``, as the same ``DataContractError``.
"""

from __future__ import annotations

import atexit
import csv
import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from features.contract import CONTRACTS
from features.errors import DataContractError, SettingError

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet",)
DATABASE_SUFFIXES = (".duckdb", ".db")
DEFAULT_DUCKDB_MEMORY = "2GB"  # DuckDB's share of a command's memory (the rest: pandas frames, models)
RAW_PREFIX = "raw_"
ROW_NUMBER_COLUMN = "__row_number"
SOURCE_DATABASE = "__source"


def quote_ident(name: str) -> str:
    """Quote an identifier for DuckDB SQL (column names come from user files and may hold anything)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Quote a string literal for DuckDB SQL."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class RawTable:
    """One raw input table as seen by the connection.

    Attributes:
        name: contract table name (customers, transactions or events).
        source: where it came from, for messages: the file path, or ``<database file>:<schema>.<table>``.
        kind: ``csv``, ``parquet`` or ``duckdb``.
        relation: name of the view over the input (``raw_<name>``); its first column is ``__row_number``.
        columns: input column name -> DuckDB type, in input order (all VARCHAR for CSV; no ``__row_number``).
    """

    name: str
    source: str
    kind: str
    relation: str
    columns: dict[str, str]

    def find(self, column: str) -> str | None:
        """The input's spelling of a contract column (DuckDB matches names case-insensitively), or None."""
        wanted = column.lower()
        return next((c for c in self.columns if c.lower() == wanted), None)


@dataclass
class RawTables:
    """The raw tables of one input, as views in one in-memory DuckDB connection.

    Attributes:
        con: the connection (session time zone UTC); views are named ``raw_<table>``; ``features.validate``
            adds the clean tables.
        tables: contract table name -> RawTable, only for tables present in the input.
    """

    con: duckdb.DuckDBPyConnection
    tables: dict[str, RawTable]
    _row_counts: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def present(self) -> list[str]:
        """Names of the tables present, in contract order (customers, transactions, events)."""
        return [name for name in CONTRACTS if name in self.tables]

    @property
    def row_counts(self) -> dict[str, int]:
        """Table name -> number of raw rows. Counted on first use: free for Parquet, a full read for CSV."""
        for name, table in self.tables.items():
            if name not in self._row_counts:
                sql = f"SELECT count(*) FROM {table.relation}"
                self._row_counts[name] = read_or_raise(self.con, sql, table)[0][0]
        return dict(self._row_counts)

    def source(self, name: str) -> str:
        """Where table ``name`` came from (file path or database table), for messages."""
        return self.tables[name].source


def read_or_raise(con: duckdb.DuckDBPyConnection, sql: str, table: RawTable) -> list[tuple]:
    """Run ``sql`` (which reads ``table``) and fetch all rows; a read failure becomes a DataContractError
    naming the file and DuckDB's reason."""
    try:
        return con.execute(sql).fetchall()
    except duckdb.Error as exc:
        raise unreadable(table.source, table.name, exc) from exc


def unreadable(source: str, name: str, exc: duckdb.Error) -> DataContractError:
    """The error for a file DuckDB cannot read: file, table and the head of DuckDB's reason."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    reason = []
    for line in lines:
        if line.startswith("Possible"):  # DuckDB's fixes name reader options our CLI does not expose
            break
        reason.append(line.strip())
    return DataContractError(f"Cannot read {source} (table {name}): {' '.join(reason[:4])}")


def load_raw(source: Path) -> RawTables:
    """Load the raw tables from a folder of CSV/Parquet files or from a DuckDB database file.

    Args:
        source: a folder holding ``transactions.csv|parquet`` (required) and optionally ``customers.*`` and
            ``events.*``; or a ``*.duckdb`` / ``*.db`` file with tables of those names.

    Returns:
        RawTables with one in-memory DuckDB connection (session time zone UTC) holding ``raw_<table>`` views.

    Raises:
        DataContractError: the source or the transactions table is missing, a file is unreadable, a table is
            given both as CSV and Parquet, or a required column is missing.
    """
    source = Path(source)
    if not source.exists():
        raise DataContractError(
            f"Input {source} does not exist. Give a folder holding transactions.csv or transactions.parquet "
            "(customers and events are optional), or a DuckDB database file (*.duckdb, *.db)."
        )
    con = _connect()
    try:
        if source.is_dir():
            tables = _load_folder(con, source)
        elif source.name.lower().endswith(DATABASE_SUFFIXES):
            tables = _load_database(con, source)
        else:
            raise DataContractError(
                f"Input {source} is a file but not a DuckDB database (*.duckdb, *.db). Give the folder that holds "
                "the table files instead."
            )
    except BaseException:
        con.close()
        raise
    return RawTables(con=con, tables=tables)


def session_cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of `con` in the same time zone: a DuckDB cursor starts with default session settings, and naive
    timestamps mean UTC only in a UTC session (see `_connect`)."""
    zone = con.execute("SELECT current_setting('TimeZone')").fetchone()[0]
    cursor = con.cursor()
    cursor.execute(f"SET TimeZone = {quote_literal(zone)}")
    return cursor


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(partial)` to a temporary file beside `path`, then put it in `path`'s place in one rename: a reader never
    sees half a file, and a failed write leaves neither `path` changed nor the temporary file behind."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def duckdb_memory() -> str:
    """The working database's memory limit: SEGMENTS_DUCKDB_MEMORY, else DEFAULT_DUCKDB_MEMORY."""
    return os.environ.get("SEGMENTS_DUCKDB_MEMORY") or DEFAULT_DUCKDB_MEMORY


def working_database(memory: str | None = None, folder: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh DuckDB database on disk in `folder` (None: a temporary folder removed when the process ends), kept
    within `memory` (None: SEGMENTS_DUCKDB_MEMORY, default DEFAULT_DUCKDB_MEMORY) and spilling beside it, so what it
    holds and its large queries do not grow a command's memory with the data (in memory, 10M transactions held 1.3 GB
    before any query ran)."""
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="segments-duckdb-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    memory = memory or duckdb_memory()
    try:
        return duckdb.connect(str(Path(folder) / "work.duckdb"), config={"memory_limit": memory,
                                                                          "temp_directory": str(folder)})
    except (duckdb.ParserException, duckdb.InvalidInputException) as exc:  # what a bad memory_limit raises
        raise SettingError(f"SEGMENTS_DUCKDB_MEMORY={memory!r} is not a memory size DuckDB takes (e.g. 2GB, 512MB): "
                           f"{exc}") from None


def _connect() -> duckdb.DuckDBPyConnection:
    """A fresh `working_database` for loading and validating; UTC so that naive timestamps and offset conversion
    mean UTC."""
    con = working_database()
    con.execute("SET TimeZone = 'UTC'")
    # Written once and read a few times: the dictionary+FSST string compression cost ~1 s of writing the 10M clean
    # transactions (bench/README.md, "Start-up, and the feature table at 1M"); without it the file is 0.64 GB, not 0.25.
    con.execute("SET disabled_compression_methods = 'dict_fsst'")
    # Row numbers of CSV rows come from row_number() OVER () over the scan, which is file order only with this.
    con.execute("SET preserve_insertion_order = true")
    return con


def _load_folder(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, RawTable]:
    """Load every contract table found in ``folder``; transactions must be there."""
    tables: dict[str, RawTable] = {}
    for name, contract in CONTRACTS.items():
        path = _find_table_file(folder, name)
        if path is None:
            if contract.is_required:
                raise DataContractError(
                    f"No {name} table in {folder}: expected {name}.csv or {name}.parquet "
                    f"with columns {', '.join(contract.required)}."
                )
            continue
        kind = "parquet" if path.name.lower().endswith(PARQUET_SUFFIXES) else "csv"
        tables[name] = _register(con, name, _numbered_reader_sql(path, kind), str(path), kind)
    return tables


def _find_table_file(folder: Path, name: str) -> Path | None:
    """The one file holding table ``name`` in ``folder``, None if absent; two candidates are an error."""
    found = [folder / f"{name}{suffix}" for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise DataContractError(
            f"Table {name} is given twice in {folder}: {', '.join(p.name for p in found)}. "
            "Keep one file per table (remove or rename the other)."
        )
    return found[0] if found else None


def _numbered_reader_sql(path: Path, kind: str) -> str:
    """SELECT reading one file with its 1-based data row number first."""
    if kind == "csv":
        return f"SELECT row_number() OVER () AS {ROW_NUMBER_COLUMN}, * FROM {_csv_reader(path)}"
    reader = f"read_parquet({quote_literal(str(path))}, file_row_number = true)"
    return f"SELECT file_row_number + 1 AS {ROW_NUMBER_COLUMN}, * EXCLUDE (file_row_number) FROM {reader}"


def _csv_reader(path: Path) -> str:
    """read_csv over a comma-separated file with a header, every column as text, no sniffing.

    DuckDB's dialect sniffer, given a file with one ragged row, may read the whole file as a single column or
    fail with "could not detect the dialect"; with the dialect fixed (RFC 4180) it reports the exact line
    instead. The column names come from the header line, read here.
    """
    columns = ", ".join(f"{quote_literal(name)}: 'VARCHAR'" for name in _csv_header(path))
    return (
        f"read_csv({quote_literal(str(path))}, auto_detect = false, header = true, delim = ',', "
        f"quote = '\"', escape = '\"', columns = {{{columns}}})"
    )


def _csv_header(path: Path) -> list[str]:
    """Column names from the first line of a CSV file (UTF-8, optional BOM, optionally gzipped)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(
            path, "rb"
        ) as handle:  # only the first line: a bad byte further down is DuckDB's to report
            line = handle.readline().decode("utf-8-sig")
        header = next(csv.reader([line]), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataContractError(f"Cannot read {path}: the header line is not UTF-8 CSV ({exc}).") from exc
    names = [name.strip() for name in header]
    if not any(names):
        raise DataContractError(f"Cannot read {path}: the file is empty or its first line is not a header.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated or "" in names:
        problem = f"column {repeated[0]!r} appears twice" if repeated else "a column has no name"
        raise DataContractError(f"Cannot read {path}: in the header line, {problem}.")
    return names


def _load_database(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, RawTable]:
    """Attach a DuckDB database file read-only and put views over its contract tables."""
    try:
        # TYPE duckdb: never let DuckDB try to load another engine's extension for an unknown file.
        con.execute(f"ATTACH {quote_literal(str(path))} AS {SOURCE_DATABASE} (TYPE duckdb, READ_ONLY)")
    except duckdb.Error as exc:
        raise DataContractError(f"Cannot open DuckDB database {path}: {exc}") from exc
    found = _database_tables(con)
    if "transactions" not in found:
        raise DataContractError(
            f"No transactions table in DuckDB database {path}; tables found: "
            f"{', '.join(sorted(q for q, _ in found.values())) or 'none'}."
        )
    tables = {}
    for name in CONTRACTS:
        if name in found:
            qualified, is_view = found[name]
            reader = f"{SOURCE_DATABASE}." + ".".join(quote_ident(part) for part in qualified.split("."))
            # rowid is the scan order of a base table; a view has none, so number its rows as they come.
            number = "row_number() OVER ()" if is_view else "rowid + 1"
            sql = f"SELECT {number} AS {ROW_NUMBER_COLUMN}, * FROM {reader}"
            tables[name] = _register(con, name, sql, f"{path}:{qualified}", "duckdb")
    return tables


def _database_tables(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, bool]]:
    """Contract table name -> (``schema.table``, is a view) in the attached database, preferring schema main."""
    rows = con.execute(
        "SELECT table_schema, table_name, table_type = 'VIEW' FROM information_schema.tables "
        f"WHERE table_catalog = '{SOURCE_DATABASE}' ORDER BY table_schema <> 'main', table_schema, table_name"
    ).fetchall()
    found: dict[str, tuple[str, bool]] = {}
    for schema, table, is_view in rows:
        if table.lower() in CONTRACTS:
            found.setdefault(table.lower(), (f"{schema}.{table}", is_view))
    return found


def _register(
    con: duckdb.DuckDBPyConnection, name: str, numbered_sql: str, source: str, kind: str
) -> RawTable:
    """Create the view ``raw_<name>``, describe it and check its required columns.

    Describing a view over a Parquet file reads its footer, so a file that is not Parquet fails here; a
    malformed CSV row fails when the file is read in full.
    """
    relation = RAW_PREFIX + name
    try:
        con.execute(f"CREATE OR REPLACE VIEW {relation} AS {numbered_sql}")
        described = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {relation})").fetchall()
    except duckdb.Error as exc:
        raise unreadable(source, name, exc) from exc
    columns = {column: kind_ for column, kind_ in described if column != ROW_NUMBER_COLUMN}
    table = RawTable(name, source, kind, relation, columns)
    _check_required_columns(table)
    return table


def _check_required_columns(table: RawTable) -> None:
    """Raise naming the file, the missing column and the columns found."""
    contract = CONTRACTS[table.name]
    for column in contract.required:
        if table.find(column) is None:
            raise DataContractError(
                f"{table.source}: required column '{column}' is missing from the {table.name} table. "
                f"Columns found: {', '.join(table.columns) or 'none'}. "
                f"The {table.name} table needs: {', '.join(contract.required)}."
            )

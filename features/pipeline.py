"""Raw tables -> validated tables -> point-in-time feature table: the one path every entry point calls."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.build import FeatureQuery, arrow_to_frame
from features.catalog import FEATURE_SET_VERSION
from features.io import load_raw, replace_atomically
from features.schema import check_feature_table
from features.validate import ValidationResult, validate

# Customers per batch where a command streams the feature table: ~0.15 GB of pandas at 60 features.
BATCH_ROWS = 200_000


@dataclass
class FeatureRun:
    """A built feature table with the validation that preceded it."""

    table: pd.DataFrame
    validation: ValidationResult
    as_of: datetime
    query: FeatureQuery


def load_validated(source: Path, run_time: datetime | None = None, max_bad_share: float = 0.05) -> ValidationResult:
    """Read and validate the raw tables of `source` (a folder or DuckDB file)."""
    return validate(load_raw(Path(source)), run_time=run_time, max_bad_share=max_bad_share)


def build_feature_table(validation: ValidationResult, as_of: datetime) -> FeatureRun:
    """The feature table as of `as_of` from validated tables: one row per customer known at as_of, checked against
    the schema the catalog declares (dtypes, ranges, unique customers)."""
    query = FeatureQuery(validation.columns)
    table = check_feature_table(query.run_duckdb(validation.con, as_of))
    return FeatureRun(table=table, validation=validation, as_of=as_of, query=query)


def feature_batches(validation: ValidationResult, as_of: datetime, rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """`build_feature_table`'s table, `rows` customers at a time in customer order, each batch checked against the
    schema, for the commands that never hold the whole table (at least one batch, empty for no customers)."""
    last = None
    for batch in FeatureQuery(validation.columns).run_batches(validation.con, as_of, rows):
        check_feature_table(batch)
        if len(batch):
            if last is not None and not batch["customer_id"].iloc[0] > last:  # ids ascend: a repeat would be here
                raise ValueError(f"the feature table is not one row per customer in order: customer "
                                 f"{batch['customer_id'].iloc[0]!r} follows {last!r} across batches")
            last = batch["customer_id"].iloc[-1]
        yield batch


def write_feature_table(run: FeatureRun, out: Path) -> Path:
    """Write the feature table to Parquet with the feature-set version and as_of in the file's metadata."""
    return write_feature_batches([run.table], run.as_of, out)[0]


def write_feature_batches(batches: Iterable[pd.DataFrame], as_of: datetime, out: Path) -> tuple[Path, int]:
    """Write feature-table batches (customer order) as one Parquet file with the feature-set version and as_of in
    its metadata: (the file, rows written). The file appears only once every batch is written; a batch that fails
    its check leaves no file behind."""
    return write_frame_batches(batches, out, {"feature_set_version": FEATURE_SET_VERSION, "as_of": as_of.isoformat()})


def write_frame_batches(batches: Iterable[pd.DataFrame], out: Path, metadata: dict[str, str] | None = None,
                        types: dict[str, pa.DataType] | None = None) -> tuple[Path, int]:
    """Write frames of the same columns as one Parquet file, with `metadata` added to the file's: (the file, rows
    written). The file appears only once every batch is written (a failure midway leaves an earlier file of that
    name untouched and nothing beside it). The first batch sets the file's schema, with `types` overriding the type
    of some columns (a list column whose first batch holds only empty lists would otherwise be a list of nulls).

    Each batch is written on a second thread while the next one is built (Arrow's writer releases the GIL), and
    only columns that repeat values are dictionary-encoded: a float column of 1M distinct values spent ~0.4 s
    building a dictionary it then discarded."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0

    def write(partial: Path) -> None:
        nonlocal rows
        writer, pending = None, None
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") as background:
                for batch in batches:
                    if writer is None:
                        schema = _file_schema(pa.Schema.from_pandas(batch, preserve_index=False), metadata, types)
                        repeating = [field.name for field in schema if not pa.types.is_floating(field.type)]
                        writer = pq.ParquetWriter(partial, schema, use_dictionary=repeating)
                    table = pa.Table.from_pandas(batch, schema=writer.schema, preserve_index=False)
                    if pending is not None:
                        pending.result()  # one batch in flight: memory holds at most two
                    pending = background.submit(writer.write_table, table)
                    rows += len(batch)
                if pending is not None:
                    pending.result()
            if writer is None:
                raise ValueError("no batch to write (an empty table is one empty batch)")
        finally:
            if writer is not None:
                writer.close()

    replace_atomically(out, write)
    return out, rows


def _file_schema(schema: pa.Schema, metadata: dict[str, str] | None,
                 types: dict[str, pa.DataType] | None) -> pa.Schema:
    for name, type_ in (types or {}).items():
        if name in schema.names:
            at = schema.get_field_index(name)
            schema = schema.set(at, schema.field(at).with_type(type_))
    extra = {key.encode(): value.encode() for key, value in (metadata or {}).items()}
    return schema.with_metadata({**(schema.metadata or {}), **extra})


def read_frame_batches(path: Path, rows: int = BATCH_ROWS, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """A Parquet file written by `write_frame_batches` (e.g. a feature table), `rows` at a time in file order, each
    with the pandas dtypes it was written with (at least one frame, empty for an empty file); only `columns` when
    given."""
    file = pq.ParquetFile(path)
    version = (file.schema_arrow.metadata or {}).get(b"feature_set_version")
    schema = file.schema_arrow
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns], metadata=schema.metadata)
    tables = (pa.Table.from_batches([batch], schema=schema)
              for batch in file.iter_batches(batch_size=rows, columns=columns))
    for table in itertools.chain(tables, [schema.empty_table()] if file.metadata.num_rows == 0 else []):
        frame = arrow_to_frame(table)
        if version is not None:  # as `to_feature_frame` marks a feature table, so encoders can check it
            frame.attrs["feature_set_version"] = version.decode()
        yield frame


def read_feature_rows(path: Path, rows: np.ndarray | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Some `columns` (None: all) of a feature table written by `write_feature_table`, at the row positions `rows`
    in their order (None: every row). Each column is read and cut to the rows on its own, so a sample of a large
    table never holds the table."""
    file = pq.ParquetFile(path)
    names = columns if columns is not None else file.schema_arrow.names
    if rows is None:
        return arrow_to_frame(file.read(columns=names))
    schema = pa.schema([file.schema_arrow.field(name) for name in names], metadata=file.schema_arrow.metadata)
    positions = pa.array(rows, type=pa.int64())
    return arrow_to_frame(pa.Table.from_arrays([file.read(columns=[name]).column(0).take(positions)
                                                for name in names], schema=schema))


def feature_table_rows(path: Path) -> int:
    """How many customers a feature table file holds (from its footer)."""
    return pq.ParquetFile(path).metadata.num_rows


def read_feature_table(path: Path, rows: int | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a feature table written by `write_feature_table`, with its metadata (feature_set_version, as_of).
    `rows`: only the first ones (for what needs the columns, not the customers)."""
    if rows is None:
        table = pq.read_table(path)
    else:
        file = pq.ParquetFile(path)
        first = list(itertools.islice(file.iter_batches(batch_size=rows), 1))  # none for an empty table
        table = pa.Table.from_batches(first, schema=file.schema_arrow)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
            if k in (b"feature_set_version", b"as_of")}
    return arrow_to_frame(table), meta

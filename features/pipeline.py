"""Raw tables -> validated tables -> point-in-time feature table: the one path every entry point calls."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.build import FeatureQuery, arrow_to_frame
from features.catalog import FEATURE_SET_VERSION
from features.io import load_raw
from features.schema import check_feature_table
from features.validate import ValidationResult, validate


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


def write_feature_table(run: FeatureRun, out: Path) -> Path:
    """Write the feature table to Parquet with the feature-set version and as_of in the file's metadata."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(run.table, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"feature_set_version": FEATURE_SET_VERSION.encode(),
            b"as_of": run.as_of.isoformat().encode()}
    pq.write_table(table.replace_schema_metadata(meta), out)
    return out


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

"""The feature definitions on Apache Spark: the same Ibis expression compiled to Spark SQL.

Spark is an optional extra (`pip install loyalty-segments[spark]`); nothing here imports it at module load.
Input tables must already be clean (validated) and typed as in the contract, e.g. Parquet written by our pipeline.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from features.build import AS_OF_TABLE, FeatureQuery
from features.catalog import Feature
from features.contract import CONTRACTS
from features.io import quote_ident, quote_literal
from features.validate import ValidationResult

# The catalog's dtypes as Spark SQL types: what `to_feature_frame` casts to on DuckDB's side.
SPARK_TYPES = {"int64": "bigint", "float64": "double", "string": "string", "boolean": "boolean"}


def spark_feature_table(spark, tables: dict, as_of: datetime):
    """The feature table as a Spark DataFrame.

    Args:
        spark: an active SparkSession; its `spark.sql.session.timeZone` must be UTC (naive timestamps are UTC).
        tables: contract table name -> Spark DataFrame of clean rows (transactions with `is_return`).
        as_of: only records strictly before it are used.
    """
    import ibis
    import pandas as pd

    if spark.conf.get("spark.sql.session.timeZone") != "UTC":
        raise ValueError("set spark.sql.session.timeZone=UTC: the contract's timestamps are naive UTC")
    ibis.pyspark.connect(spark)  # registers the Spark compiler's options used by ibis.to_sql
    columns = {name: [c for c in frame.columns if c != "is_return"] for name, frame in tables.items()
               if name in CONTRACTS}
    for name, frame in tables.items():
        frame.createOrReplaceTempView(name)
    spark.createDataFrame(pd.DataFrame({"as_of": [pd.Timestamp(as_of)]})).createOrReplaceTempView(AS_OF_TABLE)
    return spark.sql(FeatureQuery(columns, dialect="pyspark").sql)


def stage_clean_tables(spark, validation: ValidationResult, folder: Path) -> dict:
    """The validated tables as Spark DataFrames: written by DuckDB to Parquet under `folder` (streamed, in the
    contract's types), then read by Spark. On a cluster `folder` must be a path every executor reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for name in validation.tables:
        path = folder / f"{name}.parquet"
        validation.con.execute(f"COPY {quote_ident(name)} TO {quote_literal(str(path))} (FORMAT parquet)")
        tables[name] = spark.read.parquet(str(path))
    return tables


def spark_feature_frame(frame, features: list[Feature]):
    """`features.build.to_feature_frame` on Spark: customer_id and every feature cast to the catalog's type."""
    from pyspark.sql import functions as F

    return frame.select(F.col("customer_id").cast("string").alias("customer_id"),
                        *(F.col(f.name).cast(SPARK_TYPES[f.dtype]).alias(f.name) for f in features))

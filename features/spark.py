"""The feature definitions on Apache Spark: the same Ibis expression compiled to Spark SQL.

Spark is an optional extra (`pip install loyalty-segments[spark]`); nothing here imports it at module load.
Input tables must already be clean (validated) and typed as in the contract, e.g. Parquet written by our pipeline.
"""

from __future__ import annotations

from datetime import datetime

from features.build import AS_OF_TABLE, FeatureQuery
from features.contract import CONTRACTS


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

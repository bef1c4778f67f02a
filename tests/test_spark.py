"""The same feature definitions run on Spark (local mode) give the same table as on DuckDB."""

from __future__ import annotations

import os
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_features import AS_OF, FRAMES, _columns

from features.build import FeatureQuery, to_feature_frame
from features.spark import spark_feature_table

pytestmark = pytest.mark.spark
pyspark = pytest.importorskip("pyspark", reason="install the spark extra: uv sync --extra spark")


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        pytest.fail("Java is required for the Spark test: .ci/run installs default-jre-headless")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("segments-test")
               .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.host", "127.0.0.1").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_runs_the_same_definitions_as_duckdb(spark, tmp_path):
    tables = {}
    for name, frame in FRAMES.items():  # through Parquet, as Spark reads data at scale
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, coerce_timestamps="us")
        tables[name] = spark.read.parquet(str(path))
    query = FeatureQuery(_columns(FRAMES))
    on_spark = to_feature_frame(spark_feature_table(spark, tables, AS_OF).toPandas(), query.features)
    on_duckdb = query.run_frames(FRAMES, AS_OF)
    assert len(on_spark) == 5 and on_spark.shape[1] == len(query.features) + 1
    import pandas as pd

    pd.testing.assert_frame_equal(on_spark, on_duckdb, check_exact=False, rtol=1e-12)

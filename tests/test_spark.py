"""On Spark (local mode) the same feature definitions give the same table as on DuckDB, and the whole batch path
(`--engine spark`) the same scores, memberships and changes."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
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
    pd.testing.assert_frame_equal(on_spark, on_duckdb, check_exact=False, rtol=1e-12)


def test_results_come_back_from_the_executors_in_customer_order_a_batch_at_a_time(spark, tmp_path):
    """What Spark computed reaches the driver through files the executors write, read back in small batches: every
    customer once, in id order across the files, and an empty result as one empty frame."""
    from serving.spark_batch import read_sorted, write_sorted

    ids = [f"C{n:05d}" for n in range(1000)]
    frame = spark.createDataFrame(pd.DataFrame({"customer_id": ids[::-1], "score": range(1000)})).repartition(5)
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")  # else so few rows make one range
    try:
        written = write_sorted(frame, tmp_path / "scores", frame.count())
    finally:
        spark.conf.unset("spark.sql.adaptive.coalescePartitions.enabled")
    files = sorted(written.folder.glob("part-*.parquet"))
    assert written.rows == 1000 and len(files) > 1  # several ranges, so the files' order matters
    batches = list(read_sorted(written, rows=64))
    assert len(batches) > 1 and max(map(len, batches)) <= 64
    got = pd.concat(batches, ignore_index=True)
    assert got["customer_id"].tolist() == ids and got["score"].tolist() == list(range(999, -1, -1))
    empty = list(read_sorted(write_sorted(frame.limit(0), tmp_path / "none", 0)))
    assert len(empty) == 1 and empty[0].empty and list(empty[0].columns) == ["customer_id", "score"]
    files[-1].unlink()  # as when an executor wrote to a disk the driver does not see
    with pytest.raises(OSError, match=r"Spark wrote 1,000 rows under .* but \d+ are there to read"):
        list(read_sorted(written))


# ---------------------------------------------------------------------------------------------------------------
# The whole batch path (`--engine spark`): features, registered models through mlflow.pyfunc.spark_udf, thresholds,
# membership, and the store's changes, against the DuckDB path on the session's generated programme.


@pytest.fixture(scope="module")
def registered(small_models, generated_validation, tmp_path_factory):
    """The five model kinds (small), registered in the test process's MLflow (`build_served`): the champion bundle,
    the as_of they were trained at and that MLflow's URI."""
    from serving_setup import AS_OF as TRAINED_AS_OF
    from serving_setup import build_served, environment

    from training.bundle import ScoringBundle

    served = build_served(tmp_path_factory.mktemp("spark-models"), generated_validation, small_models)
    uri = served["env"]["MLFLOW_TRACKING_URI"]
    with environment(MLFLOW_TRACKING_URI=uri):
        yield ScoringBundle.from_registry(), TRAINED_AS_OF, uri


def test_spark_scores_equal_the_duckdb_scores(spark, registered, generated_validation, tmp_path):
    from features.pipeline import build_feature_table
    from serving.spark_batch import score_batches

    bundle, as_of, _ = registered
    assert {name.split("-")[1] for name in bundle.models} == {"churn", "value", "lookalike", "clusters", "uplift"}
    batches, head = score_batches(spark, generated_validation, as_of, bundle, tmp_path)
    on_spark = pd.concat(list(batches), ignore_index=True)
    features = build_feature_table(generated_validation, as_of).table
    on_duckdb = bundle.score(features).sort_values("customer_id").reset_index(drop=True)
    assert len(on_spark) == len(features) > 3000 and len(head) == 1
    pd.testing.assert_frame_equal(on_spark, on_duckdb, check_exact=False, rtol=1e-9, atol=1e-12)


def test_spark_refreshes_record_the_same_changes_as_duckdb(spark, registered, generated_validation, tmp_path):
    from datetime import timedelta

    from features.pipeline import build_feature_table
    from features.segments import load_segments
    from serving.segments.refresh import refresh, refresh_population
    from serving.segments.store import SegmentStore
    from serving.spark_batch import population

    bundle, as_of, _ = registered
    segments = load_segments()
    on_duckdb = SegmentStore(f"sqlite:///{tmp_path / 'duckdb.db'}")
    on_spark = SegmentStore(f"sqlite:///{tmp_path / 'spark.db'}")
    for when in (as_of - timedelta(days=60), as_of):  # the second refresh diffs against the first
        expected = refresh(on_duckdb, segments, build_feature_table(generated_validation, when).table, bundle, when)
        evaluated, _ = population(spark, segments, generated_validation, when, bundle, tmp_path / "staged")
        got = refresh_population(on_spark, segments, evaluated, when)
        assert got.skipped == expected.skipped and not got.skipped.keys() & {"likely_to_churn", "best_members_lookalike"}
        pd.testing.assert_frame_equal(got.sizes, expected.sizes)
        fitted = on_duckdb.current.last_refresh()["thresholds"]
        assert len(fitted) >= 2 and evaluated.thresholds == pytest.approx(fitted, rel=1e-12)
    assert got.changes > 100 and {"entered", "exited"} <= set(on_spark.changes.log()["change"])
    members = [store.current.memberships()[["segment", "customer_id"]] for store in (on_spark, on_duckdb)]
    pd.testing.assert_frame_equal(*members)
    logs = [store.changes.log().sort_values(["at", "customer_id", "segment"]).reset_index(drop=True)
            for store in (on_spark, on_duckdb)]
    key = ["customer_id", "segment", "change", "at", "source"]
    pd.testing.assert_frame_equal(logs[0][key], logs[1][key])
    for spark_cause, duckdb_cause in zip(logs[0]["cause"], logs[1]["cause"], strict=True):
        assert _numbers_close(spark_cause, duckdb_cause), (spark_cause, duckdb_cause)


def test_the_refresh_command_runs_on_spark(registered, generated, tmp_path):
    """`segments refresh --engine spark` end to end (its own Spark session, validation, prediction log), then the
    same as_of on DuckDB finds no entry or exit to record: both engines evaluated the same memberships."""
    import subprocess

    from serving.segments.store import SegmentStore

    _, as_of, tracking_uri = registered
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "COLUMNS": "200",
           "SEGMENTS_PREDICTION_LOG": str(tmp_path / "predictions")}
    store = f"sqlite:///{tmp_path / 'segments.db'}"
    command = [str(Path(sys.executable).parent / "segments"), "refresh", "--data", str(generated[1]), "--as-of",
               f"{as_of:%Y-%m-%d}", "--db", store]
    on_spark = subprocess.run([*command, "--engine", "spark", "--spark-master", "local[2]"], capture_output=True,
                              text=True, env=env, timeout=600, check=False)
    assert on_spark.returncode == 0, on_spark.stdout + on_spark.stderr
    assert "entries and exits recorded" in on_spark.stdout and "Predictions of 5 model(s) logged" in on_spark.stderr
    recorded = SegmentStore(store).changes.last_seq()
    assert recorded > 1000
    on_duckdb = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert on_duckdb.returncode == 0, on_duckdb.stdout + on_duckdb.stderr
    # No entry or exit; the states may be written again (the engines need not round every float operation alike).
    assert re.search(r"^(0 entries and exits recorded|Nothing new)", on_duckdb.stdout, re.MULTILINE)
    assert SegmentStore(store).changes.last_seq() == recorded


def test_spark_engine_refuses_what_only_duckdb_does(tmp_path):
    import subprocess

    result = subprocess.run([str(Path(sys.executable).parent / "segments"), "score", "--data", str(tmp_path),
                             "--as-of", "2026-01-01", "--out", str(tmp_path / "s.parquet"), "--engine", "spark",
                             "--explain"], capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2 and "--serve-dir and --explain run on the duckdb engine" in result.stderr


def _numbers_close(a, b) -> bool:
    """Equal causes, numbers to 1e-9: sums are exact on both engines, but the engines need not round every other float
    operation alike, and a last-bit difference moves a 2-decimal text by a cent on a half cent (122.955)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_numbers_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str):
        words, numbers = [re.split(NUMBER, t) for t in (a, b)], [re.findall(NUMBER, t) for t in (a, b)]
        return words[0] == words[1] and len(numbers[0]) == len(numbers[1]) and all(
            float(x.replace(",", "")) == pytest.approx(float(y.replace(",", "")), abs=0.0100001)
            for x, y in zip(*numbers, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return a == b


NUMBER = r"-?\d[\d,]*(?:\.\d+)?"

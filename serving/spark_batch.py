"""The batch path on Apache Spark: `segments score --engine spark` and `segments refresh --engine spark`.

Validation stays DuckDB's (streamed, bad rows quarantined), and its clean tables are staged as Parquet. Spark then
builds the feature table from the same Ibis definitions (`features.spark`), scores it with the registered MLflow
models at the versions the DuckDB path loads (`mlflow.pyfunc.spark_udf`, the models' own logged code), fits the
population thresholds (exact percentiles, interpolated as pandas does) and evaluates every segment per Arrow batch
with the same `evaluate`. Only narrow columns come back to the driver, and never all at once: the executors sort and
write the scores (for the output file and the prediction log) or, for a refresh, the fields the segments read with
each customer's membership (which the diff against the store needs) as Parquet in the staging folder, and the driver
reads them back a batch at a time; the store then gets only the changes, written exactly as a DuckDB refresh writes
them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from features.build import FeatureQuery
from features.pipeline import BATCH_ROWS
from features.segments import SegmentSet, evaluate, threshold_quantiles
from features.spark import spark_feature_frame, spark_feature_table, stage_clean_tables
from features.validate import ValidationResult
from serving.segments.refresh import (
    MEMBER_PREFIX,
    Population,
    in_customer_order,
    population_columns,
    run_fields,
    spilled_population,
)
from training.bundle import ScoringBundle, score_column, scoring_order

ENV_MASTER = "SEGMENTS_SPARK_MASTER"
DEFAULT_MASTER = "local[*]"
ENV_MANAGER = "SEGMENTS_SPARK_ENV_MANAGER"


def spark_session(master: str | None = None):
    """A Spark session on `master` (else SEGMENTS_SPARK_MASTER, else local[*]): a master URL (local[N],
    spark://host:7077, yarn, k8s://...) or a Spark Connect URL (sc://host:15002). Timestamps are read as UTC."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers run this environment's Python
    master = master or os.environ.get(ENV_MASTER) or DEFAULT_MASTER
    builder = SparkSession.builder.appName("segments")
    if master.startswith("sc://"):
        builder = builder.remote(master)
    else:
        builder = builder.master(master)
        if master.startswith("local"):  # one machine: nothing listens beyond loopback, no web UI, and shuffles
            # in a few partitions: each model's UDF task has a fixed cost, and 200 partitions (Spark's default) made
            # scoring 250k customers take ~45 s per model instead of ~4
            builder = (builder.config("spark.driver.bindAddress", "127.0.0.1")
                       .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
                       .config("spark.sql.shuffle.partitions", str(2 * (os.cpu_count() or 1))))
        builder = builder.config("spark.ui.showConsoleProgress", "false")  # our own progress line shows the step
    # MLflow would draw an artifact download bar per model and per Python worker
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    session = builder.getOrCreate()
    if not master.startswith("sc://"):
        session.sparkContext.setLogLevel("ERROR")
    session.conf.set("spark.sql.session.timeZone", "UTC")
    session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    return session


def spark_features(spark, validation: ValidationResult, as_of: datetime, staging: Path):
    """The point-in-time feature table on Spark, in the catalog's types (as `features.pipeline` builds it)."""
    tables = stage_clean_tables(spark, validation, staging)
    query = FeatureQuery(validation.columns)
    return spark_feature_frame(spark_feature_table(spark, tables, as_of), query.features), query


def spark_scores(spark, features, bundle: ScoringBundle):
    """`features` plus every model's score columns, named and ordered as `ScoringBundle.score` names them, each
    model applied by `mlflow.pyfunc.spark_udf` to its registered version (its signature's columns as input)."""
    import mlflow
    from pyspark.sql import functions as F

    scored, outputs = features, []
    for i, name in enumerate(scoring_order(bundle.models)):
        uri = f"models:/{name}/{bundle.versions[name]}"
        signature = mlflow.models.get_model_info(uri).signature
        result = ", ".join(f"`{c.name}` {_MLFLOW_TO_SPARK[c.type.name]}" for c in signature.outputs.inputs)
        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type=result, env_manager=env_manager())
        scored = scored.withColumn(f"__scores_{i}", udf(F.struct(*signature_columns(signature))))
        outputs += [F.col(f"__scores_{i}.`{c}`").alias(score_column(name, c))
                    for c in signature.outputs.input_names()]
    return scored.select(*features.columns, *outputs)


# MLflow's column types as Spark SQL types (a signature's booleans are 0/1 doubles: MLflow takes no nullable bools).
_MLFLOW_TO_SPARK = {"double": "double", "float": "float", "long": "bigint", "integer": "int", "string": "string",
                    "boolean": "boolean"}


def env_manager() -> str:
    """How executors get the models' Python environment (SEGMENTS_SPARK_ENV_MANAGER): `local` (default) runs them in
    the executors' own Python, which must hold this package (local mode: this environment); `uv` or `virtualenv`
    build each model's environment from its logged, pinned requirements (slower start, nothing else to install)."""
    return os.environ.get(ENV_MANAGER) or "local"


def signature_columns(signature) -> list:
    """The model's input columns, each cast to its type in the model's signature (the logged model's contract)."""
    from pyspark.sql import functions as F

    return [F.col(c.name).cast(_MLFLOW_TO_SPARK[type_name]).alias(c.name)
            if (type_name := getattr(c.type, "name", None)) in _MLFLOW_TO_SPARK else F.col(c.name)
            for c in signature.inputs.inputs]


def spark_thresholds(values, segments: SegmentSet) -> dict[str, float]:
    """`features.segments.fit_thresholds` on Spark: exact, linearly interpolated percentiles of the non-missing
    values (NaN for a field with none)."""
    from pyspark.sql import functions as F

    wanted = threshold_quantiles(segments)
    if not wanted:
        return {}
    row = values.agg(*(F.percentile(F.col(field).cast("double"), q).alias(f"t{i}")
                       for i, (field, q) in enumerate(wanted.values()))).first()
    return {text: float("nan") if row[i] is None else float(row[i]) for i, text in enumerate(wanted)}


def spark_membership(values, segments: SegmentSet, thresholds: dict, keep: list[str]):
    """`keep` columns of `values` and one boolean column per segment (in `segments`' order), evaluated by
    `features.segments.evaluate` on each Arrow batch: the same evaluation as a DuckDB refresh."""
    from pyspark.sql.types import BooleanType, StructField, StructType

    names = segments.names()
    schema = StructType([*values.select(*keep).schema.fields, *(StructField(n, BooleanType(), False) for n in names)])

    def evaluated(frames):
        for frame in frames:
            membership = evaluate(segments, frame, thresholds)
            out = frame[keep].reset_index(drop=True)
            for name in names:
                out[name] = membership[name].to_numpy()
            yield out

    return values.mapInPandas(evaluated, schema)


def score_batches(spark, validation: ValidationResult, as_of: datetime, bundle: ScoringBundle, staging: Path
                  ) -> tuple[Iterator[pd.DataFrame], pd.DataFrame]:
    """(every customer's scores as `ScoringBundle.score` returns them, in customer order a batch at a time, read from
    `staging`; one feature row for the prediction log)."""
    features, query = spark_features(spark, validation, as_of, staging)
    scored = spark_scores(spark, features, bundle).persist()  # read twice: computed once
    try:
        head = typed(scored.select(*features.columns).limit(1).toPandas(), query)
        score_columns = [c for c in scored.columns if c not in features.columns]
        written = write_sorted(scored.select("customer_id", *score_columns), staging / "scores", scored.count())
    finally:
        scored.unpersist()
    dtypes = bundle.score(head).dtypes
    return (typed(batch, query, dtypes) for batch in read_sorted(written)), head


def population(spark, segments: SegmentSet, validation: ValidationResult, as_of: datetime,
               bundle: ScoringBundle | None, staging: Path) -> tuple[Population, pd.DataFrame]:
    """A refresh's population evaluated on Spark (thresholds and membership included), and one feature row."""
    features, query = spark_features(spark, validation, as_of, staging)
    scoring = bundle is not None and bool(bundle.models)
    values = (spark_scores(spark, features, bundle) if scoring else features).persist()  # read three times
    try:
        head = typed(values.select(*features.columns).limit(1).toPandas(), query)
        usable, skipped = segments.resolve(run_fields(values, bundle))
        thresholds = spark_thresholds(values, usable)
        keep = population_columns(values.columns, features.columns, usable)
        written = write_sorted(spark_membership(values, usable, thresholds, keep), staging / "population",
                               values.count())  # membership keeps every row
    finally:
        values.unpersist()
    dtypes = bundle.score(head).dtypes if scoring else None
    names = usable.names()
    batches = (pd.concat([typed(batch[keep], query, dtypes),
                          batch[names].astype(bool).rename(columns=lambda name: MEMBER_PREFIX + name)], axis=1)
               for batch in read_sorted(written))
    return spilled_population(batches, usable, skipped, thresholds), head


@dataclass(frozen=True)
class Written:
    """Where the executors wrote a result (`write_sorted`) and how many rows Spark counted in it."""

    folder: Path
    rows: int


def write_sorted(frame, folder: Path, rows: int) -> Written:
    """`frame` of `rows` rows sorted by customer id and written by the executors as Parquet files under `folder`
    (replaced): Spark sorts into ranges of ids, one numbered file each, so the files in name order hold the customers
    in order."""
    frame.orderBy("customer_id").write.mode("overwrite").parquet(str(folder))
    return Written(Path(folder), rows)


def read_sorted(written: Written, rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """The files `write_sorted` wrote, `rows` at a time in customer order (checked), at least one frame (empty for no
    customers); an OSError at the end unless every row Spark counted was read. Reading them here a batch at a time
    keeps the driver's memory to a batch, where a collect (`toPandas`) held every customer: 100M customers' scores
    alone are ~10 GB."""
    files = sorted(written.folder.glob("part-*.parquet"))

    def batches() -> Iterator[pd.DataFrame]:
        read = 0
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(rows):
                read += batch.num_rows
                yield batch.to_pandas()
        if read != written.rows:
            raise OSError(f"Spark wrote {written.rows:,} rows under {written.folder}, but {read:,} are there to read: "
                          "on a cluster --spark-staging must be a folder the driver and every executor share")
        if not files:
            raise OSError(f"Spark wrote no Parquet file under {written.folder}")
        if not read:
            yield pq.read_schema(files[0]).empty_table().to_pandas()

    return in_customer_order(batches())


def typed(frame: pd.DataFrame, query: FeatureQuery, score_dtypes: pd.Series | None = None) -> pd.DataFrame:
    """Columns collected from Spark in the dtypes the DuckDB path gives them: the catalog's for features, and
    `score_dtypes` (what `ScoringBundle.score` returns, e.g. a churn band's ordered category) for scores."""
    dtypes = {**(score_dtypes.to_dict() if score_dtypes is not None else {}), "customer_id": "string",
              **{f.name: f.dtype for f in query.features}}
    out = frame.reset_index(drop=True)
    return out.astype({c: dtypes[c] for c in out.columns if c in dtypes})

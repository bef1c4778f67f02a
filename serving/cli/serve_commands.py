"""Scoring and serving commands: batch `score` (registry models, or a serve folder's exactly as the service scores),
`build` (the serve folder and BentoML store) and `serve` (the HTTP service)."""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from serving.cli.common import (
    AliasOpt,
    AsOfOpt,
    DataOpt,
    DbOpt,
    Engine,
    EngineOpt,
    MaxBadOpt,
    PredictionsOpt,
    ServeDirOpt,
    SparkMasterOpt,
    SparkStagingOpt,
    date_option,
    fail,
    fail_cleanly,
    features_step,
    keep_predictions,
    open_store,
    out,
    out_file_option,
    spark_job,
    step,
    use_bentoml_home,
    validated,
)


def score(
    data: DataOpt,
    as_of: AsOfOpt,
    out_file: Annotated[Path, out_file_option("Parquet file to write the scores to.")],
    alias: AliasOpt = "champion",
    max_bad_share: MaxBadOpt = 0.05,
    explain: Annotated[bool, typer.Option(help="Add each customer's top reasons per model (needs --serve-dir).")] = False,
    serve_dir: Annotated[Path | None, typer.Option(help="Score with the models pinned in this serve folder "
                                                        "(segments build), exactly as the service does.")] = None,
    segments_file: Annotated[Path | None, typer.Option(
        "--segments", help="With --serve-dir: the segments YAML to evaluate (default: SEGMENTS_DEFINITIONS, as "
                           "the service, else the shipped one).")] = None,
    db: Annotated[str | None, typer.Option(
        help="With --serve-dir: membership store whose last refresh gives the `in top N%` thresholds (default: "
             "SEGMENTS_DB_URL; without a store or a refresh in it they are fitted on the scored customers).")]
    = None,
    predictions: PredictionsOpt = None,
    engine: EngineOpt = Engine.duckdb,
    spark_master: SparkMasterOpt = None,
    spark_staging: SparkStagingOpt = None,
) -> None:
    """Score every customer known at --as-of with the registered champion models (or a serve folder's, with the
    customers' segments as the service evaluates them)."""
    import pyarrow.parquet as pq

    from features.pipeline import write_frame_batches
    from serving.predictions import prediction_folder
    from training.bundle import ScoringBundle

    if engine is Engine.spark and (explain or serve_dir is not None):
        fail("--engine spark scores with the registered models; --serve-dir and --explain run on the duckdb engine")
    if explain or serve_dir is not None:
        definitions = segments_file or os.environ.get("SEGMENTS_DEFINITIONS")
        return score_served(data, as_of, out_file, serve_dir, explain, max_bad_share,
                            Path(definitions) if definitions else None, db or os.environ.get("SEGMENTS_DB_URL"),
                            prediction_folder(predictions))
    validation = validated(data, max_bad_share)
    try:
        with step("Loading champion models"):
            bundle = ScoringBundle.from_registry(alias)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    if engine is Engine.spark:
        from serving.spark_batch import score_batches

        with spark_job(spark_master, spark_staging) as (spark, staging), step("Building features and scoring on Spark"):
            scores, features = score_batches(spark, validation, as_of, bundle, staging)
            write_frame_batches(scores, out_file)  # as the DuckDB engine writes its batches: atomically
    else:
        with fail_cleanly(), step(features_step(as_of) + " and scoring"):
            features = write_score_batches(bundle, validation, as_of, out_file)
    written = pq.read_metadata(out_file)
    out.print("Models: " + ", ".join(f"{n} v{v}" for n, v in sorted(bundle.versions.items())))
    out.print(f"[green]{written.num_rows:,} customers x {written.num_columns - 1} scores[/] -> {out_file}")
    keep_predictions(prediction_folder(predictions), out_file, bundle, features, as_of)


def write_score_batches(bundle, validation, as_of: datetime, out_file: Path):
    """Every customer's scores written to `out_file` one feature batch at a time, as each is scored (the
    population's features and scores are never held: holding the scores, `segments score` took 3.65 GB at 2M
    customers against 3.05 GB at 1M; now 3.0 GB at both);
    returns the first batch's first row, which names the models' outputs for the prediction log."""
    from features.pipeline import feature_batches, write_frame_batches

    head = []

    def scored():
        for batch in feature_batches(validation, as_of):
            if not head:
                head.append(batch.head(1))
            yield bundle.score_in_chunks(batch)

    write_frame_batches(scored(), out_file)
    return head[0]


# Customers explained at once: their reasons are ~5 KB of JSON each (200,000 at once peaked at 5.4 GB at 1M).
EXPLAINED_ROWS = 20_000


def score_served(data: Path, as_of: datetime, out_file: Path, serve_dir: Path | None, explain: bool,
                 max_bad_share: float, segments_file: Path | None = None, db: str | None = None,
                 predictions: Path | None = None, batch_rows: int | None = None) -> None:
    """Batch scoring with a serve folder's models and typical values, through the service's scoring code; the
    segments are the service's too (same definitions, same evaluation, thresholds of the store's last refresh).

    The feature table is built once into a temporary file and scored from it `batch_rows` customers at a time
    (fitting thresholds reads it once more), and each batch's answer is written as it is scored: memory does not
    grow with the customers (at 1M the whole table and its scores took 4.5 GB)."""
    use_bentoml_home()
    from features.pipeline import BATCH_ROWS, feature_batches, read_frame_batches, write_feature_batches
    from serving.state import load_state

    if serve_dir is None:
        fail("--explain needs --serve-dir (the typical values the reasons compare with are fitted by segments build)")
    with step("Loading the served models"):
        state = load_state(serve_dir, rows=1)  # the customers come from --data: none of the served table's rows
    if not state.ready:
        fail("; ".join(state.problems))
    rows = batch_rows or BATCH_ROWS
    validation = validated(data, max_bad_share)
    with tempfile.TemporaryDirectory(prefix="segments-score-") as folder:
        with fail_cleanly(), step(features_step(as_of)):
            table, customers = write_feature_batches(feature_batches(validation, as_of, rows), as_of,
                                                     Path(folder) / "features.parquet")
        validation.con.close()  # DuckDB's buffers are not needed for scoring
        head = next(read_frame_batches(table, rows=1))  # its columns resolve the segments and name the model outputs
        rules = batch_segment_rules(segments_file, head, lambda: read_frame_batches(table, rows), state.scorer.bundle,
                                    db)
        with step(f"Scoring {customers:,} customers" + (" with reasons" if explain else "")):
            scored_rows = min(rows, EXPLAINED_ROWS) if explain else rows
            write_scores(state.scorer, read_frame_batches(table, scored_rows), explain, rules, out_file)
    out.print("Models: " + ", ".join(f"{n} v{v}" for n, v in sorted(state.versions.items())))
    out.print(f"Segments: {len(rules.evaluated.names())} evaluated; `in top N%` thresholds: "
              f"{rules.thresholds_from}")
    for name, reason in sorted(rules.not_evaluated.items()):
        out.print(f"  not evaluated: {name}: {escape(reason)}")
    out.print(f"[green]{customers:,} customers scored[/] -> {out_file}")
    if predictions is not None:
        keep_predictions(predictions, out_file, state.scorer.bundle, head, as_of)


def write_scores(scorer, batches, explain: bool, rules, out_file: Path) -> None:
    """`batch_frame` of each feature batch, written to `out_file` as it is scored."""
    import pyarrow as pa

    from features.pipeline import write_frame_batches
    from serving.scorer import batch_frame

    write_frame_batches((batch_frame(scorer, batch, explain, rules) for batch in batches), out_file,
                        types={"segments": pa.list_(pa.string())})


def batch_segment_rules(segments_file: Path | None, head, batches, bundle, db: str | None):
    """The service's segment rules for batch scoring: thresholds of the store's last refresh when `db` is given and
    has one, else fitted on the scored population (the batch sees all of it, as a refresh does). `head`: a feature
    row (its columns resolve the segments); `batches`: a function giving the population's feature batches (read
    only to fit)."""
    from features.segments import SegmentDefinitionError, load_segments
    from serving.segments.refresh import SegmentRules, evaluate_batches, served_segments

    try:
        usable, skipped = served_segments(segments_file, head, bundle)
    except SegmentDefinitionError as exc:
        fail(str(exc))
    last = None
    if db:
        store = open_store(db)
        try:
            last = store.current.last_refresh()
        finally:
            store.close()
    if last is not None:
        return SegmentRules.of_refresh(usable, skipped, last)
    with step("Fitting the `in top N%` thresholds on the scored customers (no refresh in a store)"):
        population, _ = evaluate_batches(load_segments(segments_file), batches(), bundle)
        try:
            return SegmentRules.fitted(usable, skipped, population)
        finally:
            population.close()


def build(
    data: DataOpt,
    as_of: Annotated[datetime, date_option(
        "--as-of", "As_of of the feature table the service looks ids up in (and of the typical values).")],
    serve_dir: ServeDirOpt = Path("serve"),
    alias: Annotated[str, typer.Option(help="Registry alias of the models to serve.")] = "champion",
    max_bad_share: MaxBadOpt = 0.05,
    bento: Annotated[bool, typer.Option(help="Also package code, serve folder and models as the bento "
                                              "'segments' (offline), to run with `bentoml serve segments:latest`.")]
    = False,
) -> None:
    """Prepare serving: import the champion models at their pinned versions from MLflow into the BentoML store,
    and write the serve folder (feature table as of --as-of, typical values, manifest)."""
    home = use_bentoml_home()
    from serving.state import build as build_state

    validation = validated(data, max_bad_share)
    try:
        with step("Importing models and building the serve folder"):
            manifest = build_state(validation, as_of, serve_dir, alias)
    except LookupError as exc:
        fail(str(exc))
    table = Table("model", "version", "BentoML tag", title=f"Serve folder {serve_dir} (as of {as_of:%Y-%m-%d})")
    for name, entry in sorted(manifest["models"].items()):
        table.add_row(name, entry["version"], entry["bento_tag"])
    out.print(table)
    out.print(f"{manifest['customers']:,} customers in the feature table; BentoML store: {home}")
    out.print(f"Serve it: segments serve --serve-dir {serve_dir}")
    if bento:
        from serving.http.bento import build_bento

        with step("Building the bento"):
            tag = build_bento(serve_dir, manifest)
        out.print(f"Bento {tag} in {home}: BENTOML_HOME={home} bentoml serve {tag}")


def serve(
    serve_dir: ServeDirOpt = Path("serve"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    segments_file: Annotated[Path | None, typer.Option("--segments", help="Segments YAML the event path evaluates "
                                                                          "(default: the shipped one).")] = None,
    db: DbOpt = None,
    reports: Annotated[Path, typer.Option(help="Folder of reports (segments report) served read-only at "
                                               "/reports/.")] = Path("reports"),
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Prediction log folder whose monitoring.json (segments monitor) /v1/info and /v1/ready "
                              "report (default: SEGMENTS_PREDICTION_LOG, else ./predictions).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes, each with the models loaded: about "
                                                             "one per core (bench/README.md).")] = 1,
    deliver: Annotated[bool, typer.Option("--deliver", help="Also post queued membership changes to the subscribed "
                                                            "webhooks (as segments deliver does), in each worker.")]
    = False,
) -> None:
    """Start the scoring service (bentoml serve serving.http.service:SegmentsService). SEGMENTS_API_KEY, when set, is
    required on every request; SEGMENTS_MAX_BATCH caps the batch size (default 10,000). Posted events update the
    membership store that `segments refresh` writes. /v1/ready and /v1/info warn about models older than
    SEGMENTS_MAX_MODEL_AGE_DAYS (default 120) and those the last `segments monitor` found decaying or drifting."""
    use_bentoml_home()
    if not (serve_dir / "manifest.json").exists():
        fail(f"no manifest.json in {serve_dir}: run segments build first")
    os.environ["SEGMENTS_SERVE_DIR"] = str(serve_dir.resolve())
    if db or not os.environ.get("SEGMENTS_DB_URL"):  # a relative SQLite path must not depend on the worker's cwd
        os.environ["SEGMENTS_DB_URL"] = db or f"sqlite:///{Path('segments.db').resolve()}"
    if segments_file is not None:
        os.environ["SEGMENTS_DEFINITIONS"] = str(segments_file.resolve())
    os.environ["SEGMENTS_REPORTS_DIR"] = str(reports.resolve())
    os.environ["SEGMENTS_WORKERS"] = str(workers)
    if deliver:
        os.environ["SEGMENTS_DELIVER"] = "1"
    # Requests are a few rows each: LightGBM's OpenMP threads cost more to wake than they save (one-customer
    # score+explain p50 ~26 ms with one thread, ~100 ms with two, on 2 busy cores: bench/README.md). A worker per
    # core scales instead (--workers); OMP_NUM_THREADS set by the user wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from serving.predictions import ENV_FOLDER, prediction_folder

    os.environ[ENV_FOLDER] = str(prediction_folder(predictions).resolve())  # not relative to a worker's cwd
    bentoml = Path(sys.executable).with_name("bentoml")
    os.execv(str(bentoml), [str(bentoml), "serve", "serving.http.service:SegmentsService", "--host", host,
                            "--port", str(port)])


COMMANDS = {"score": score, "build": build, "serve": serve}

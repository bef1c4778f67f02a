"""What every `segments` command shares: the consoles, the option types, parsing dates, progress, clean errors and
the "validate, then build features" step. Commands live in the *_commands modules beside this one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from features.errors import DataContractError, SettingError
from features.time import naive_utc
from features.validate import BadShareError

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 140)  # piped output (CI, make) keeps tables readable


def parse_as_of(value: str) -> datetime:
    """A date (YYYY-MM-DD) or an ISO datetime; an aware value is converted to naive UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"'{value}' is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS") from exc
    return naive_utc(parsed)


def date_option(flag: str, help: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(flag, parser=parse_as_of, metavar="YYYY-MM-DD", help=help, **kwargs)


def output_file(path: Path) -> Path:
    """Check a file `--out` before any work, creating nothing: the nearest folder of it that exists is a folder and
    can be written into (an existing folder as the file itself is refused by the option's `dir_okay=False`)."""
    import os

    existing = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    if not existing.is_dir():
        raise typer.BadParameter(f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise typer.BadParameter(f"cannot write into the folder {existing}")
    return path


def out_file_option(help: str) -> typer.models.OptionInfo:
    """The `--out` option of a command that writes one file, checked before any work (`output_file`)."""
    return typer.Option("--out", dir_okay=False, callback=output_file, help=help)


DataOpt = Annotated[Path, typer.Option("--data", help="Folder of customers/transactions/events CSV or Parquet "
                                                      "files, or a DuckDB database file.")]
MaxBadOpt = Annotated[float, typer.Option("--max-bad-share", min=0.0, max=1.0,
                                          help="Stop when a table has a larger share of bad rows than this.")]
AsOfOpt = Annotated[datetime, date_option("--as-of", "Point in time: only records strictly before it are used.")]
HorizonOpt = Annotated[int, typer.Option(min=7, max=730, help="Churn and value horizon in days.")]
AliasOpt = Annotated[str, typer.Option(help="Registry alias of the models to use.")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Membership store URL (default: SEGMENTS_DB_URL, else sqlite:///segments.db).")]
SegmentsFileOpt = Annotated[Path | None, typer.Option(
    "--segments", help="Segments YAML file (default: the shipped features/segments.yaml).")]
PredictionsOpt = Annotated[Path | None, typer.Option(
    "--predictions", help="Prediction log folder: scores are kept there with their model versions for segments "
                          "monitor (default: SEGMENTS_PREDICTION_LOG, else ./predictions).")]
ServeDirOpt = Annotated[Path, typer.Option("--serve-dir", help="The serve folder (manifest, feature table, typical "
                                                               "values); SEGMENTS_SERVE_DIR for the service.")]


class Engine(str, Enum):
    """Where a batch command runs its features, scores and segments."""

    duckdb = "duckdb"
    spark = "spark"


EngineOpt = Annotated[Engine, typer.Option(
    "--engine",
    help="duckdb: this machine (default); spark: features, scores and segments as a Spark job (pip extra `spark`, "
         "Java), on --spark-master.")]
SparkMasterOpt = Annotated[str | None, typer.Option(
    "--spark-master", help="With --engine spark: a master URL (local[*], spark://host:7077, yarn, k8s://...) or a "
                           "Spark Connect URL (sc://host:15002); default SEGMENTS_SPARK_MASTER, else local[*].")]
SparkStagingOpt = Annotated[Path | None, typer.Option(
    "--spark-staging", help="With --engine spark: folder the validated tables are staged in and the executors write "
                            "their results to, as Parquet (on a cluster, a path the driver and every executor read "
                            "and write); default a temporary folder, removed afterwards.")]


@contextmanager
def spark_job(master: str | None, staging: Path | None) -> Iterator[tuple]:
    """(a Spark session, the staging folder) for one command; the session stops and a temporary folder goes
    afterwards. A missing pyspark or Java is a clear error."""
    import shutil
    import tempfile

    try:
        from serving.spark_batch import spark_session
    except ImportError as exc:
        fail(f"--engine spark needs the spark extra ({exc.name} is missing): pip install 'loyalty-segments[spark]'")
    if shutil.which("java") is None and not (master or "").startswith("sc://"):
        fail("--engine spark runs Spark here and needs Java (17 or 21) on PATH, or a Spark Connect URL "
             "(--spark-master sc://host:15002)")
    folder = Path(staging) if staging else Path(tempfile.mkdtemp(prefix="segments-spark-"))
    with step("Starting Spark"):
        spark = spark_session(master)
    try:
        yield spark, folder
    finally:
        spark.stop()
        if staging is None:
            shutil.rmtree(folder, ignore_errors=True)


def fail(message: str) -> NoReturn:
    """Say what is wrong and stop with exit code 2 (a usage or data problem, never a traceback)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner with elapsed time for a step whose length is not known in advance."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task(description, total=1)
        yield
        progress.update(task, completed=1)


@contextmanager
def status_bar(first: str = "Preparing") -> Iterator:
    """A spinner whose text the work updates: yields `say(message)` for a progress callback."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(first, total=None)
        yield lambda message: bar.update(task, description=message)


@contextmanager
def fail_cleanly(quarantine: Path | None = None) -> Iterator[None]:
    """Turn a data-contract error into a clear message and exit code 2, never a traceback.

    When too many rows are bad, the quarantine is still written so the user can see every one of them.
    """
    try:
        yield
    except DataContractError as exc:
        if quarantine is not None and isinstance(exc, BadShareError):
            console.print(f"Quarantined rows: {exc.result.write_quarantine(quarantine)}")
        fail(str(exc))
    except SettingError as exc:
        fail(str(exc))


def validated(data: Path, max_bad_share: float, quarantine: Path | None = None):
    """The raw tables checked against the contract (a clear error when too many rows are bad)."""
    from features.pipeline import load_validated

    with fail_cleanly(quarantine), step("Validating"):
        return load_validated(data, max_bad_share=max_bad_share)


def features_step(as_of: datetime) -> str:
    """The progress line of building the feature table."""
    return f"Building features as of {as_of:%Y-%m-%d %H:%M}".removesuffix(" 00:00")


def segment_definitions(path: Path | None):
    """The segments file, parsed and checked (every problem listed), or exit 2."""
    from features.segments import SegmentDefinitionError, load_segments

    try:
        return load_segments(path)
    except SegmentDefinitionError as exc:
        fail(str(exc))


def open_store(url: str | None):
    """The membership store at `url` (default SEGMENTS_DB_URL, else ./segments.db), or exit 2."""
    from serving.segments.store import SegmentStore

    try:
        return SegmentStore(url)
    except Exception as exc:  # noqa: BLE001 - any failure to open the store is the user's configuration
        fail(f"cannot open the membership store: {exc}")


def keep_predictions(folder: Path, scores, bundle, features, as_of: datetime) -> None:
    """Log the scores to the prediction log. A failure is a warning: the command's own output is already written
    and must never be lost or changed because of the log."""
    from serving.predictions import log_predictions

    try:
        paths = log_predictions(folder, scores, bundle, features, as_of)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the scores stand; say so and go on
        console.print(f"[yellow]warning:[/] predictions not logged to {folder}: {type(exc).__name__}: {exc}")
        return
    console.print(f"Predictions of {len(paths)} model(s) logged to {folder} (segments monitor reads them)")


def use_bentoml_home() -> Path:
    """BENTOML_HOME (the model store), by default ./bentoml; set before BentoML is imported."""
    import os

    home = Path(os.environ.get("BENTOML_HOME") or "bentoml").resolve()
    os.environ["BENTOML_HOME"] = str(home)
    return home

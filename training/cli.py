"""The `segments` command line: one entry point for data scientists (and for MLproject)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.errors import DataContractError
from features.validate import BadShareError

app = typer.Typer(
    name="segments",
    help="Predictive customer segments for loyalty programmes: data, features, models, scores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 140)  # piped output (CI, make) keeps tables readable

DataOpt = Annotated[Path, typer.Option("--data", help="Folder of customers/transactions/events CSV or Parquet "
                                                      "files, or a DuckDB database file.")]
MaxBadOpt = Annotated[float, typer.Option("--max-bad-share", min=0.0, max=1.0,
                                          help="Stop when a table has a larger share of bad rows than this.")]


def configure_runtime() -> None:
    """No outside network calls at run time (MLflow and BentoML telemetry off, set before they import), and
    MLflow's own progress bars and info chatter kept out of our progress display."""
    for name, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "1",
                        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(name, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)  # "no pip in the venv": uv made it
    warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")


def parse_as_of(value: str) -> datetime:
    """A date (YYYY-MM-DD) or an ISO datetime; an aware value is converted to naive UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"'{value}' is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS") from exc
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


AsOfOpt = Annotated[datetime, typer.Option("--as-of", parser=parse_as_of, metavar="YYYY-MM-DD",
                                           help="Point in time: only records strictly before it are used.")]


@contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner with elapsed time for a step whose length is not known in advance."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task(description, total=1)
        yield
        progress.update(task, completed=1)


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
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the tables to.")],
    customers: Annotated[int, typer.Option(min=10, help="Number of customers.")] = 5000,
    months: Annotated[int, typer.Option(min=1, max=120, help="Months of history.")] = 24,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 0,
    end: Annotated[str, typer.Option(help="Last day of the history (YYYY-MM-DD).")] = "2026-07-01",
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Generate a synthetic loyalty programme (customers, transactions, events) with a ground-truth file."""
    from features.generator import generate_tables, write_tables

    if fmt not in ("parquet", "csv"):
        raise typer.BadParameter("use parquet or csv", param_hint="--format")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(f"Generating {customers:,} customers x {months} months", total=customers)
        data = generate_tables(customers, months, seed, parse_as_of(end),
                               progress=lambda done: progress.update(task, completed=done))
        progress.update(task, completed=customers, description="Writing tables")
        paths = write_tables(data, out_dir, fmt=fmt)
    summary = Table("table", "rows", "file", title="Generated")
    for name, path in paths.items():
        summary.add_row(name, f"{len(getattr(data, name)):,}", str(path))
    out.print(summary)


@app.command("import-cdnow")
def import_cdnow_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write transactions.parquet to.")],
) -> None:
    """Convert the CDNOW purchase log (shipped in the `lifetimes` package) to the data contract."""
    from features.cdnow import import_cdnow

    with step("Importing CDNOW"):
        summary = import_cdnow(out_dir)
    out.print(summary)


@app.command("validate")
def validate_command(
    data: DataOpt,
    quarantine: Annotated[Path | None, typer.Option(help="Folder to write quarantined rows to.")] = None,
    as_of: Annotated[datetime | None, typer.Option(
        "--as-of", parser=parse_as_of, metavar="YYYY-MM-DD",
        help="The run's time: records after it are future_timestamp. Default: now (UTC).")] = None,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Check the raw tables against the data contract and report bad rows per reason."""
    from features.pipeline import load_validated

    with fail_cleanly(quarantine), step("Validating"):
        result = load_validated(data, run_time=as_of, max_bad_share=max_bad_share)
    out.print(result.summary_table())
    if quarantine is not None:
        path = result.write_quarantine(quarantine)
        out.print(f"Quarantined rows: {path}")


@app.command()
def features(
    data: DataOpt,
    as_of: AsOfOpt,
    out_file: Annotated[Path, typer.Option("--out", help="Parquet file to write the feature table to.")],
    quarantine: Annotated[Path | None, typer.Option(help="Folder to write quarantined rows to.")] = None,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Build the point-in-time feature table: one row per customer known at --as-of."""
    from features.pipeline import build_feature_table, load_validated, write_feature_table

    with fail_cleanly(quarantine):
        with step("Validating"):
            validation = load_validated(data, max_bad_share=max_bad_share)
        with step(f"Building features as of {as_of:%Y-%m-%d %H:%M}"):
            run = build_feature_table(validation, as_of)
            path = write_feature_table(run, out_file)
    out.print(validation.summary_table())
    if quarantine is not None:
        out.print(f"Quarantined rows: {validation.write_quarantine(quarantine)}")
    n_features = run.table.shape[1] - 1
    out.print(f"[green]{len(run.table):,} customers x {n_features} features[/] -> {path}")


@app.command()
def catalog(
    markdown: Annotated[Path | None, typer.Option(help="Also write the catalog as a Markdown table here.")] = None,
) -> None:
    """List every feature: name, group, label, window and description."""
    from features.catalog import FEATURE_SET_VERSION, catalog_frame, catalog_markdown

    frame = catalog_frame()
    table = Table("name", "group", "dtype", "window", "description", title=f"Feature set {FEATURE_SET_VERSION}")
    for row in frame.itertuples():
        window = f"{int(row.window_days)}d" if row.window_days == row.window_days and row.window_days else "all"
        table.add_row(row.name, row.group, row.dtype, window, row.description)
    out.print(table)
    if markdown is not None:
        markdown.write_text(catalog_markdown())
        out.print(f"Written: {markdown}")


TRAIN_KINDS = ("churn", "value", "lookalike", "clusters", "all")


@app.command()
def train(
    kind: Annotated[str, typer.Argument(help="churn, value, lookalike, clusters or all.")],
    data: DataOpt,
    as_of: Annotated[datetime, typer.Option(
        "--as-of", parser=parse_as_of, metavar="YYYY-MM-DD",
        help="Training cut-off: nothing at or after it is read, labels included. Churn and value are evaluated "
             "out of time on the snapshot --as-of minus --horizon.")],
    horizon: Annotated[int, typer.Option(min=7, max=730, help="Churn and value horizon in days.")] = 90,
    seed_segment: Annotated[list[str], typer.Option(
        help="Look-alike seed: a built-in name (best_members, loyalty_members), 'rule:<query>', 'tag:<tag>' "
             "or 'ids:<file>'. Repeat for several.")] = ["best_members"],  # noqa: B006
    config: Annotated[Path | None, typer.Option(help="YAML with sections churn/value/lookalike/clusters.")] = None,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Train, evaluate against baselines, log to MLflow and register models (new versions become challengers)."""
    from training import train as training
    from training.errors import InsufficientDataError
    from training.tracking import log_training_run, tracking_uri

    if kind not in TRAIN_KINDS:
        raise typer.BadParameter(f"use one of {', '.join(TRAIN_KINDS)}", param_hint="KIND")
    kinds = ["churn", "value", "lookalike", "clusters"] if kind == "all" else [kind]
    overrides, validation = _config_and_data(config, data, max_bad_share)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("Preparing", total=None)
        shared = training.TrainingData(validation, as_of, str(data),
                                       progress=lambda message: bar.update(task, description=message))
        runs = []
        for one in kinds:
            for seed in (seed_segment if one == "lookalike" else [None]):
                try:
                    record = _train_one(training, shared, one, overrides.get(one, {}), horizon, seed)
                except (InsufficientDataError, ValueError) as exc:
                    console.print(f"[bold red]{one}{f' ({seed})' if seed else ''} not trained:[/] {exc}")
                    continue
                bar.update(task, description=f"logging {one} to MLflow")
                runs.append((record, log_training_run(record)))
    _print_runs(runs)
    out.print(f"Tracking: {tracking_uri()}  (browse: mlflow ui --backend-store-uri {tracking_uri()})")
    if len(runs) < sum(len(seed_segment) if k == "lookalike" else 1 for k in kinds):
        raise typer.Exit(1)


def _config_and_data(config: Path | None, data: Path, max_bad_share: float):
    """What training commands start with: the config file's sections and the validated tables (clear errors for
    both). Our runs go to their own experiments, also under `mlflow run` (which sets MLFLOW_RUN_ID)."""
    from training import train as training

    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        overrides = training.load_config_file(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    with fail_cleanly(), step("Validating"):
        return overrides, load_validated_for(data, max_bad_share)


def load_validated_for(data: Path, max_bad_share: float):
    from features.pipeline import load_validated

    return load_validated(data, max_bad_share=max_bad_share)


def _train_one(training, shared, kind: str, overrides: dict, horizon: int, seed: str | None):
    if kind == "churn":
        return training.train_churn(shared, overrides, horizon)
    if kind == "value":
        return training.train_value(shared, overrides, horizon)
    if kind == "lookalike":
        return training.train_lookalike(shared, overrides, seed, horizon)
    return training.train_clusters(shared, overrides)


HEADLINE_METRICS = {"churn": ("roc_auc", "pr_auc", "brier", "ece"), "value": ("spearman_spend", "mae_spend"),
                    "lookalike": ("recall_at_10", "lift_at_10"), "clusters": ("k", "stability_ari", "surrogate_fidelity")}


def _print_runs(runs) -> None:
    from training.grading import grade_model

    table = Table("model", "version", "aliases", "metric", "model", "baselines", title="Trained (out-of-time metrics)")
    for record, logged in runs:
        ev = record.evaluation
        for i, metric in enumerate(m for m in HEADLINE_METRICS[record.kind] if m in ev.metrics):
            baselines = ", ".join(f"{b} {m[metric]:.3f}" for b, m in ev.baselines.items() if metric in m)
            head = (logged.name, logged.version, ", ".join(logged.aliases)) if i == 0 else ("", "", "")
            table.add_row(*head, metric, f"{ev.metrics[metric]:.3f}", baselines or "-")
    out.print(table)
    for record, logged in runs:
        graded = grade_model(record.kind, record.evaluation.metrics, record.evaluation.baselines)
        out.print(f"{logged.name} v{logged.version}: {graded.sentence}")
        trained = record.data.get("training_as_of")
        if trained:
            out.print(f"  served model refitted on snapshots {trained[0]:%Y-%m-%d} .. {trained[-1]:%Y-%m-%d}; "
                      f"figures above are the backtest's, as of {record.data['evaluation_as_of']:%Y-%m-%d}")
        for note in record.evaluation.notes:
            out.print(f"  note: {note}")


@app.command()
def promote(
    kind: Annotated[str, typer.Argument(help="churn, value, clusters, or lookalike (with --seed-segment).")],
    seed_segment: Annotated[str | None, typer.Option(help="Seed name, for a look-alike model.")] = None,
) -> None:
    """Make the challenger the champion, only if it beats the champion on the same out-of-time evaluation."""
    from training.tracking import promote as promote_model
    from training.tracking import registered_name

    if kind not in TRAIN_KINDS[:-1]:
        raise typer.BadParameter("use churn, value, lookalike or clusters", param_hint="KIND")
    if kind == "lookalike" and not seed_segment:
        raise typer.BadParameter("a look-alike needs --seed-segment NAME", param_hint="--seed-segment")
    result = promote_model(registered_name(kind, seed_segment if kind == "lookalike" else None), kind)
    (out if result.promoted else console).print(("[green]promoted:[/] " if result.promoted else "[yellow]kept:[/] ")
                                                + result.reason)
    if not result.promoted:
        raise typer.Exit(1)


@app.command()
def retrain(
    data: DataOpt,
    as_of: Annotated[datetime, typer.Option(
        "--as-of", parser=parse_as_of, metavar="YYYY-MM-DD",
        help="The new training cut-off (as for segments train).")],
    kind: Annotated[list[str], typer.Option(help="churn and/or value (repeat); default both.")] = ["churn", "value"],  # noqa: B006
    horizon: Annotated[int, typer.Option(min=7, max=730, help="Churn and value horizon in days.")] = 90,
    config: Annotated[Path | None, typer.Option(help="YAML with sections churn/value.")] = None,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Train challengers, re-judge the served champions beside them on the newest window, promote only on a
    significant win, and say what happened in one table."""
    from training import train as training
    from training.errors import InsufficientDataError
    from training.retrain import RETRAINED_KINDS, rejudge
    from training.tracking import CHAMPION, load_model, log_rejudging, log_training_run, make_champion
    from training.tracking import registered_name as name_of

    unknown = sorted(set(kind) - set(RETRAINED_KINDS))
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: retrain takes {' and '.join(RETRAINED_KINDS)} (look-alikes "
                                 "and clusters: segments train, then segments promote)", param_hint="--kind")
    overrides, validation = _config_and_data(config, data, max_bad_share)
    results, failed = [], False
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("Preparing", total=None)
        shared = training.TrainingData(validation, as_of, str(data),
                                       progress=lambda message: bar.update(task, description=message))
        for one in kind:
            name = name_of(one)
            try:
                champion, champion_version = load_model(name, CHAMPION)
            except LookupError:
                champion, champion_version = None, None
            try:
                record = _train_one(training, shared, one, overrides.get(one, {}), horizon, None)
            except (InsufficientDataError, ValueError) as exc:
                console.print(f"[bold red]{one} not retrained:[/] {exc}")
                failed = True
                continue
            bar.update(task, description=f"logging the {one} challenger to MLflow")
            logged = log_training_run(record)
            bar.update(task, description=f"re-judging the {one} champion on the newest window")
            evaluation = shared.snapshot(record.data["evaluation_as_of"], horizon)
            result = rejudge(one, name, evaluation, record.backtest, logged.version, champion, champion_version)
            if result.promoted:
                make_champion(name, logged.version)
            log_rejudging(logged.run_id, champion_version, result.champion_value, result.metric, result.ci,
                          result.reason)
            results.append(result)
    _print_rejudgings(results)
    if failed:
        raise typer.Exit(1)


def _print_rejudgings(results) -> None:
    table = Table("model", "window (as of)", "metric", "champion", "challenger", "margin (95% interval)",
                  "decision", title="Retrain: champion and challenger on the newest window")
    for r in results:
        champion = f"v{r.champion_version} {r.champion_value:.4f}" if r.champion_version else "none"
        margin = (f"{r.margin:+.4f} ({r.ci[0]:+.4f} to {r.ci[1]:+.4f})" if r.ci else "-")
        decision = f"v{r.challenger_version} promoted" if r.promoted else f"v{r.champion_version} kept"
        table.add_row(r.name, f"{r.evaluation_as_of:%Y-%m-%d}", r.metric, champion,
                      f"v{r.challenger_version} {r.challenger_value:.4f}", margin, decision)
    out.print(table)
    for r in results:
        out.print(f"{r.name}: {r.reason}")


def main() -> None:
    """The data and training commands alone; the `segments` console command is serving.cli:main (all commands)."""
    configure_runtime()
    app()


if __name__ == "__main__":
    main()

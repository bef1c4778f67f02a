"""Data commands: generate a programme, import CDNOW, validate the raw tables, build the feature table, list the
feature catalog."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from serving.cli.common import (
    AsOfOpt,
    DataOpt,
    MaxBadOpt,
    console,
    date_option,
    fail_cleanly,
    features_step,
    out,
    out_file_option,
    parse_as_of,
    step,
    validated,
)

QuarantineOpt = Annotated[Path | None, typer.Option(help="Folder to write quarantined rows to.")]


def generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the tables to.")],
    customers: Annotated[int, typer.Option(min=10, help="Number of customers.")] = 5000,
    months: Annotated[int, typer.Option(min=1, max=120, help="Months of history.")] = 24,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 0,
    end: Annotated[str, typer.Option(help="Last day of the history (YYYY-MM-DD).")] = "2026-07-01",
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Generate a synthetic loyalty programme (customers, transactions, events) with a ground-truth file."""
    from features.synthetic.generator import generate_tables, write_tables

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


def import_cdnow(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write transactions.parquet to.")],
) -> None:
    """Convert the CDNOW purchase log (shipped in the `lifetimes` package) to the data contract."""
    from features.synthetic.cdnow import import_cdnow as convert

    with step("Importing CDNOW"):
        summary = convert(out_dir)
    out.print(summary)


def validate(
    data: DataOpt,
    quarantine: QuarantineOpt = None,
    as_of: Annotated[datetime | None, date_option(
        "--as-of", "The run's time: records after it are future_timestamp. Default: now (UTC).")] = None,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Check the raw tables against the data contract and report bad rows per reason."""
    from features.pipeline import load_validated

    with fail_cleanly(quarantine), step("Validating"):
        result = load_validated(data, run_time=as_of, max_bad_share=max_bad_share)
    out.print(result.summary_table())
    if quarantine is not None:
        out.print(f"Quarantined rows: {result.write_quarantine(quarantine)}")


def features(
    data: DataOpt,
    as_of: AsOfOpt,
    out_file: Annotated[Path, out_file_option("Parquet file to write the feature table to.")],
    quarantine: QuarantineOpt = None,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Build the point-in-time feature table: one row per customer known at --as-of."""
    from features.catalog import available_features
    from features.pipeline import feature_batches, write_feature_batches

    validation = validated(data, max_bad_share, quarantine)
    with fail_cleanly(), step(features_step(as_of)):  # batch by batch: memory does not grow with the customers
        path, rows = write_feature_batches(feature_batches(validation, as_of), as_of, out_file)
    out.print(validation.summary_table())
    if quarantine is not None:
        out.print(f"Quarantined rows: {validation.write_quarantine(quarantine)}")
    out.print(f"[green]{rows:,} customers x {len(available_features(validation.columns))} features[/] -> {path}")


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


COMMANDS = {"generate": generate, "import-cdnow": import_cdnow, "validate": validate, "features": features,
            "catalog": catalog}

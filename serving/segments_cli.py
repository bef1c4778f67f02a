"""`segments` commands of dynamic segments: preview, refresh, the read side (customer, segment, flows), measure and
backtest. The membership store is SEGMENTS_DB_URL (or --db), by default the SQLite file ./segments.db."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from training.cli import (
    AsOfOpt,
    DataOpt,
    MaxBadOpt,
    app,
    console,
    fail_cleanly,
    load_validated_for,
    out,
    parse_as_of,
    step,
)

SegmentsFileOpt = Annotated[Path | None, typer.Option(
    "--segments", help="Segments YAML file (default: the shipped features/segments.yaml).")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Membership store URL (default: SEGMENTS_DB_URL, else sqlite:///segments.db).")]
SegmentOpt = Annotated[str, typer.Option("--segment", help="Segment name.")]


def _segments(path: Path | None):
    from features.segments import SegmentDefinitionError, load_segments

    try:
        return load_segments(path)
    except SegmentDefinitionError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _store(url: str | None):
    from serving.store import SegmentStore

    try:
        return SegmentStore(url)
    except Exception as exc:  # noqa: BLE001 - any failure to open the store is the user's configuration
        console.print(f"[bold red]error:[/] cannot open the membership store: {exc}")
        raise typer.Exit(2) from None


def _bundle(alias: str, use_models: bool):
    """The registered `alias` models, or None (segments over model outputs are then skipped, with the reason)."""
    if not use_models:
        return None
    from training.scoring import ScoringBundle

    try:
        with step(f"Loading the {alias} models"):
            return ScoringBundle.from_registry(alias)
    except LookupError as exc:
        console.print(f"[yellow]note:[/] {exc}; segments over model outputs are skipped")
        return None
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _features(data: Path, as_of: datetime, max_bad_share: float):
    from features.pipeline import build_feature_table

    with fail_cleanly():
        with step("Validating"):
            validation = load_validated_for(data, max_bad_share)
        with step(f"Building features as of {as_of:%Y-%m-%d}"):
            return build_feature_table(validation, as_of).table, validation


def _print_skipped(skipped: dict[str, str]) -> None:
    for name, reason in skipped.items():
        out.print(f"[yellow]not evaluated[/] {name}: {reason}")


AliasOpt = Annotated[str, typer.Option(help="Registry alias of the models predictive segments read.")]
ModelsOpt = Annotated[bool, typer.Option("--models/--no-models", help="Score with the registered models (needed "
                                                                      "by predictive, look-alike, cluster segments).")]


@app.command()
def preview(
    segment: SegmentOpt,
    data: DataOpt,
    as_of: AsOfOpt,
    segments_file: SegmentsFileOpt = None,
    sample: Annotated[int, typer.Option(min=0, max=1000, help="Members to show.")] = 10,
    alias: AliasOpt = "champion",
    models: ModelsOpt = True,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Show a segment's exact size and a sample of its members as of a date; nothing is saved."""
    from serving.membership import preview as preview_segment

    definitions = _segments(segments_file)
    features, _ = _features(data, as_of, max_bad_share)
    bundle = _bundle(alias, models)
    try:
        size, members, _ = preview_segment(definitions, segment, features, bundle, sample)
    except (KeyError, LookupError) as exc:
        console.print(f"[bold red]error:[/] {exc.args[0]}")
        raise typer.Exit(2) from None
    out.print(f"[bold]{segment}[/]: {size:,} of {len(features):,} customers ({size / max(len(features), 1):.1%}) "
              f"as of {as_of:%Y-%m-%d}")
    out.print(_frame_table(members, f"sample of {len(members)} members"))


@app.command()
def refresh(
    data: DataOpt,
    as_of: AsOfOpt,
    segments_file: SegmentsFileOpt = None,
    db: DbOpt = None,
    alias: AliasOpt = "champion",
    models: ModelsOpt = True,
    max_bad_share: MaxBadOpt = 0.05,
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Prediction log folder: the models' scores are kept there with their versions for "
                              "segments monitor (default: SEGMENTS_PREDICTION_LOG, else ./predictions).")] = None,
) -> None:
    """Evaluate every segment for every customer as of --as-of; record entries and exits with their causes. The
    models' scores go to the prediction log."""
    from serving.cli import keep_predictions
    from serving.membership import RefreshOrderError
    from serving.membership import refresh as refresh_segments
    from serving.predictions import prediction_folder

    definitions = _segments(segments_file)
    store = _store(db)
    features, _ = _features(data, as_of, max_bad_share)
    bundle = _bundle(alias, models)
    try:
        with step(f"Evaluating {len(definitions.names())} segment definitions for {len(features):,} customers"):
            report = refresh_segments(store, definitions, features, bundle, as_of)
    except RefreshOrderError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    out.print(_frame_table(report.sizes, f"Segments as of {as_of:%Y-%m-%d} ({store.display_url})"))
    _print_skipped(report.skipped)
    if report.written:
        out.print(f"[green]{report.changes:,} entries and exits recorded[/] in the membership log")
    else:
        out.print("Nothing new: this as_of was already refreshed with these definitions")
    if bundle is not None and report.values is not None and not report.values.empty:
        keep_predictions(prediction_folder(predictions), report.values, bundle, features, as_of)


@app.command()
def customer(
    customer_id: Annotated[str, typer.Argument(help="Customer id.")],
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="History rows to show (newest first).")] = 20,
) -> None:
    """A customer's current segments and their history of entries and exits with causes."""
    from serving.reports.segments import cause_text

    info = _store(db).customer(customer_id)
    if not info["segments"] and not info["history"]:
        console.print(f"[bold red]error:[/] customer {customer_id!r} has no membership record (refresh first?)")
        raise typer.Exit(2)
    out.print(f"[bold]{customer_id}[/] is in: " + (", ".join(s["segment"] for s in info["segments"]) or "no segment"))
    table = Table("at", "segment", "change", "cause", title="history (newest first)")
    for row in info["history"][:limit]:
        table.add_row(f"{row['at']:%Y-%m-%d %H:%M}", row["segment"], row["change"], cause_text(row["cause"]))
    out.print(table)


@app.command()
def segment(
    name: Annotated[str, typer.Argument(help="Segment name.")],
    db: DbOpt = None,
    start: Annotated[datetime | None, typer.Option("--from", parser=parse_as_of, metavar="YYYY-MM-DD",
                                                   help="Start of the daily entries/exits table.")] = None,
    end: Annotated[datetime | None, typer.Option("--to", parser=parse_as_of, metavar="YYYY-MM-DD",
                                                 help="End (exclusive) of the daily table.")] = None,
    members: Annotated[int, typer.Option(min=0, help="Members to list (a page).")] = 0,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many members (paging).")] = 0,
) -> None:
    """A segment's exact size, a page of members, and entries, exits and size per day."""
    store = _store(db)
    out.print(f"[bold]{name}[/]: {store.segment_size(name):,} members")
    if members:
        page = store.members(name, limit=members, offset=offset)
        out.print(", ".join(m["customer_id"] for m in page) or "(no members on this page)")
    if start is not None and end is not None:
        out.print(_frame_table(store.daily_changes(name, start, end), "entries, exits and size per day"))


@app.command()
def flows(
    start: Annotated[datetime, typer.Option("--from", parser=parse_as_of, metavar="YYYY-MM-DD")],
    end: Annotated[datetime, typer.Option("--to", parser=parse_as_of, metavar="YYYY-MM-DD")],
    between: Annotated[str, typer.Option("--segments", help="Comma-separated segments (default: lifecycle stages).")]
    = "lifecycle_new,lifecycle_active,lifecycle_reactivated,lifecycle_lapsing,lifecycle_lapsed",
    db: DbOpt = None,
) -> None:
    """Customers moving between segments from --from to --to (none = in none of them)."""
    table = _store(db).flows(start, end, [s.strip() for s in between.split(",") if s.strip()])
    out.print(_frame_table(table.fillna("(none)"), f"flows {start:%Y-%m-%d} -> {end:%Y-%m-%d}"))


@app.command()
def measure(
    segment_name: SegmentOpt,
    data: DataOpt,
    start: Annotated[datetime, typer.Option("--from", parser=parse_as_of, metavar="YYYY-MM-DD",
                                            help="Campaign start: members at this time are compared.")],
    end: Annotated[datetime, typer.Option("--to", parser=parse_as_of, metavar="YYYY-MM-DD",
                                          help="End (exclusive) of the outcome window.")],
    segments_file: SegmentsFileOpt = None,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Lift of a campaign: the segment's members outside the holdout against the holdout, on conversion, orders and
    spend in [--from, --to), with 95% confidence intervals."""
    from serving.lift import measure as measure_lift

    definitions = _segments(segments_file)
    if segment_name not in definitions.names():
        console.print(f"[bold red]error:[/] no segment named {segment_name!r} in {definitions.source}")
        raise typer.Exit(2)
    members = _store(db).membership_at(start, [segment_name])
    with fail_cleanly(), step("Validating"):
        validation = load_validated_for(data, max_bad_share)
    try:
        result = measure_lift(members, definitions[segment_name], validation, start, end)
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
        return
    out.print(_frame_table(result.table(), f"{segment_name}: targeted vs holdout, {start:%Y-%m-%d} to "
                                           f"{end:%Y-%m-%d}"))


@app.command()
def backtest(
    segment_name: SegmentOpt,
    data: DataOpt,
    dates: Annotated[str, typer.Option(help="Comma-separated past dates, e.g. 2026-01-01,2026-03-01.")],
    horizon: Annotated[int, typer.Option(min=1, help="Days after each date that outcomes are counted.")] = 90,
    segments_file: SegmentsFileOpt = None,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Evaluate a rule segment as of past dates: its size and what its members did afterwards (churn rate, orders,
    spend) against the population."""
    from serving.lift import backtest as run_backtest

    definitions = _segments(segments_file)
    try:
        as_ofs = [parse_as_of(d.strip()) for d in dates.split(",") if d.strip()]
    except typer.BadParameter as exc:
        console.print(f"[bold red]error:[/] --dates: {exc}")
        raise typer.Exit(2) from None
    with fail_cleanly(), step("Validating"):
        validation = load_validated_for(data, max_bad_share)
    try:
        with step(f"Backtesting {segment_name} at {len(as_ofs)} dates"):
            table = run_backtest(definitions, segment_name, validation, as_ofs, horizon)
    except (ValueError, KeyError) as exc:
        console.print(f"[bold red]error:[/] {exc.args[0]}")
        raise typer.Exit(2) from None
    wide = table.assign(as_of=table["as_of"].map(lambda d: f"{d:%Y-%m-%d}")).set_index("as_of").T  # a column per date
    out.print(_frame_table(wide.rename_axis("metric").reset_index(),
                           f"{segment_name}: members against the population over the next {horizon} days"))


@app.command()
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the HTML reports to (created).")],
    serve_dir: Annotated[Path | None, typer.Option(
        "--serve-dir", help="The serve folder (segments build): models, feature table, purchase history "
                            "(default: SEGMENTS_SERVE_DIR, else ./serve).")] = None,
    db: DbOpt = None,
    segments_file: SegmentsFileOpt = None,
) -> None:
    """Write the marketer reports: an overview of every segment, a page per segment and per served model; one
    self-contained HTML file each (charts inside, works offline). Open index.html."""
    from serving.cli import use_bentoml_home
    from serving.reports.build import ReportError, check_serve_dir, write_reports
    from serving.state import serve_dir as default_serve_dir

    folder = serve_dir if serve_dir is not None else default_serve_dir()
    try:
        check_serve_dir(folder)  # before the store is opened: a wrong --serve-dir leaves no segments.db behind
    except ReportError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    use_bentoml_home()
    definitions_file = segments_file if segments_file is None else segments_file.resolve()
    _segments(definitions_file)  # a bad file stops here, with every problem listed
    store = _store(db)
    if store.last_refresh() is None:
        out.print("[yellow]note:[/] no refresh yet: run segments refresh; the pages say so")
    try:
        written = write_reports(out_dir, folder, store, definitions_file, progress=lambda m: out.print(f"  {m}"))
    finally:
        store.close()
    out.print(f"[green]{len(written)} report pages written[/] to {out_dir}")
    print((out_dir / "index.html").resolve())


def _frame_table(frame, title: str) -> Table:
    table = Table(*[str(c) for c in frame.columns], title=title)
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d}"
    return str(value)

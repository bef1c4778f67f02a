"""Dynamic segment commands: preview, refresh, the read side (customer, segment, flows), export (audiences for
campaign tools), measure (campaign lift) and backtest. The membership store is SEGMENTS_DB_URL (or --db), by default the SQLite file ./segments.db."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serving.cli.common import (
    AsOfOpt,
    DataOpt,
    DbOpt,
    Engine,
    EngineOpt,
    MaxBadOpt,
    PredictionsOpt,
    SegmentsFileOpt,
    SparkMasterOpt,
    SparkStagingOpt,
    console,
    date_option,
    fail,
    fail_cleanly,
    features_step,
    keep_predictions,
    open_store,
    out,
    out_file_option,
    parse_as_of,
    segment_definitions,
    spark_job,
    step,
    validated,
)

SegmentOpt = Annotated[str, typer.Option("--segment", help="Segment name.")]
AliasOpt = Annotated[str, typer.Option(help="Registry alias of the models predictive segments read.")]
ModelsOpt = Annotated[bool, typer.Option("--models/--no-models", help="Score with the registered models (needed "
                                                                      "by predictive, look-alike, cluster segments).")]


def _bundle(alias: str, use_models: bool):
    """The registered `alias` models, or None (segments over model outputs are then skipped, with the reason)."""
    if not use_models:
        return None
    from training.bundle import ScoringBundle

    try:
        with step(f"Loading the {alias} models"):
            return ScoringBundle.from_registry(alias)
    except LookupError as exc:
        console.print(f"[yellow]note:[/] {exc}; segments over model outputs are skipped")
        return None
    except ValueError as exc:
        fail(str(exc))


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
    from features.pipeline import feature_batches
    from serving.segments.refresh import check_segment_name, evaluate_batches
    from serving.segments.refresh import preview as preview_segment

    definitions = segment_definitions(segments_file)
    try:
        check_segment_name(definitions, segment)  # before the long evaluation
    except KeyError as exc:
        fail(exc.args[0])
    validation = validated(data, max_bad_share)
    bundle = _bundle(alias, models)
    with fail_cleanly(), step(f"{features_step(as_of)} and evaluating {len(definitions.names())} segment "
                              "definitions"):  # batch by batch: only what the segments read is kept
        population, _ = evaluate_batches(definitions, feature_batches(validation, as_of), bundle)
    customers = population.rows
    try:
        size, members, _ = preview_segment(definitions, segment, population, sample)
    except LookupError as exc:
        fail(exc.args[0])
    finally:
        population.close()
    out.print(f"[bold]{segment}[/]: {size:,} of {customers:,} customers ({size / max(customers, 1):.1%}) "
              f"as of {as_of:%Y-%m-%d}")
    out.print(frame_table(members, f"sample of {len(members)} members"))


def refresh(
    data: DataOpt,
    as_of: AsOfOpt,
    segments_file: SegmentsFileOpt = None,
    db: DbOpt = None,
    alias: AliasOpt = "champion",
    models: ModelsOpt = True,
    max_bad_share: MaxBadOpt = 0.05,
    predictions: PredictionsOpt = None,
    engine: EngineOpt = Engine.duckdb,
    spark_master: SparkMasterOpt = None,
    spark_staging: SparkStagingOpt = None,
) -> None:
    """Evaluate every segment for every customer as of --as-of; record entries and exits with their causes. The
    models' scores go to the prediction log."""
    from features.pipeline import feature_batches
    from serving.predictions import prediction_folder
    from serving.segments.refresh import (
        RefreshOrderError,
        check_order,
        evaluate_batches,
        refresh_population,
    )

    definitions = segment_definitions(segments_file)
    store = open_store(db)
    try:
        check_order(store.current.last_refresh(), as_of)  # before the long evaluation
        if engine is Engine.spark:
            validation = validated(data, max_bad_share)
            bundle = _bundle(alias, models)
            from serving.spark_batch import population

            with spark_job(spark_master, spark_staging) as (spark, staging), step(
                    f"Evaluating {len(definitions.names())} segment definitions on Spark"):
                evaluated, features = population(spark, definitions, validation, as_of, bundle, staging)
        else:
            validation = validated(data, max_bad_share)
            bundle = _bundle(alias, models)
            with fail_cleanly(), step(f"{features_step(as_of)} and evaluating {len(definitions.names())} segment "
                                      "definitions"):  # batch by batch: only what a refresh reads is kept
                evaluated, features = evaluate_batches(definitions, feature_batches(validation, as_of), bundle)
        validation.con.close()  # its buffers are not needed to record the changes: memory for the store's reads
        with step(f"Recording the changes of {evaluated.rows:,} customers"):
            report = refresh_population(store, definitions, evaluated, as_of)
    except RefreshOrderError as exc:
        fail(str(exc))
    try:
        _refresh_summary(report, store, as_of)
        if bundle is not None and evaluated.rows:
            keep_predictions(prediction_folder(predictions), evaluated.path, bundle, features, as_of)
    finally:
        evaluated.close()


def _refresh_summary(report, store, as_of: datetime) -> None:
    out.print(frame_table(report.sizes, f"Segments as of {as_of:%Y-%m-%d} ({store.display_url})"))
    for name, reason in report.skipped.items():
        out.print(f"[yellow]not evaluated[/] {name}: {reason}")
    if report.kept_newer:
        out.print(f"{report.kept_newer:,} customers kept the membership events gave them after "
                  f"{as_of:%Y-%m-%d %H:%M} (newer than this refresh)")
    if report.reconciled:
        out.print(f"{report.reconciled:,} customers moved by events during the refresh: their changes were "
                  f"computed again against the store")
    if report.written:
        out.print(f"[green]{report.changes:,} entries and exits recorded[/] in the membership log")
    else:
        out.print("Nothing new: this as_of was already refreshed with these definitions")


def customer(
    customer_id: Annotated[str, typer.Argument(help="Customer id.")],
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="History rows to show (newest first).")] = 20,
) -> None:
    """A customer's current segments and their history of entries and exits with causes."""
    from serving.reports.segment_pages import cause_text

    info = open_store(db).current.customer(customer_id)
    if not info["segments"] and not info["history"]:
        fail(f"customer {customer_id!r} has no membership record (refresh first?)")
    out.print(f"[bold]{customer_id}[/] is in: " + (", ".join(s["segment"] for s in info["segments"]) or "no segment"))
    table = Table("at", "segment", "change", "cause", title="history (newest first)")
    for row in info["history"][:limit]:
        table.add_row(f"{row['at']:%Y-%m-%d %H:%M}", row["segment"], row["change"], cause_text(row["cause"]))
    out.print(table)


FromOpt = Annotated[datetime | None, date_option("--from", "Start of the daily entries/exits table.")]
ToOpt = Annotated[datetime | None, date_option("--to", "End (exclusive) of the daily table.")]


def segment(
    name: Annotated[str, typer.Argument(help="Segment name.")],
    db: DbOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    members: Annotated[int, typer.Option(min=0, help="Members to list (a page).")] = 0,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many members (paging).")] = 0,
) -> None:
    """A segment's exact size, a page of members, and entries, exits and size per day."""
    store = open_store(db)
    out.print(f"[bold]{name}[/]: {store.current.segment_size(name):,} members")
    if members:
        page = store.current.members(name, limit=members, offset=offset)
        out.print(", ".join(m["customer_id"] for m in page) or "(no members on this page)")
    if start is not None and end is not None:
        out.print(frame_table(store.changes.daily_changes(name, start, end), "entries, exits and size per day"))


def flows(
    start: Annotated[datetime, date_option("--from", "Start of the period.")],
    end: Annotated[datetime, date_option("--to", "End (exclusive) of the period.")],
    between: Annotated[str, typer.Option("--segments", help="Comma-separated segments (default: lifecycle stages).")]
    = "lifecycle_new,lifecycle_active,lifecycle_reactivated,lifecycle_lapsing,lifecycle_lapsed",
    db: DbOpt = None,
) -> None:
    """Customers moving between segments from --from to --to (none = in none of them)."""
    table = open_store(db).changes.flows(start, end, [s.strip() for s in between.split(",") if s.strip()])
    out.print(frame_table(table.fillna("(none)"), f"flows {start:%Y-%m-%d} -> {end:%Y-%m-%d}"))


def export(
    segment: SegmentOpt,
    out_file: Annotated[Path, out_file_option("File to write: .csv, .parquet or .jsonl (the format).")],
    changes_since: Annotated[datetime | None, date_option(
        "--changes-since", "Export the entries and exits logged at or after this moment instead of the members.")]
    = None,
    include_holdout: Annotated[bool, typer.Option(
        "--include-holdout", help="Keep the holdout in (a column in_holdout says who); by default a campaign "
                                  "audience leaves it out.")] = False,
    fields: Annotated[str, typer.Option(
        help="Comma-separated values to add per customer, from what they were last evaluated on (e.g. "
             "churn_probability,churn_band).")] = "",
    db: DbOpt = None,
    segments_file: SegmentsFileOpt = None,
) -> None:
    """Write a segment's audience (its current members, or its entries and exits since a moment) to a file for a
    campaign tool, in constant memory; the store position it reflects is written beside it (FILE.export.json)."""
    from serving.segments.export import (
        ExportError,
        ExportRequest,
        SegmentExport,
        holdout_percent_of,
        write_export,
    )

    try:
        request = ExportRequest(segment, holdout_percent_of(segment_definitions(segments_file), segment),
                                include_holdout, changes_since,
                                tuple(f.strip() for f in fields.split(",") if f.strip()))
        with SegmentExport(open_store(db), request) as export, step(f"Exporting {segment}"):
            position = write_export(export, out_file)
    except (ExportError, OSError) as exc:
        fail(str(exc))
    what = "entries and exits" if changes_since else "members"
    holdout = ("holdout included (column in_holdout)" if include_holdout
               else f"{position.held_out:,} held-out customers left out ({position.holdout_percent:g}% holdout)")
    out.print(f"{out_file}: {position.rows:,} {what} of {segment}; {holdout}; as of log position "
              f"{position.log_seq:,}, refresh {position.refresh_id or '-'} ({position.refresh_as_of or 'none'}); "
              f"position in {out_file.name}.export.json")


def subscribe(
    subscriptions_file: Annotated[Path, typer.Option("--file", help="Subscriptions YAML (name -> url, segments, "
                                                                     "changes, secret_env).")],
    db: DbOpt = None,
    segments_file: SegmentsFileOpt = None,
) -> None:
    """Make the store's webhook subscriptions those of a YAML file: from then on every entry or exit of their
    segments is queued for delivery in the same transaction (see segments deliver)."""
    from serving.segments.delivery import SubscriptionError, load_subscriptions, sync_subscriptions

    try:
        wanted = load_subscriptions(subscriptions_file, segment_definitions(segments_file))
    except SubscriptionError as exc:
        fail(str(exc))
    counts = sync_subscriptions(open_store(db), wanted)
    for sub in wanted:
        out.print(f"{sub.name}: {', '.join(sub.changes)} of {', '.join(sub.segments)} -> {sub.url} "
                  f"(signed with ${sub.secret_env})")
    out.print(f"{counts['active']} active subscriptions, {counts['deactivated']} deactivated")


def deliver(
    once: Annotated[bool, typer.Option("--once", help="Deliver what is due now and stop (else keep delivering "
                                                      "until interrupted).")] = False,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts before a change becomes a dead letter.")] = 8,
    redeliver_dead: Annotated[bool, typer.Option("--redeliver", help="First put dead letters back in the queue "
                                                                     "(of --subscription, or all).")] = False,
    subscription: Annotated[str | None, typer.Option(help="With --redeliver: only this subscription.")] = None,
    lease_seconds: Annotated[float, typer.Option(min=1.0, help="A change being posted is left to this deliverer "
                                                               "this long (if it dies, another posts it after).")]
    = 60.0,
    retry_base_seconds: Annotated[float, typer.Option(min=0.0, help="First retry within this many seconds, "
                                                                    "doubling per attempt (full jitter).")] = 2.0,
    db: DbOpt = None,
) -> None:
    """Post queued membership changes to the subscribed webhooks: signed (HMAC-SHA256), with an idempotency key
    per change, each customer's changes in order, retried with backoff, dead letters after --max-attempts."""
    import threading

    from serving.segments.delivery import Deliverer, DeliveryPolicy, outbox_counts, redeliver

    store = open_store(db)
    if redeliver_dead:
        out.print(f"{redeliver(store, subscription):,} dead letters queued again")
    deliverer = Deliverer(store, DeliveryPolicy(max_attempts=max_attempts, lease_s=lease_seconds,
                                                base_delay_s=retry_base_seconds))
    if once:
        report = deliverer.run_once()
        for error in report.errors[:20]:
            console.print(f"[yellow]failed:[/] {error}")
        out.print(f"{report.delivered:,} delivered, {report.retried:,} to retry, {report.dead:,} dead letters")
    else:
        stop = threading.Event()
        console.print("Delivering until interrupted (Ctrl+C)")
        try:
            deliverer.run(stop)
        except KeyboardInterrupt:
            stop.set()
    for name, counts in sorted(outbox_counts(store).items()):
        out.print(f"{name}: " + ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items())))


def measure(
    segment_name: SegmentOpt,
    data: DataOpt,
    start: Annotated[datetime, date_option("--from", "Campaign start: members at this time are compared.")],
    end: Annotated[datetime, date_option("--to", "End (exclusive) of the outcome window.")],
    segments_file: SegmentsFileOpt = None,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Lift of a campaign: the segment's members outside the holdout against the holdout, on conversion, orders and
    spend in [--from, --to), with 95% confidence intervals."""
    from serving.segments.lift import measure as measure_lift

    definitions = segment_definitions(segments_file)
    if segment_name not in definitions.names():
        fail(f"no segment named {segment_name!r} in {definitions.source}")
    members = open_store(db).changes.membership_at(start, [segment_name])
    validation = validated(data, max_bad_share)
    try:
        result = measure_lift(members, definitions[segment_name], validation, start, end)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
        return
    out.print(frame_table(result.table(), f"{segment_name}: targeted vs holdout, {start:%Y-%m-%d} to "
                                          f"{end:%Y-%m-%d}"))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


campaign_app = typer.Typer(help="Campaigns: a segment, its holdout, a date range, a channel and a goal metric; "
                                "measured against the holdout over time.", no_args_is_help=True)


@campaign_app.command("create")
def campaign_create(
    name: Annotated[str, typer.Option(help="Campaign name (unique).")],
    segment_name: SegmentOpt,
    start: Annotated[datetime, date_option("--from", "Start: the segment's members at this moment are targeted.")],
    end: Annotated[datetime, date_option("--to", "End (exclusive) of the campaign's outcome window.")],
    channel: Annotated[str, typer.Option(help="How members are reached: email, sms, push, ads, app, ...")],
    goal: Annotated[str, typer.Option(help="Goal metric: conversion_rate, mean_orders or mean_spend.")]
    = "conversion_rate",
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    db: DbOpt = None,
    segments_file: SegmentsFileOpt = None,
) -> None:
    """Record a campaign on a segment (its holdout share is kept as it is now)."""
    from serving.segments.campaigns import CampaignError, create_campaign

    try:
        campaign = create_campaign(open_store(db), segment_definitions(segments_file), name, segment_name, start, end,
                                   channel, goal, description)
    except CampaignError as exc:
        fail(str(exc))
    out.print(f"campaign {campaign.name}: {campaign.segment} by {campaign.channel}, {campaign.start:%Y-%m-%d} to "
              f"{campaign.end:%Y-%m-%d}, goal {campaign.goal}, holdout {campaign.holdout_percent:g}%")


@campaign_app.command("list")
def campaign_list(db: DbOpt = None) -> None:
    """Every campaign."""
    import pandas as pd

    from serving.segments.campaigns import list_campaigns

    rows = [vars(c) for c in list_campaigns(open_store(db))]
    out.print(frame_table(pd.DataFrame(rows), "campaigns") if rows else "no campaigns (segments campaign create)")


@campaign_app.command("measure")
def campaign_measure(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    data: DataOpt,
    step_days: Annotated[int, typer.Option(min=1, help="Days between the timeline's checkpoints.")] = 7,
    db: DbOpt = None,
    segments_file: SegmentsFileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """The campaign's lift against its holdout (every metric, 95% intervals that hold for small groups) and its
    goal metric from the start to each checkpoint."""
    from serving.segments.campaigns import CampaignError, get_campaign, measure_campaign

    store = open_store(db)
    try:
        campaign = get_campaign(store, name)
        result = measure_campaign(store, segment_definitions(segments_file), campaign,
                                  validated(data, max_bad_share), step_days)
    except CampaignError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
        return
    out.print(frame_table(result.result.table(), f"{name} ({campaign.segment} by {campaign.channel}): targeted vs "
                                                 f"holdout, {campaign.start:%Y-%m-%d} to {result.through:%Y-%m-%d}"))
    out.print(frame_table(result.timeline, f"{campaign.goal} from the start to each checkpoint"))
    for warning in result.result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


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
    from serving.segments.lift import backtest as run_backtest

    definitions = segment_definitions(segments_file)
    try:
        as_ofs = [parse_as_of(d.strip()) for d in dates.split(",") if d.strip()]
    except typer.BadParameter as exc:
        fail(f"--dates: {exc}")
    validation = validated(data, max_bad_share)
    try:
        with step(f"Backtesting {segment_name} at {len(as_ofs)} dates"):
            table = run_backtest(definitions, segment_name, validation, as_ofs, horizon)
    except (ValueError, KeyError) as exc:
        fail(exc.args[0])
    wide = table.assign(as_of=table["as_of"].map(lambda d: f"{d:%Y-%m-%d}")).set_index("as_of").T  # a column per date
    out.print(frame_table(wide.rename_axis("metric").reset_index(),
                          f"{segment_name}: members against the population over the next {horizon} days"))


def frame_table(frame, title: str) -> Table:
    """A data frame as a rich table: dates as days, floats to four significant digits, NaN as '-'."""
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


COMMANDS = {"preview": preview, "refresh": refresh, "customer": customer, "segment": segment, "flows": flows,
            "export": export, "subscribe": subscribe, "deliver": deliver, "campaign": campaign_app,
            "measure": measure, "backtest": backtest}

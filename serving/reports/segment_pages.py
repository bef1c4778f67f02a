"""The data of the overview and segment pages, from the membership store and the serve folder. No HTML here.

Where the figures come from:
- sizes now: the store's current membership; sizes at each refresh: the log (`membership_at` the refresh's as_of);
- shares: of the customers the last refresh evaluated;
- holdout lift: `serving.segments.lift.measure` on the members at the previous refresh, purchases over [previous refresh,
  last refresh), counted in the serve folder's history (the clean tables `segments build` wrote);
- entries and exits per day: `store.daily_changes`; flows: who entered came from which segments at the previous
  refresh, who left went to which (membership from the log);
- profiles: the serve folder's feature table, members (now) against every customer in it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.ticker import FuncFormatter
from sqlalchemy import select

from features.catalog import FEATURES_BY_NAME
from features.io import duckdb_memory, quote_ident, quote_literal, working_database
from features.segments import Condition, Group, Segment, SegmentRef, SegmentSet, label_of
from features.time import utc_now
from serving.explain.reasons import attribute_of, format_value
from serving.reports.render import as_datetime, number, signed_percent
from serving.segments.store import SegmentStore, daily_changes, refreshes, sizes_at
from training import plots

PROFILE_ROWS = 8
MIN_PROFILE_MEMBERS = 5  # below this a member average describes a handful of people, not a segment
RECENT_LOG_ROWS = 25
NO_REFRESH = "no refresh yet: run segments refresh"
SIGNIFICANCE = 0.05


# ---------------------------------------------------------------------------------------------------------------
# Refreshes and sizes


def refresh_history(store: SegmentStore) -> pd.DataFrame:
    """Every batch refresh in recording order: as_of, customers, changes, recorded_at."""
    query = select(refreshes.c.as_of, refreshes.c.customers, refreshes.c.changes,
                   refreshes.c.recorded_at).order_by(refreshes.c.id)
    with store.db.engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    frame = pd.DataFrame(rows, columns=["as_of", "customers", "changes", "recorded_at"])
    for column in ("as_of", "recorded_at"):
        frame[column] = pd.to_datetime(frame[column])
    # The same as_of refreshed again (new definitions) is one point in time.
    return frame.drop_duplicates("as_of", keep="last").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# A definition in words


@dataclass
class Clause:
    """One line of a definition: its words, the segment it refers to (for a link) and its sub-clauses."""

    text: str  # with `segment`, the words before the segment's name
    parts: list[Clause] = field(default_factory=list)
    segment: str | None = None

    @property
    def words(self) -> str:
        return f"{self.text} {self.segment}" if self.segment else self.text


_OPERATOR_WORDS = {">": "more than", ">=": "at least", "<": "less than", "<=": "at most", "==": "is",
                   "!=": "is not", "in": "is one of", "not in": "is none of"}


def definition_clauses(segment: Segment) -> list[Clause]:
    """The conditions of `segment` as nested clauses a marketer reads ("Purchases in the last 14 days: at least
    2"); all/any/not become "all of", "any of", "not"."""
    if segment.kind == "lookalike" and isinstance(segment.when, Condition):
        seed = segment.when.field.removeprefix("lookalike_").removesuffix("_percentile").replace("_", " ")
        reach = 100 - float(segment.when.value)
        return [Clause(f"Among the {reach:g}% of customers the look-alike model finds most like {seed}")]
    if segment.kind == "cluster" and segment.cluster_id is not None:
        return [Clause(f"Assigned to behavioural cluster {segment.cluster_id} by the cluster model")]
    if segment.when is None:
        return [Clause("One segment per behavioural cluster of the cluster model")]
    clause = _clause(segment.when)
    return clause.parts if isinstance(segment.when, Group) and segment.when.mode == "all" else [clause]


def _clause(node) -> Clause:
    if isinstance(node, Group) and node.mode == "not" and isinstance(node.parts[0], SegmentRef):
        return Clause("Not a member of the segment", segment=node.parts[0].segment)
    if isinstance(node, Group):
        head = {"all": "All of:", "any": "Any of:", "not": "Not:"}[node.mode]
        return Clause(head, [_clause(part) for part in node.parts])
    if isinstance(node, SegmentRef):
        return Clause("Member of the segment", segment=node.segment)
    return Clause(condition_text(node))


def condition_text(condition: Condition) -> str:
    """One condition in words: "Purchases in the last 14 days: at least 2", "Churn risk band: is high"."""
    label, op, value = label_of(condition.field), condition.op, condition.value
    if op == "is null":
        return f"{label}: unknown"
    if op == "is not null":
        return f"{label}: known"
    if op in ("in top", "in bottom"):
        return f"{label}: in the {op.removeprefix('in ')} {value:g}% of customers"
    if op == "between":
        low, high = (format_value(condition.field, v) for v in value)
        return f"{label}: between {low} and {high}"
    if op in ("in", "not in"):
        return f"{label}: {_OPERATOR_WORDS[op]} {', '.join(format_value(condition.field, v) for v in value)}"
    return f"{label}: {_OPERATOR_WORDS[op]} {format_value(condition.field, value)}"


# ---------------------------------------------------------------------------------------------------------------
# Holdout lift between the last two refreshes


@dataclass
class Lift:
    """The holdout lift of one segment, or why it was not measured (`measurement` None, `reason` set)."""

    measurement: object | None = None  # serving.segments.lift.Measurement
    reason: str = ""

    @property
    def conversion(self):
        """The conversion-rate comparison (serving.segments.lift.Comparison) or None."""
        if self.measurement is None:
            return None
        return self.measurement.comparison("conversion_rate")


def purchase_history(serve_dir: Path, spill: Path):
    """The clean tables the serve folder was built from (history.duckdb) as a ValidationResult, or None when the
    folder has none. `serving.segments.lift` counts purchases in its transactions. `spill`: a folder the caller
    removes, where the working database lives and spills."""

    from features.validate import ValidationResult
    from serving.segments.events import HISTORY_FILE

    path = Path(serve_dir) / HISTORY_FILE
    if not path.exists():
        return None
    # Within the report's limit: with DuckDB's default, most of the machine, counting a window's purchases among 40M
    # transactions kept 0.9 GB of a report's memory at 4M customers.
    con = working_database(REPORT_DUCKDB_MEMORY, spill)
    con.execute("ATTACH ? AS history (READ_ONLY)", [str(path)])
    tables = [row[0] for row in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'history'").fetchall()]
    columns = {}
    for table in tables:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM history.{table}")
        columns[table] = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    empty = pd.DataFrame()
    return ValidationResult(con, tables, columns, empty, empty, {}, {}, {t: str(path) for t in tables},
                            utc_now(), 0.0)


def lift_problem(history, window: tuple[datetime, datetime] | None) -> str | None:
    """Why no segment's holdout lift can be measured over `window` (None when it can)."""
    from training.labels import data_end

    if window is None:
        return "not measured yet: needs two refreshes"
    if history is None or "transactions" not in history.tables:
        return "not measured: the serve folder has no purchase history (rebuild it: segments build)"
    last_purchase, (start, end) = data_end(history), window
    if last_purchase is None or end > last_purchase + timedelta(days=1):
        return (f"not measured: the purchase history ends {last_purchase or 'before it starts'}, before the window "
                f"{start:%Y-%m-%d} to {end:%Y-%m-%d} ends (rebuild the serve folder)")
    return None


def holdout_lift(segment: Segment, members: Membership, history, window: tuple[datetime, datetime],
                 activity: pd.DataFrame) -> Lift:
    """Lift of `segment` over `window` (start, end): its `members` at the start (the previous refresh), targeted
    against the holdout, purchases counted in `history` (`activity`: its purchases in the window, counted once for
    every segment). Says why when it cannot be measured."""
    from serving.segments.lift import group_outcomes, measure_groups

    start, end = window
    targeted, holdout = group_outcomes(segment, members.member_chunks(segment.name), history, start, end, activity)
    count, held = len(targeted) + len(holdout), len(holdout)
    if not count:
        return Lift(reason=f"not measured: no members on {start:%Y-%m-%d}")
    if held in (0, count):
        group = "none" if held == 0 else "all"
        return Lift(reason=f"not measured: {group} of its {count:,} members on {start:%Y-%m-%d} fell in its "
                           f"{segment.holdout_percent:g}% holdout, so there is no comparison yet")
    try:
        return Lift(measure_groups(segment, start, end, targeted, holdout))
    except ValueError as exc:
        return Lift(reason=f"not measured: {exc}")


def lift_words(lift: Lift) -> str:
    """The conversion lift in one line: "+12% (95% CI +3% to +21%), p = 0.01: unlikely to be chance".

    The interval is the relative lift's own (`serving.segments.lift.compare_rates`: both groups' rates are
    estimates); the p-value is Fisher's exact test of the difference in conversion rate; a small group says so."""
    comparison = lift.conversion
    if comparison is None:
        return lift.reason
    if comparison.holdout <= 0:
        return (f"holdout converted 0%, targeted {comparison.targeted:.0%}: no relative lift "
                f"(difference {comparison.difference * 100:+.1f} points)")
    lift_text, interval, verdict = lift_parts(lift)
    warnings = getattr(lift.measurement, "warnings", ())
    return f"{lift_text} {interval}, {verdict}" + "".join(f" ({w})" for w in warnings)


def lift_parts(lift: Lift) -> tuple[str, str, str] | None:
    """(lift, interval, verdict) of `lift_words` for a layout in lines; None when not measured."""
    comparison = lift.conversion
    if comparison is None or comparison.holdout <= 0:
        return None
    low, high = comparison.relative_ci_low, comparison.relative_ci_high
    interval = ("(no 95% CI: no targeted member bought)" if math.isnan(low)
                else f"(95% CI {signed_percent(low)} to {signed_percent(high)})")
    return signed_percent(comparison.lift), interval, p_value_words(comparison.p_value)


def p_value_words(p: float) -> str:
    if p is None or math.isnan(p):
        return "no test possible (no variation)"
    shown = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    verdict = "unlikely to be chance" if p < SIGNIFICANCE else "could be chance"
    return f"{shown}: {verdict}"


# ---------------------------------------------------------------------------------------------------------------
# Campaigns on a segment: lift against the holdout kept at creation, and its goal metric over time


@dataclass
class CampaignResult:
    campaign: object  # serving.segments.campaigns.Campaign
    measured: object | None = None  # serving.segments.campaigns.CampaignMeasurement
    reason: str = ""  # why not measured
    chart: str = ""

    @property
    def goal(self):
        """The goal metric's comparison over the whole measured window (serving.segments.lift.Comparison)."""
        if self.measured is None:
            return None
        return self.measured.result.comparison(self.campaign.goal)

    def words(self) -> str:
        """"targeted 31.0%, holdout 24.0%: +7.0 points (95% CI -2.1 to +15.3 points), p = 0.140: could be chance"."""
        c = self.goal
        if c is None:
            return self.reason
        if self.campaign.goal == "conversion_rate":
            value, change = (lambda v: f"{v:.1%}"), (lambda v: f"{v * 100:+.1f} points")
        else:
            value, change = (lambda v: f"{v:,.2f}"), (lambda v: f"{v:+,.2f}")
        warnings = "".join(f" ({w})" for w in self.measured.result.warnings)
        return (f"targeted {value(c.targeted)}, holdout {value(c.holdout)}: {change(c.difference)} (95% CI "
                f"{change(c.ci_low)} to {change(c.ci_high)}), {p_value_words(c.p_value)}{warnings}")


def campaign_results(store: SegmentStore, definitions: SegmentSet, history) -> dict[str, list[CampaignResult]]:
    """segment -> its campaigns, each measured on the serve folder's purchase history (or why not)."""
    from serving.segments.campaigns import CampaignError, list_campaigns, measure_campaign

    out: dict[str, list[CampaignResult]] = {}
    for campaign in list_campaigns(store):
        result = CampaignResult(campaign)
        if history is None or "transactions" not in history.tables:
            result.reason = "not measured: the serve folder has no purchase history (rebuild it: segments build)"
        else:
            try:
                result.measured = measure_campaign(store, definitions, campaign, history)
                result.chart = campaign_chart(result.measured)
            except CampaignError as exc:
                result.reason = f"not measured: {exc}"
        out.setdefault(campaign.segment, []).append(result)
    return out


def campaign_chart(measured) -> str:
    """The goal metric's difference (targeted - holdout) from the start to each checkpoint, with its 95% interval."""
    campaign, timeline = measured.campaign, measured.timeline
    rate = campaign.goal == "conversion_rate"
    scale = 100 if rate else 1
    fig, ax = plots.figure(f"{campaign.name}: {campaign.goal.replace('_', ' ')}, targeted minus holdout",
                           "Measured from the start to", "Difference (points)" if rate else "Difference",
                           height=3.0, subtitle="the band is the 95% interval; above zero the campaign is ahead")
    ax.fill_between(timeline["through"], timeline["ci_low"] * scale, timeline["ci_high"] * scale,
                    color=plots.MAIN, alpha=0.15, label="95% interval")
    ax.plot(timeline["through"], timeline["difference"] * scale, "o-", color=plots.MAIN, label="difference")
    ax.axhline(0, color=plots.TEXT_COLOUR, linewidth=0.8)
    plots.date_axis(ax)
    ax.legend(loc="upper left", fontsize=9)
    return plots.svg(fig)


# ---------------------------------------------------------------------------------------------------------------
# The overview


@dataclass
class SegmentSummary:
    """One row of the overview (and the head of a segment page)."""

    name: str
    kind: str
    description: str
    clauses: list[Clause]
    evaluated: bool
    reason: str = ""  # why not evaluated
    size: int | None = None
    share: float | None = None
    history: list[tuple[datetime, int]] = field(default_factory=list)  # size at each refresh
    lift: Lift = field(default_factory=Lift)
    parent: str | None = None  # the definition a cluster segment was expanded from

    @property
    def change(self) -> int | None:
        """Members gained since the previous refresh (None with fewer than two)."""
        return self.history[-1][1] - self.history[-2][1] if len(self.history) >= 2 else None

    @property
    def change_share(self) -> float | None:
        if self.change is None or self.history[-2][1] == 0:
            return None
        return self.change / self.history[-2][1]

    @property
    def sparkline(self) -> str:
        sizes = [size for _, size in self.history]
        label = "Members at each refresh: " + ", ".join(f"{m:%Y-%m-%d} {s:,}" for m, s in self.history)
        return plots.sparkline(sizes, label=label)

    @property
    def lift_text(self) -> str:
        return lift_words(self.lift)

    @property
    def lift_parts(self) -> tuple[str, str, str] | None:
        return lift_parts(self.lift)


@dataclass
class Overview:
    summaries: list[SegmentSummary]
    refreshes: pd.DataFrame  # as_of, customers, changes, recorded_at
    customers: int | None  # evaluated at the last refresh
    lift_window: tuple[datetime, datetime] | None
    steps: pd.DataFrame  # the log's daily_steps, every segment
    sizes_chart: str = ""
    _memberships: Memberships = field(default_factory=lambda: Memberships(), repr=False)
    _last_change: datetime | None = field(default=None, repr=False)  # the log's latest `at`, read once

    def members_at(self, store: SegmentStore, moment: datetime | None) -> Membership:
        """Each segment's members at `moment` (None: now), from the store, read once per moment for all pages. At
        or after the log's latest change that is the membership now, read from the membership table (written with
        the log in one transaction) instead of ranking the whole log."""
        if moment is not None:
            if self._last_change is None:
                self._last_change = store.changes.last_at() or datetime.min
            if moment >= self._last_change:
                moment = None
        return self._memberships.at(store, moment)

    def close(self) -> None:
        self._memberships.close()

    @property
    def refreshed(self) -> bool:
        return not self.refreshes.empty

    @property
    def last_as_of(self) -> datetime | None:
        return as_datetime(self.refreshes["as_of"].iloc[-1]) if self.refreshed else None


REPORT_DUCKDB_MEMORY = "512MB"  # the report's memberships and profile joins: beyond it DuckDB works on disk
MEMBER_CHUNK = 100_000  # members whose outcomes a holdout lift counts at once


class Memberships:
    """Each segment's members at the moments a report reads, in a DuckDB database in a temporary folder: one table
    of (segment, customer_id) per moment, filled from the store a batch at a time. DuckDB keeps them, and the joins
    the pages ask of them (`flows`, `profiles`), within REPORT_DUCKDB_MEMORY and on disk beyond it, so a report's
    memory does not grow with the customers (held as Arrow tables and joined in memory, it took 1.04 GB at 1M
    customers and 1.58 GB at 2M)."""

    def __init__(self):
        self._folder: tempfile.TemporaryDirectory | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._tables: dict[datetime | None, str] = {}

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:  # made on first use: an overview before any refresh reads no membership
            self._folder = tempfile.TemporaryDirectory(prefix="segments-report-")
            self._con = working_database(REPORT_DUCKDB_MEMORY, Path(self._folder.name))
        return self._con

    def at(self, store: SegmentStore, moment: datetime | None) -> Membership:
        """The members at `moment` (None: now, from the membership table; else ranked from the log)."""
        if moment not in self._tables:
            table = f"members_{len(self._tables)}"
            self.con.execute(f"CREATE TABLE {table} (segment VARCHAR, customer_id VARCHAR)")
            batches = (store.current.member_pair_batches() if moment is None else
                       store.changes.membership_batches_at(moment))
            for batch in batches:
                self.con.register("arrived", batch)
                self.con.execute(f"INSERT INTO {table} SELECT segment, customer_id FROM arrived")
                self.con.unregister("arrived")
            self._tables[moment] = table
        return Membership(self.con, self._tables[moment])

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._folder.cleanup()
            self._con, self._tables = None, {}


@dataclass(frozen=True)
class Membership:
    """Each segment's members at one moment: a table of (segment, customer_id) in `con` (`Memberships`)."""

    con: duckdb.DuckDBPyConnection
    table: str

    def member_chunks(self, name: str, rows: int = MEMBER_CHUNK) -> Iterator[np.ndarray]:
        """The ids of segment `name`'s members, `rows` at a time."""
        reader = self.con.sql(f"SELECT customer_id FROM {self.table} WHERE segment = $name",
                              params={"name": name}).to_arrow_reader(rows)
        for batch in reader:
            yield batch.column(0).to_numpy(zero_copy_only=False)


def listed_segments(definitions: SegmentSet, usable: SegmentSet, skipped: dict[str, str]) -> list[tuple]:
    """(segment, evaluated, reason, parent) for every definition in file order; a cluster definition is replaced
    by the cluster segments it expanded to (when a cluster model is loaded)."""
    listed = []
    for segment in definitions:
        expanded = [s for s in usable if s.kind == "cluster" and s.cluster_id is not None
                    and s.name.startswith(f"{segment.name}_")] if segment.kind == "cluster" else []
        if expanded:
            listed += [(s, True, "", segment.name) for s in expanded]
        elif segment.name in usable.segments:
            listed.append((usable[segment.name], True, "", None))
        else:
            listed.append((segment, False, skipped.get(segment.name, "not evaluated"), None))
    return listed


def overview(store: SegmentStore, definitions: SegmentSet, usable: SegmentSet, skipped: dict[str, str],
             history) -> Overview:
    """Every segment of `definitions` with its size now, its size at each refresh, its share and holdout lift.

    `usable` and `skipped` are `definitions.resolve(...)` against what the served models give; `history` is the
    purchase history (`purchase_history`) lift is counted in, or None.
    """
    refreshed = refresh_history(store)
    moments = [as_datetime(m) for m in refreshed["as_of"]]
    steps = store.changes.daily_steps(moments)  # one pass over the log for sizes at refreshes and every page's days
    at_refreshes = sizes_at(steps, moments)
    now = store.current.sizes()  # the membership table: refreshes and events alike
    customers = int(refreshed["customers"].iloc[-1]) if len(refreshed) else None
    window = (moments[-2], moments[-1]) if len(moments) >= 2 else None
    result = Overview([], refreshed, customers, window, steps)
    # Lift: every segment's members at the window's start from one read of the log (shared with the flows on the
    # pages) and the window's purchases counted once, not once per segment.
    from serving.segments.lift import window_activity

    no_lift = lift_problem(history, window)
    activity = window_activity(history, *window) if no_lift is None else None
    for segment, evaluated, reason, parent in listed_segments(definitions, usable, skipped):
        summary = SegmentSummary(segment.name, segment.kind, segment.description, definition_clauses(segment),
                                 evaluated, reason, parent=parent)
        if evaluated and moments:
            summary.size = now.get(segment.name, 0)
            summary.share = summary.size / customers if customers else None
            row = at_refreshes.loc[segment.name] if segment.name in at_refreshes.index else None
            summary.history = [(m, int(row[m]) if row is not None else 0) for m in moments]
            summary.lift = Lift(reason=no_lift) if no_lift is not None else holdout_lift(
                segment, result.members_at(store, window[0]), history, window, activity)
        elif evaluated:
            summary.lift = Lift(reason=NO_REFRESH)
        result.summaries.append(summary)
    result.sizes_chart = sizes_chart(result)
    return result


def sizes_chart(data: Overview) -> str:
    """Horizontal bars: each evaluated segment's share of customers now ("" before the first refresh)."""
    rows = [s for s in data.summaries if s.evaluated and s.share is not None]
    if not rows:
        return ""
    rows = rows[::-1]  # the first segment of the file on top
    fig, ax = plots.figure("Segment sizes now", "Share of customers (%)", "Segment",
                           width=7.5, height=0.32 * len(rows) + 1.2,
                           subtitle=f"of the {data.customers:,} customers evaluated at the last refresh")
    bars = ax.barh([s.name for s in rows], [s.share for s in rows], color=plots.MAIN, height=0.65)
    ax.bar_label(bars, labels=[f"{s.size:,}" for s in rows], padding=3, fontsize=8, color=plots.TEXT_COLOUR)
    plots.percent_axis(ax, "x")
    ax.grid(axis="y", visible=False)
    ax.set_xlim(0, max(s.share for s in rows) * 1.15 or 1)
    return plots.svg(fig)


# ---------------------------------------------------------------------------------------------------------------
# One segment's page


@dataclass
class Flow:
    """Customers who entered from (or exited to) one other segment; segment None: in no evaluated segment."""

    segment: str | None
    customers: int


@dataclass
class SegmentDetail:
    summary: SegmentSummary
    period: tuple[datetime, datetime] | None  # days shown in the daily charts
    daily: pd.DataFrame  # day, entered, exited, size
    size_chart: str = ""
    changes_chart: str = ""
    profile: pd.DataFrame | None = None  # see `profile`
    profile_chart: str = ""
    profile_note: str = ""
    flow_window: tuple[datetime, datetime] | None = None
    entered: int = 0  # in the flow window
    exited: int = 0
    came_from: list[Flow] = field(default_factory=list)
    went_to: list[Flow] = field(default_factory=list)
    recent: list[dict] = field(default_factory=list)  # at, customer_id, change, cause, source
    campaigns: list[CampaignResult] = field(default_factory=list)  # campaigns on this segment

    @property
    def entered_total(self) -> int:
        return int(self.daily["entered"].sum())

    @property
    def exited_total(self) -> int:
        return int(self.daily["exited"].sum())

    @property
    def last_day(self):
        return self.daily["day"].iloc[-1] if len(self.daily) else None

    def moving_days(self) -> pd.DataFrame:
        """The days with at least one entry or exit."""
        return self.daily[(self.daily["entered"] > 0) | (self.daily["exited"] > 0)]


def segment_detail(store: SegmentStore, summary: SegmentSummary, data: Overview,
                   profiled: tuple[pd.DataFrame | None, str] | None, evaluated_names: list[str],
                   features_as_of: datetime | None = None) -> SegmentDetail:
    """Everything on a segment's page. `profiled`: its `profiles` entry (None: not profiled)."""
    last_change = as_datetime(store.changes.last_at(summary.name))  # the log itself is never read whole
    period = _period(data, last_change)
    daily = daily_changes(data.steps[data.steps["segment"] == summary.name], *period) if period else pd.DataFrame(
        columns=["day", "entered", "exited", "size"])
    detail = SegmentDetail(summary, period, daily)
    if summary.evaluated and period:
        detail.size_chart = size_chart(summary.name, daily, [m for m, _ in summary.history])
        detail.changes_chart = changes_chart(summary.name, daily)
    if summary.evaluated and profiled is not None:
        detail.profile, detail.profile_note = profiled
        if detail.profile is not None and len(detail.profile):
            detail.profile_chart = profile_chart(summary.name, detail.profile, features_as_of)
    if data.lift_window is not None and summary.evaluated:
        start, end = data.lift_window[0], max(data.lift_window[1], last_change or data.lift_window[1])
        detail.flow_window = (start, end)
        detail.entered, detail.exited, detail.came_from, detail.went_to = flows(
            data.members_at(store, start), data.members_at(store, end), summary.name,
            set(evaluated_names))
    detail.recent = recent_changes(store.changes.log(segment=summary.name, newest=RECENT_LOG_ROWS))
    return detail


def _period(data: Overview, last_change: datetime | None) -> tuple[datetime, datetime] | None:
    """From the first refresh's day to the day after the latest change (or refresh)."""
    if not data.refreshed:
        return None
    first = as_datetime(data.refreshes["as_of"].iloc[0])
    last = max(data.last_as_of, last_change or data.last_as_of)
    return first, last + timedelta(days=1)


def flows(before: Membership, after: Membership, name: str, segments: set[str]):
    """(entered, exited, came_from, went_to) of segment `name` between two memberships.

    entered: customers in it after and not before; came_from: for them, the other `segments` they were in before
    (a customer in two counts for both; Flow(None, n): in none); went_to likewise for those who left, with the
    segments they are in after. Largest first.
    """
    others = sorted(segments - {name})
    con = before.con
    entered, came_from = _moved(con, after.table, before.table, name, others)
    exited, went_to = _moved(con, before.table, after.table, name, others)
    return entered, exited, came_from, went_to


def _moved(con, into: str, out_of: str, name: str, others: list[str]) -> tuple[int, list[Flow]]:
    """How many customers are in `name` in membership `into` and not in `out_of`, and for them the `others` they are
    in in `out_of` (Flow(None, n): in none of them)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE movers AS SELECT customer_id FROM {into} WHERE segment = $name "
                f"EXCEPT SELECT customer_id FROM {out_of} WHERE segment = $name", {"name": name})
    counts = dict(con.execute(f"SELECT o.segment, count(*) FROM {out_of} o SEMI JOIN movers m USING (customer_id) "
                              f"WHERE list_contains($others, o.segment) GROUP BY o.segment",
                              {"others": others}).fetchall())
    movers, placed = con.execute(
        f"SELECT (SELECT count(*) FROM movers), count(DISTINCT customer_id) FROM {out_of} o "
        f"SEMI JOIN movers m USING (customer_id) WHERE list_contains($others, o.segment)", {"others": others}).fetchone()
    if movers > placed:
        counts[None] = movers - placed
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, item[0] or ""))
    return movers, [Flow(segment, count) for segment, count in ordered]


def recent_changes(log: pd.DataFrame, limit: int = RECENT_LOG_ROWS) -> list[dict]:
    """The latest `limit` log rows, newest first, with the cause in words."""
    latest = log.sort_values("seq", ascending=False).head(limit)
    return [{"at": as_datetime(row.at), "customer_id": row.customer_id, "change": row.change,
             "cause": cause_text(row.cause), "source": row.source} for row in latest.itertuples()]


def cause_text(cause) -> str:
    """A log row's cause in words (the store keeps a list of flipped conditions, each with its "text"); also the
    `segments customer` command's."""
    if isinstance(cause, list):
        return "; ".join(c.get("text", str(c)) for c in cause) or "re-evaluated"
    if isinstance(cause, dict):
        return cause.get("text", str(cause))
    return str(cause)


# ---------------------------------------------------------------------------------------------------------------
# Profile: what sets the members apart


PROFILE_COLUMNS = ["feature", "label", "group", "members", "everyone", "members_text", "everyone_text",
                   "difference", "in_definition"]
TOP_CATEGORIES = 10  # a text feature's commonest categories compared, by share among everyone


def profiles(features: Path, members: pd.DataFrame | pa.Table, defining: dict[str, set[str]] | None = None,
             segments: list[str] | None = None, rows: int = PROFILE_ROWS) -> dict[str, tuple[pd.DataFrame | None, str]]:
    """What sets each segment's members apart from every customer of the feature table, most different first:
    {segment: (frame of PROFILE_COLUMNS or None, a note saying why there is no profile)}.

    Args:
        features: the serve folder's feature table file (Parquet).
        members: (segment, customer_id) rows, each pair once (a frame or an Arrow table): the segments' members.
        defining: per segment, the features its definition reads (marked in the profile).
        segments: the segments to profile (default: those in `members`).

    Per catalog feature: numbers compare means, yes/no features the share of yes, text features the share of the
    category (of the ten commonest) whose share differs most. `difference` is standardised: (members - everyone) /
    the population's standard deviation (for a share p, sqrt(p (1 - p))). Window variants of one attribute (orders
    in 14, 90, 365 days) keep only the most different, so the rows are distinct attributes.

    The sums are DuckDB's, over the file: one scan for the population, one joined with every segment's members, so
    the table is never held whole (in pandas it was 1.1 GB of the report's memory at 2M customers).
    """
    segments = segments if segments is not None else list(pd.unique(np.asarray(members["segment"])))
    with duckdb.connect(config={"memory_limit": duckdb_memory()}) as con:
        con.register("members", members)
        return profiles_in(con, "members", features, defining, segments, rows)


def profiles_in(con, members: str, features: Path, defining: dict[str, set[str]] | None, segments: list[str],
                rows: int = PROFILE_ROWS) -> dict[str, tuple[pd.DataFrame | None, str]]:
    """`profiles` of the (segment, customer_id) rows of table or view `members` in DuckDB connection `con`."""
    defining = defining or {}
    con.execute(f"CREATE OR REPLACE TEMP VIEW population AS SELECT * FROM read_parquet({quote_literal(str(features))})")
    everyone = _Everyone.of(con)
    stats = _member_stats(con, everyone, members)
    return {segment: (_segment_profile(everyone, stats[segment], defining.get(segment, set()), rows)
                      if segment in stats else (None, "the segment has no members"))
            for segment in segments}


def segment_profiles(store: SegmentStore, data: Overview, features: Path,
                     segments: dict[str, Segment]) -> dict[str, tuple[pd.DataFrame | None, str]]:
    """`profiles` of the evaluated segments' current members against the feature table file `features`; empty
    before the first refresh or without the file."""
    names = [s.name for s in data.summaries if s.evaluated]
    if not data.refreshed or not names or not Path(features).exists():
        return {}
    now = data.members_at(store, None)
    listed = ", ".join(quote_literal(name) for name in names)
    now.con.execute(f"CREATE OR REPLACE TEMP VIEW profiled AS SELECT segment, customer_id FROM {now.table} "
                    f"WHERE segment IN ({listed})")
    return profiles_in(now.con, "profiled", features,
                       {name: segments[name].fields() for name in names if name in segments}, names)


@dataclass
class _Everyone:
    """The population's side of every profile: per catalog feature its kind (number | yes/no | category), and its
    mean and spread, or for a text feature its commonest categories with their shares."""

    kinds: dict[str, str]
    mean: dict[str, float]
    spread: dict[str, float]
    categories: dict[str, list[tuple[str, float]]]  # feature -> [(category, share of the customers who have one)]

    @classmethod
    def of(cls, con) -> _Everyone:
        names = [row[0] for row in con.execute("DESCRIBE population").fetchall() if row[0] in FEATURES_BY_NAME]
        kinds = {name: {"string": "category", "boolean": "yes/no"}.get(FEATURES_BY_NAME[name].dtype, "number")
                 for name in names}
        measured = [name for name in names if kinds[name] != "category"]
        sums = [f"avg({quote_ident(n)}::DOUBLE)" for n in measured] + [
            f"stddev_pop({quote_ident(n)}::DOUBLE)" for n in measured if kinds[n] == "number"]
        values = iter(con.execute(f"SELECT {', '.join(sums) or 'NULL'} FROM population").fetchone())
        mean = {name: _float(next(values)) for name in measured}
        spread = {name: (_float(next(values)) if kinds[name] == "number" else
                         math.sqrt(mean[name] * (1 - mean[name])) if not math.isnan(mean[name]) else math.nan)
                  for name in measured}
        categories = {name: _commonest(con, name) for name in names if kinds[name] == "category"}
        return cls(kinds, mean, spread, {name: top for name, top in categories.items() if top})


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _commonest(con, name: str) -> list[tuple[str, float]]:
    """The TOP_CATEGORIES commonest values of text feature `name` (ties alphabetical) with their shares of the
    customers who have a value."""
    column = quote_ident(name)
    rows = con.execute(f"SELECT {column}::VARCHAR AS value, count(*) AS n, sum(count(*)) OVER () AS present "
                       f"FROM population WHERE {column} IS NOT NULL GROUP BY 1 ORDER BY n DESC, value "
                       f"LIMIT {TOP_CATEGORIES}").fetchall()
    return [(value, n / present) for value, n, present in rows]


def _member_stats(con, everyone: _Everyone, members: str) -> dict[str, dict]:
    """Per segment: its members, how many are in the table (`found`), their mean of every number and yes/no
    feature, and per text feature how many have a value and how many have each of the commonest categories."""
    sums, parameters = ["count(*)", "count(p.customer_id)"], []
    measured = [name for name in everyone.mean]
    sums += [f"avg(p.{quote_ident(name)}::DOUBLE)" for name in measured]
    for name, top in everyone.categories.items():
        column = f"p.{quote_ident(name)}::VARCHAR"
        sums.append(f"count({column})")
        sums += [f"count(*) FILTER (WHERE {column} = ?)" for _ in top]
        parameters += [category for category, _ in top]
    query = (f"SELECT m.segment, {', '.join(sums)} FROM {members} m LEFT JOIN population p "
             f"ON p.customer_id = m.customer_id GROUP BY m.segment")
    stats = {}
    for segment, listed, found, *values in con.execute(query, parameters).fetchall():
        values = iter(values)
        row = {"listed": listed, "found": found, "mean": {name: _float(next(values)) for name in measured},
               "categories": {}}
        for name, top in everyone.categories.items():
            present = next(values)
            row["categories"][name] = (present, [next(values) for _ in top])
        stats[segment] = row
    return stats


def _segment_profile(everyone: _Everyone, stats: dict, defining: set[str], rows: int) -> tuple[pd.DataFrame | None,
                                                                                            str]:
    if stats["found"] < MIN_PROFILE_MEMBERS:
        return None, (f"{stats['found']} of its {stats['listed']:,} members are in the served feature table: too few "
                      f"to profile (at least {MIN_PROFILE_MEMBERS} are needed)")
    found = []
    for name, kind in everyone.kinds.items():
        if kind != "category":
            row = _number_row(name, kind, everyone, stats["mean"][name])
        else:
            row = _category_row(name, everyone, *stats["categories"][name]) if name in everyone.categories else None
        if row is not None:
            spec = FEATURES_BY_NAME[name]
            found.append({**row, "feature": name, "group": spec.group, "in_definition": name in defining})
    if not found:
        return None, "no feature varies across customers"
    frame = pd.DataFrame(found)
    frame["attribute"] = frame["feature"].map(attribute_of)
    frame["strength"] = frame["difference"].abs()
    frame = (frame.sort_values("strength", ascending=False).drop_duplicates("attribute").head(rows)
             .reset_index(drop=True))
    return frame[PROFILE_COLUMNS], ""


def _number_row(name: str, kind: str, everyone: _Everyone, members: float) -> dict | None:
    """A number or yes/no feature's profile row (None when it tells nothing: no spread, no member has a value)."""
    mean, spread = everyone.mean[name], everyone.spread[name]
    if not spread or math.isnan(spread) or math.isnan(members):
        return None
    texts = ((f"{members:.0%} yes", f"{mean:.0%} yes") if kind == "yes/no" else
             (format_value(name, members, digits=1), format_value(name, mean, digits=1)))
    return {"label": label_of(name), "members": members, "everyone": mean, "members_text": texts[0],
            "everyone_text": texts[1], "difference": (members - mean) / spread}


def _category_row(name: str, everyone: _Everyone, present: int, hits: list[int]) -> dict | None:
    """The category whose share among the members who have a value differs most from its share among everyone."""
    if not present:
        return None
    best = None
    for (category, share), hit in zip(everyone.categories[name], hits, strict=True):
        spread = math.sqrt(share * (1 - share))
        if spread == 0:
            continue
        members = hit / present
        difference = (members - share) / spread
        if best is None or abs(difference) > abs(best["difference"]):
            best = {"label": f"{label_of(name)}: {category}", "members": members, "everyone": share,
                    "members_text": f"{members:.0%}", "everyone_text": f"{share:.0%}", "difference": difference}
    return best


def profile_chart(name: str, frame: pd.DataFrame, features_as_of: datetime | None) -> str:
    rows = frame.iloc[::-1]  # most different on top
    when = f" as of {features_as_of:%Y-%m-%d}" if features_as_of else ""
    fig, ax = plots.figure(f"What sets {name} apart",
                           "Members minus all customers (standard deviations)",
                           "Attribute", width=7.5, height=0.42 * len(rows) + 1.3,
                           subtitle=f"averages{when}; right (blue): members higher, left (grey): lower")
    colours = plots.difference_colours(rows["difference"])
    ax.barh([_wrap(label) for label in rows["label"]], rows["difference"], color=colours, height=0.6)
    ax.axvline(0, color=plots.TEXT_COLOUR, linewidth=0.8)
    ax.grid(axis="y", visible=False)
    limit = max(float(rows["difference"].abs().max()) * 1.1, 0.5)
    ax.set_xlim(-limit, limit)
    return plots.svg(fig)


def _wrap(label: str, width: int = 38) -> str:
    if len(label) <= width:
        return label
    cut = label.rfind(" ", 0, width)
    return label if cut < 0 else label[:cut] + "\n" + label[cut + 1:]


# ---------------------------------------------------------------------------------------------------------------
# Charts of a segment over time


def size_chart(name: str, daily: pd.DataFrame, refresh_moments: list[datetime]) -> str:
    """Members at the end of each day, refreshes marked."""
    fig, ax = plots.figure(f"Members of {name} over time", "Date", "Members (customers)", height=3.0)
    ax.step(daily["day"], daily["size"], where="post", color=plots.MAIN, label="members at the end of the day")
    marks = daily[daily["day"].isin(pd.to_datetime([m.date() for m in refresh_moments]))]
    ax.plot(marks["day"], marks["size"], "o", color=plots.MAIN, label="refresh")
    for day_value, size in zip(marks["day"], marks["size"], strict=True):
        ax.annotate(number(size), (day_value, size), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=8, color=plots.TEXT_COLOUR)
    plots.date_axis(ax)
    plots.count_axis(ax)
    ax.set_ylim(0, max(1, int(daily["size"].max())) * 1.2)
    ax.legend(loc="lower right", fontsize=9)
    return plots.svg(fig)


def changes_chart(name: str, daily: pd.DataFrame) -> str:
    """Entries up, exits down, per day."""
    fig, ax = plots.figure(f"Entries and exits of {name} per day", "Date", "Customers per day", height=3.0,
                           subtitle="entries above the line, exits below; the first refresh enters every member")
    ax.bar(daily["day"], daily["entered"], width=0.8, color=plots.POSITIVE, label="entered")
    ax.bar(daily["day"], -daily["exited"], width=0.8, color=plots.NEGATIVE, label="exited")
    ax.axhline(0, color=plots.TEXT_COLOUR, linewidth=0.8)
    plots.date_axis(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{abs(value):,.0f}"))
    ax.legend(loc="upper right", fontsize=9)
    return plots.svg(fig)

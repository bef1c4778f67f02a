"""Campaigns: a segment acted on through a channel over a date range, with a goal metric, measured against its
holdout as the days pass.

A campaign targets the segment's members at its start (from the change log, so a campaign created afterwards is
measured on who was a member then) minus the holdout, the deterministic draw `in_holdout` at the holdout share the
segment had when the campaign was created (kept with it, so editing the YAML later cannot move customers between the
groups). `measure_campaign` gives the lift on every metric over [start, min(end, last data)) with intervals that hold
at small sizes (`serving.segments.lift.measure`), and the goal metric's cumulative lift at each checkpoint since the
start: how the difference and its interval developed over time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from features.segments import SegmentSet
from features.time import naive_utc, utc_now
from features.validate import ValidationResult
from serving.segments.lift import Measurement, measure
from serving.segments.store import campaigns
from training.labels import data_end

GOALS = ("conversion_rate", "mean_orders", "mean_spend")
TIMELINE_COLUMNS = ["through", "targeted", "holdout", "difference", "ci_low", "ci_high", "lift", "p_value"]


class CampaignError(ValueError):
    """A campaign that cannot be created or measured as asked; the message says what to change."""


@dataclass(frozen=True)
class Campaign:
    name: str
    segment: str
    start: datetime
    end: datetime
    channel: str
    goal: str = "conversion_rate"
    holdout_percent: float = 10.0
    description: str = ""


@dataclass
class CampaignMeasurement:
    campaign: Campaign
    through: datetime  # the end of the measured window: the campaign's end, or the last data before it
    result: Measurement
    timeline: pd.DataFrame  # TIMELINE_COLUMNS: the goal metric from the start to each checkpoint

    def to_dict(self) -> dict:
        return {"campaign": {k: (v.isoformat() if isinstance(v, datetime) else v)
                             for k, v in dataclasses.asdict(self.campaign).items()},
                "through": self.through.isoformat(), "lift": self.result.to_dict(),
                "timeline": self.timeline.assign(through=self.timeline["through"].map(datetime.isoformat))
                .astype(object).where(self.timeline.notna(), None).to_dict(orient="records")}


def create_campaign(store, definitions: SegmentSet, name: str, segment: str, start: datetime, end: datetime,
                    channel: str, goal: str = "conversion_rate", description: str = "") -> Campaign:
    """Record a campaign, its holdout share taken from the segment's definition now. Every problem at once."""
    definition = definitions.definition_of(segment)
    problems = []
    if not name.strip():
        problems.append("the campaign needs a name")
    if definition is None:
        problems.append(f"no segment named {segment!r} (defined: {', '.join(definitions.names())})")
    if naive_utc(end) <= naive_utc(start):
        problems.append(f"the end {end:%Y-%m-%d} is not after the start {start:%Y-%m-%d}")
    if not channel.strip():
        problems.append("the channel is empty (email, sms, push, ads, app, ...)")
    if goal not in GOALS:
        problems.append(f"goal must be one of {', '.join(GOALS)}, got {goal!r}")
    if definition is not None and definition.holdout_percent <= 0:
        problems.append(f"segment {segment!r} has no holdout (holdout_percent 0): a campaign on it cannot be "
                        f"measured; set one before the campaign starts")
    if problems:
        raise CampaignError("; ".join(problems))
    campaign = Campaign(name.strip(), segment, naive_utc(start), naive_utc(end), channel.strip(), goal,
                        definition.holdout_percent, description)
    try:
        with store.transaction() as conn:
            conn.execute(campaigns.insert().values(**dataclasses.asdict(campaign), created_at=utc_now()))
    except IntegrityError as exc:
        raise CampaignError(f"a campaign named {campaign.name!r} exists already") from exc
    return campaign


def list_campaigns(store, name: str | None = None) -> list[Campaign]:
    """Every campaign (or the one named `name`), by start."""
    query = select(campaigns).order_by(campaigns.c.start, campaigns.c.name)
    if name is not None:
        query = query.where(campaigns.c.name == name)
    with store.db._read() as conn:
        rows = conn.execute(query).mappings().all()
    fields = [f.name for f in dataclasses.fields(Campaign)]
    return [Campaign(**{k: row[k] for k in fields}) for row in rows]


def get_campaign(store, name: str) -> Campaign:
    found = list_campaigns(store, name)
    if not found:
        raise CampaignError(f"no campaign named {name!r} (segments campaign list)")
    return found[0]


def measure_campaign(store, definitions: SegmentSet, campaign: Campaign, validation: ValidationResult,
                     step_days: int = 7) -> CampaignMeasurement:
    """The campaign's lift over [start, through) and its goal metric at each `step_days` checkpoint (module doc)."""
    last = data_end(validation)
    if last is None or last < campaign.start:
        raise CampaignError(f"no transactions on or after the campaign's start {campaign.start:%Y-%m-%d}: nothing "
                            f"to measure yet")
    through = min(campaign.end, pd.Timestamp(last).to_pydatetime() + timedelta(microseconds=1))
    definition = definitions.definition_of(campaign.segment)
    if definition is None:
        raise CampaignError(f"segment {campaign.segment!r} is no longer defined")
    segment = dataclasses.replace(definition, name=campaign.segment, holdout_percent=campaign.holdout_percent)
    members = store.changes.membership_at(campaign.start, [campaign.segment])
    try:
        result = measure(members, segment, validation, campaign.start, through)
        checkpoints = [campaign.start + timedelta(days=d) for d in range(step_days, (through - campaign.start).days,
                                                                          step_days)]
        rows = [_goal_row(measure(members, segment, validation, campaign.start, moment), campaign.goal, moment)
                for moment in checkpoints]
        timeline = pd.DataFrame([*rows, _goal_row(result, campaign.goal, through)], columns=TIMELINE_COLUMNS)
    except ValueError as exc:
        raise CampaignError(f"campaign {campaign.name!r}: {exc}") from exc
    return CampaignMeasurement(campaign, through, result, timeline)


def _goal_row(result: Measurement, goal: str, moment: datetime) -> dict:
    comparison = result.comparison(goal)
    return {"through": moment, **{k: getattr(comparison, k) for k in TIMELINE_COLUMNS[1:]}}

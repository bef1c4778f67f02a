"""Counterfactuals: the smallest realistic change of a customer's behaviour that reaches a goal (issue 6, item 2).

"What would it take to move this customer out of 'at risk'?" A change is a plan of actions a marketer can prompt
(a purchase, a purchase paid partly with points, an app visit, a web visit, an email click), each realised as RAW
RECORDS: hypothetical transactions and events dated inside a window before the evaluation time, never as edits of
feature values. The customer's feature row is rebuilt from their served history plus those records by the same
feature code as every other path (`EventProcessor.features`), scored by the served bundle and put through the served
segment definitions with the last refresh's thresholds. Hence:

- every proposal is realistic and consistent by construction: one more purchase moves recency, frequency, spend,
  average order value, rhythm and channel shares together, as a real purchase would;
- immutable attributes (age, region, gender, sign-up and loyalty join dates, tier, points balance) cannot change:
  the customers table is never touched, only transactions and events are added;
- the predicted score is what the service would answer if the records were posted (the plan's records are in the
  `/events` request shape).

Timing: the k actions of one kind are spread evenly over the window (one action sits mid-window, two at 1/3 and 2/3),
at noon, so a plan holds for a typical timing inside "within N days", not only for an action taken today. By default
the window is 30 days, shortened to the shortest window the goal's conditions read (14 days for `loyal`).

Search: breadth first by number of actions (1, 2, ... `max_actions`), and within one size by cost (the customer's
effort: a visit is cheaper than a purchase). Sizes up to `exhaustive_actions` (default 2) are searched in full; a
larger size extends the `beam_width` (3) plans of the size below that came closest to the goal by one action. So a
plan of up to `exhaustive_actions + 1` actions has the fewest actions that reach the goal (`fewest_actions` in the
answer) and is the cheapest plan of its size among those tried; a few alternatives of the same size follow. Each
candidate costs one feature rebuild (~50-100 ms on 2 busy cores; scoring is batched): with the five actions and the
defaults at most 5 + 15 + 15 + 15 = 50 candidates, and `max_evaluations` (default 60) caps the rebuilds of a call,
so a call takes at most ~3-6 s and a typical at-risk customer (one action) ~0.4 s. When no plan reaches the goal
the answer says so (`reached: false`), with what was searched and the candidate that came closest.
"""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations_with_replacement

import pandas as pd
import yaml

from features.catalog import FEATURES_BY_NAME
from features.outputs import BANDS, is_model_number
from features.segments import (
    Condition,
    SegmentRef,
    SegmentSet,
    evaluate,
    leaf_mask,
    parse_segments,
    plain,
)
from serving.segments.refresh import run_fields, segment_values

DEFAULT_WINDOW_DAYS = 30
DEFAULT_MAX_ACTIONS = 4
DEFAULT_EXHAUSTIVE_ACTIONS = 2
DEFAULT_BEAM_WIDTH = 3
DEFAULT_MAX_EVALUATIONS = 60
DEFAULT_ALTERNATIVES = 3
EXTRA_EVALUATIONS_FOR_ALTERNATIVES = 12  # after the first plan of a size is found, look this much further for others
SCORING_CHUNK = 6  # candidates rebuilt before one batched scoring
RECORD_ID_PREFIX = "whatif"  # hypothetical record ids never collide with real ones
POINTS_PER_REDEMPTION = 100.0  # the smallest redemption of the programme (the generator redeems 100-500)
GOAL_SEGMENT = "goal"
DEFAULT_GOAL = "leave likely_to_churn"


# ---------------------------------------------------------------------------------------------------------------
# Goals


@dataclass(frozen=True)
class Goal:
    """What the change must achieve: `leave` or `enter` a served segment, or make a `condition` over features and
    scores true (e.g. ``churn_probability < 0.3``). Parse text with `Goal.parse`."""

    kind: str  # leave | enter | condition
    target: str  # segment name or condition text

    @classmethod
    def parse(cls, text: str) -> Goal:
        """'leave likely_to_churn', 'enter vip', or a condition such as 'churn_probability < 0.3'."""
        words = text.strip().split(maxsplit=1)
        if len(words) == 2 and words[0] in ("leave", "enter"):
            return cls(words[0], words[1].strip())
        return cls("condition", text.strip())

    def words(self) -> str:
        return f"{self.kind} segment {self.target}" if self.kind != "condition" else f"make {self.target} true"


@dataclass
class GoalCheck:
    """A goal resolved against the served definitions: what to evaluate, and how to measure progress."""

    goal: Goal
    segments: SegmentSet  # evaluated for the goal (the served set, or the ad hoc condition)
    segment: str  # the segment whose membership is the goal
    want_member: bool
    description: str
    measure: str | None  # a model output that tracks the goal (e.g. churn_probability), else None
    better: str  # higher | lower: the direction of `measure` (or of satisfied conditions) towards the goal
    threshold: float | None
    window_days: int | None  # the shortest window the goal's conditions read

    def met(self, members: pd.DataFrame) -> pd.Series:
        return members[self.segment] == self.want_member

    def progress(self, values: pd.DataFrame, members: pd.DataFrame, thresholds: dict) -> pd.Series:
        """Higher is closer to the goal: the measure (signed), else the number of the segment's conditions that
        point the wanted way."""
        if self.measure is not None:
            sign = 1.0 if self.better == "higher" else -1.0
            return sign * pd.to_numeric(values[self.measure], errors="coerce").fillna(-sign * math.inf)
        leaves = self.segments[self.segment].leaves()
        held = sum(leaf_mask(leaf, values, thresholds, {n: members[n].to_numpy() for n in members.columns})
                   for leaf in leaves)
        return pd.Series(held if self.want_member else len(leaves) - held, index=values.index, dtype=float)


def resolve_goal(goal: Goal | str, served: SegmentSet, skipped: dict[str, str], fields, churn_bands) -> GoalCheck:
    """Check `goal` against the served segments (ValueError naming the problem) and derive its measure."""
    goal = Goal.parse(goal) if isinstance(goal, str) else goal
    if goal.kind == "condition":
        segments = _condition_segments(goal.target, fields)
        segment, want = GOAL_SEGMENT, True
    elif goal.kind in ("leave", "enter"):
        _check_segment_name(goal.target, served, skipped)
        segments, segment, want = served, goal.target, goal.kind == "enter"
    else:
        raise ValueError(f"goal kind {goal.kind!r}: expected leave, enter or condition")
    leaves = _closure_leaves(segments, segment)
    measure, better, threshold = _measure(leaves, want, churn_bands)
    windows = [w for leaf in leaves if isinstance(leaf, Condition) and (w := _window_of(leaf.field))]
    return GoalCheck(goal, segments, segment, want, segments[segment].description or goal.target, measure, better,
                     threshold, min(windows) if windows else None)


def _check_segment_name(name: str, served: SegmentSet, skipped: dict[str, str]) -> None:
    if name in skipped:
        raise ValueError(f"segment {name!r} cannot be evaluated by this service: {skipped[name]}")
    if name not in served.names():
        near = difflib.get_close_matches(name, served.names(), n=1)
        raise ValueError(f"no segment named {name!r}" + (f" (did you mean {near[0]}?)" if near else "")
                         + f"; served segments: {', '.join(served.names())}")


def _condition_segments(condition: str, fields) -> SegmentSet:
    """An ad hoc predictive segment holding `condition`, checked like a segments file (fields, operators, types)."""
    text = yaml.safe_dump({"segments": {GOAL_SEGMENT: {"kind": "predictive", "description": condition,
                                                        "when": condition}}})
    parsed = parse_segments(text, "goal")
    if any(isinstance(leaf, SegmentRef) for leaf in parsed[GOAL_SEGMENT].leaves()):
        raise ValueError(f"goal {condition!r}: to reach a segment write 'enter <segment>'")
    if any(leaf.op in ("in top", "in bottom") for leaf in parsed[GOAL_SEGMENT].leaves()):
        raise ValueError(f"goal {condition!r}: 'in top/bottom N%' needs population thresholds; declare it as a "
                         f"segment, refresh, and use 'enter <segment>'")
    usable, skipped = parsed.resolve(fields)
    if skipped:
        raise ValueError(f"goal {condition!r}: {skipped[GOAL_SEGMENT]}")
    return usable


def _closure_leaves(segments: SegmentSet, name: str) -> list:
    """The conditions of `name` and of the segments it refers to, the target's own first."""
    ordered = [segments[name], *(s for s in segments.closure([name]) if s.name != name)]
    return [leaf for s in ordered for leaf in s.leaves() if isinstance(leaf, Condition)]


def _measure(leaves: list[Condition], want_member: bool, churn_bands: tuple[float, float] | None):
    """(model output, direction towards the goal, threshold) of the first condition over a model output."""
    for leaf in leaves:
        if leaf.field == "churn_band" and leaf.op in ("==", "in") and churn_bands:
            bands = leaf.value if isinstance(leaf.value, list) else [leaf.value]
            lowest = min(BANDS.index(b) for b in bands)
            in_upper = lowest > 0  # the condition holds above a probability edge
            edge = churn_bands[lowest - 1] if in_upper else churn_bands[max(BANDS.index(b) for b in bands)]
            better = "higher" if in_upper == want_member else "lower"
            return "churn_probability", better, edge
        if leaf.op in (">", ">=", "<", "<=") and is_model_number(leaf.field):
            rises = leaf.op in (">", ">=")
            return leaf.field, "higher" if rises == want_member else "lower", float(leaf.value)
    return None, "higher" if want_member else "lower", None


def _window_of(name: str) -> int | None:
    feature = FEATURES_BY_NAME.get(name)
    return feature.window_days if feature is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class Action:
    """One thing a marketer can prompt, in words, with its cost (the customer's effort) and the records it makes.

    `templates`: (kind, payload without id and timestamp) per record; `limit`: the most times in one plan."""

    key: str
    singular: str
    plural: str
    detail: str
    cost: float
    limit: int
    templates: tuple[tuple[str, dict], ...]

    def words(self, count: int) -> str:
        return f"{count} {self.singular if count == 1 else self.plural}{self.detail}"


def action_catalogue(row: dict, typical: dict, columns: dict[str, list[str]], max_actions: int) -> list[Action]:
    """The actions open to this customer (row: their current feature values) with the served data's columns:
    purchases need a transactions table, visits and clicks an events table, redemptions points and membership."""
    out = []
    if "transactions" in columns:
        out.append(_purchase(row, typical, columns["transactions"], max_actions))
        redeem = _redeem(row, typical, columns, max_actions)
        out += [redeem] if redeem else []
    if "events" in columns:
        out += [Action("app_visit", "app visit", "app visits", "", 1.0, max_actions,
                       (("event", {"event_type": "app_open", "channel": "app"}),)),
                Action("web_visit", "web visit", "web visits", "", 1.0, max_actions,
                       (("event", {"event_type": "web_visit", "channel": "web"}),))]
        emails = int(row.get("email_sent_count_90d") or 0)
        if row.get("email_opt_in") is not False and emails > 0:  # a click needs an email received
            out.append(Action("email_click", "email click", "email clicks", " (open and click a campaign email)",
                              1.5, min(max_actions, emails),
                              (("event", {"event_type": "email_open", "channel": "email"}),
                               ("event", {"event_type": "email_click", "channel": "email"}))))
    return out


def typical_order(row: dict, typical: dict) -> dict:
    """The customer's usual order: their average order value, favourite category and channel, items per order
    (the population's typical values when they have none)."""

    def own(name: str, fallback: str | None = None):
        value = row.get(name)
        value = value if value is not None and not pd.isna(value) else row.get(fallback) if fallback else None
        return value if value is not None and not pd.isna(value) else typical.get(name)

    amount = round(float(own("aov_365d", "aov_total") or 0.0), 2)
    earned = row.get("points_earned_365d") or 0.0
    spend = row.get("spend_sum_365d") or 0.0
    rate = earned / spend if row.get("loyalty_member") is True and spend > 0 else 0.0
    return {"amount": amount, "category": own("top_category_365d"), "channel": own("preferred_channel_365d"),
            "quantity": float(max(1, round(float(own("items_per_order_365d") or 1.0)))),
            "discount_amount": 0.0, "is_return": False, "points_earned": float(math.floor(amount * rate)),
            "points_redeemed": 0.0}


def _purchase(row: dict, typical: dict, columns: list[str], max_actions: int) -> Action:
    order = {k: v for k, v in typical_order(row, typical).items() if k in columns}
    where = ", ".join(str(order[k]) for k in ("category", "channel") if order.get(k) is not None)
    return Action("purchase", "purchase", "purchases", f" of about {order['amount']:,.2f}" + (f" ({where})"
                  if where else ""), 3.0, max_actions, (("transaction", order),))


def _redeem(row: dict, typical: dict, columns: dict[str, list[str]], max_actions: int) -> Action | None:
    """A usual purchase paid partly with points, with its reward_redeemed event (how the programme records a
    redemption); only for members whose balance covers it."""
    balance = row.get("points_balance")
    if ("points_redeemed" not in columns["transactions"] or row.get("loyalty_member") is not True
            or balance is None or pd.isna(balance) or balance < POINTS_PER_REDEMPTION):
        return None
    order = {k: v for k, v in typical_order(row, typical).items() if k in columns["transactions"]}
    order["points_redeemed"] = POINTS_PER_REDEMPTION
    templates = [("transaction", order)]
    if "events" in columns:
        templates.append(("event", {"event_type": "reward_redeemed", "channel": order.get("channel"),
                                    "properties": json.dumps({"points": int(POINTS_PER_REDEMPTION)})}))
    return Action("redeem_points", "purchase redeeming points", "purchases redeeming points",
                  f" ({POINTS_PER_REDEMPTION:.0f} points on an order of about {order['amount']:,.2f})", 3.5,
                  min(max_actions, int(balance // POINTS_PER_REDEMPTION)), tuple(templates))


# ---------------------------------------------------------------------------------------------------------------
# Plans


@dataclass
class Plan:
    """A multiset of actions, the records that realise it, and (once evaluated) what the models then say."""

    counts: dict[str, int]
    actions: dict[str, Action]
    records: list[dict]  # store-shape rows: kind, id, customer_id, timestamp, payload
    window_days: int
    predicted: dict = field(default_factory=dict)
    entered: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    reaches_goal: bool = False
    progress: float = -math.inf

    @property
    def size(self) -> int:
        return sum(self.counts.values())

    @property
    def cost(self) -> float:
        return sum(self.actions[k].cost * n for k, n in self.counts.items())

    def words(self) -> str:
        parts = [self.actions[k].words(n) for k, n in self.counts.items()]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed}, within {self.window_days} days"

    def to_dict(self) -> dict:
        records = {"transactions": [], "events": []}
        for r in self.records:
            records["transactions" if r["kind"] == "transaction" else "events"].append(
                {"customer_id": r["customer_id"], **r["payload"]})
        actions = [{"action": k, "count": n, "text": self.actions[k].words(n)} for k, n in self.counts.items()]
        return {"actions": actions,
                "text": self.words(), "size": self.size, "cost": self.cost, "reaches_goal": self.reaches_goal,
                "predicted": self.predicted, "entered": self.entered, "left": self.left, "records": records}


def plan_records(customer_id: str, counts: dict[str, int], actions: dict[str, Action], as_of: datetime,
                 window_days: int) -> list[dict]:
    """The rows realising `counts`: the n actions of one kind at noon on days spread evenly over the window before
    `as_of` (strictly before it, as features read), with ids that cannot collide with real ones."""
    rows = []
    for key, n in counts.items():
        for j in range(n):
            days_before = max(1, round(window_days * (n - j) / (n + 1)))
            day = (as_of - timedelta(days=days_before)).replace(hour=0, minute=0, second=0, microsecond=0)
            moment = day + timedelta(hours=12)
            for t, (kind, template) in enumerate(actions[key].templates):
                ident = f"{RECORD_ID_PREFIX}-{customer_id}-{key}-{j + 1}-{t + 1}"
                id_column = "transaction_id" if kind == "transaction" else "event_id"
                rows.append({"kind": kind, "id": ident, "customer_id": customer_id, "timestamp": moment,
                             "payload": {id_column: ident, "timestamp": moment.isoformat(), **template}})
    return rows


def candidate_counts(actions: list[Action], size: int) -> list[dict[str, int]]:
    """Every multiset of `size` actions within each action's limit, cheapest first (ties: catalogue order)."""
    out = []
    for combo in combinations_with_replacement(range(len(actions)), size):
        counts = Counter(combo)
        if all(n <= actions[i].limit for i, n in counts.items()):
            out.append((sum(actions[i].cost for i in combo), combo,
                        {actions[i].key: n for i, n in sorted(counts.items())}))
    return [counts for _, _, counts in sorted(out, key=lambda item: item[:2])]


# ---------------------------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class SearchLimits:
    """How far the search goes. Sizes up to `exhaustive_actions` are searched in full; each larger size extends the
    `beam_width` plans of the size below that came closest to the goal by one action. `max_evaluations` caps the
    feature rebuilds of one call (with 5 actions and the defaults at most 5 + 15 + 2 x 15 = 50 are planned)."""

    max_actions: int = DEFAULT_MAX_ACTIONS
    exhaustive_actions: int = DEFAULT_EXHAUSTIVE_ACTIONS
    beam_width: int = DEFAULT_BEAM_WIDTH
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    alternatives: int = DEFAULT_ALTERNATIVES

    def words(self) -> str:
        full = min(self.exhaustive_actions, self.max_actions)
        text = f"every plan of up to {full} action{'s' if full > 1 else ''}"
        if self.max_actions > full:
            text += f" and the most promising of up to {self.max_actions}"
        return text


@dataclass
class CounterfactualResult:
    """The answer for one customer and goal; `to_dict()` is the API and customer-page shape."""

    customer_id: str
    as_of: datetime
    goal: GoalCheck
    window_days: int
    current: dict
    plan: Plan | None  # the plan reaching the goal, else the closest tried (None if nothing came closer)
    alternatives: list[Plan]
    actions: list[Action]
    limits: SearchLimits
    evaluations: int
    cut_short: bool  # max_evaluations stopped the search before it tried every planned candidate

    @property
    def reached(self) -> bool:
        return self.plan is not None and self.plan.reaches_goal

    @property
    def fewest_actions(self) -> bool:
        """Every smaller plan was tried, so no plan with fewer actions reaches the goal."""
        return self.reached and self.plan.size <= self.limits.exhaustive_actions + 1

    def message(self) -> str:
        who, goal = self.customer_id, self.goal.goal.words()
        if self.reached:
            return f"{self.plan.words()}: {who} would {goal} ({_score_change(self.current, self.plan.predicted)})"
        tried = (f"the search stopped at max_evaluations ({self.evaluations} rebuilds)" if self.cut_short
                 else self.limits.words() + " tried")
        if not self.actions:
            return f"no action is open to {who} with the served data, so {who} cannot {goal} by a change here"
        closest = (f"; the closest is {self.plan.words()} ({_score_change(self.current, self.plan.predicted)})"
                   if self.plan is not None else "; none of them moves the customer closer")
        return f"no plan found for {who} to {goal} ({tried}){closest}"

    def to_dict(self) -> dict:
        goal = self.goal
        return {
            "customer_id": self.customer_id,
            "as_of": self.as_of.isoformat(),
            "goal": {"kind": goal.goal.kind, "target": goal.goal.target, "text": goal.goal.words(),
                     "description": goal.description, "measure": goal.measure, "better": goal.better,
                     "threshold": goal.threshold},
            "window_days": self.window_days,
            "current": self.current,
            "reached": self.reached,
            "message": self.message(),
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "alternatives": [p.to_dict() for p in self.alternatives],
            "search": {"actions": [{"action": a.key, "text": a.words(1), "cost": a.cost, "limit": a.limit}
                                   for a in self.actions],
                       "evaluations": self.evaluations, "max_actions": self.limits.max_actions,
                       "exhaustive_actions": self.limits.exhaustive_actions,
                       "max_evaluations": self.limits.max_evaluations, "cut_short": self.cut_short,
                       "fewest_actions": self.fewest_actions},
        }


def _score_change(before: dict, after: dict) -> str:
    parts = []
    if before.get("churn_probability") is not None and after.get("churn_probability") is not None:
        parts.append(f"churn probability {before['churn_probability']:.2f} -> {after['churn_probability']:.2f}, "
                     f"band {before['churn_band']} -> {after['churn_band']}")
    measure = before.get("goal_measure")
    if measure and measure != "churn_probability" and after.get("goal_value") is not None:
        parts.append(f"{measure} {before['goal_value']:.2f} -> {after['goal_value']:.2f}")
    return "; ".join(parts) or "scores unchanged"


class Evaluator:
    """Rebuilds, scores and segments one customer's rows under candidate plans (the served code throughout)."""

    def __init__(self, processor, customer_id: str, as_of: datetime, goal: GoalCheck, thresholds: dict):
        self.processor, self.customer_id, self.as_of = processor, customer_id, as_of
        self.goal, self.thresholds = goal, thresholds
        self.evaluations = 0

    def rows(self, plans_records: list[list[dict]]) -> pd.DataFrame:
        """Feature rows, one per list of hypothetical records, scored: what segment conditions read."""
        frames = [self.processor.features(self.customer_id, records, self.as_of) for records in plans_records]
        self.evaluations += sum(1 for records in plans_records if records)
        if any(frame.empty for frame in frames):
            raise ValueError(f"unknown customer {self.customer_id!r}: no customer row in the served history")
        return segment_values(pd.concat(frames, ignore_index=True), self.processor.bundle)

    def judge(self, values: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
        """(served membership, goal met, progress towards the goal) per row of `values`."""
        served = evaluate(self.processor.segments, values, self.thresholds).reset_index(drop=True)
        goal_members = (served if self.goal.segments is self.processor.segments else
                        evaluate(self.goal.segments, values, self.thresholds).reset_index(drop=True))
        values = values.reset_index(drop=True)
        return served, self.goal.met(goal_members), self.goal.progress(values, goal_members, self.thresholds)

    def snapshot(self, values: pd.DataFrame, served: pd.DataFrame, i: int) -> dict:
        row = values.iloc[i]
        out = {"churn_probability": _number(row.get("churn_probability")),
               "churn_band": None if pd.isna(row.get("churn_band")) else str(row.get("churn_band")),
               "segments": sorted(served.columns[served.iloc[i].to_numpy(dtype=bool)])}
        if self.goal.measure is not None:
            out["goal_measure"], out["goal_value"] = self.goal.measure, _number(row.get(self.goal.measure))
        return out


def _number(value) -> float | None:
    value = plain(value)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def counterfactuals(processor, customer_id: str, goal: Goal | str = DEFAULT_GOAL, as_of: datetime | None = None,
                    window_days: int | None = None, limits: SearchLimits | None = None) -> CounterfactualResult:
    """The smallest change of actions that makes `customer_id` reach `goal`, with the predicted new scores.

    processor: the service's `serving.segments.events.EventProcessor` (served state, store, segment definitions).
    goal: a `Goal` or its text: 'leave likely_to_churn' (default: out of 'at risk'), 'enter loyal',
        'enter best_members_lookalike', or a condition over features and scores such as 'churn_probability < 0.6'.
    as_of: the evaluation time; default the customer's current time (the serve folder's as_of, or later if events
        were posted for them). Hypothetical records are dated in the `window_days` before it.
    window_days: the span of the plan ("within N days"); default 30, or the goal's shortest feature window.
    limits: the search's sizes and budget (`SearchLimits`; at most `max_evaluations` rebuilds of ~50 ms each).

    Raises ValueError for an unknown customer, an unknown or unevaluable segment, a malformed condition, or a goal
    the customer already meets.
    """
    limits = limits or SearchLimits()
    thresholds = (processor.store.current.last_refresh() or {}).get("thresholds", {})
    check = _resolved_goal(processor, goal, thresholds)
    as_of = as_of or customer_clock(processor, customer_id)
    window = window_days or min(DEFAULT_WINDOW_DAYS, check.window_days or DEFAULT_WINDOW_DAYS)
    evaluator = Evaluator(processor, customer_id, as_of, check, thresholds)
    values = evaluator.rows([[]])
    served, met, progress = evaluator.judge(values)
    if bool(met.iloc[0]):
        raise ValueError(f"customer {customer_id!r} already meets the goal ({check.goal.words()}) as of "
                         f"{as_of.isoformat()}: nothing to change")
    current = evaluator.snapshot(values, served, 0)
    row = {k: plain(v) for k, v in values.iloc[0].items()}
    actions = action_catalogue(row, processor.state.typical, processor.state.manifest["columns"], limits.max_actions)
    plan, others, cut_short = _search(evaluator, actions, current, float(progress.iloc[0]), window, limits)
    return CounterfactualResult(customer_id, as_of, check, window, current, plan, others, actions, limits,
                                evaluator.evaluations, cut_short)


def _resolved_goal(processor, goal: Goal | str, thresholds: dict) -> GoalCheck:
    churn = next((m for name, m in processor.bundle.models.items() if name.endswith("-churn")), None)
    bands = tuple(churn.config.band_thresholds) if churn is not None else None
    sample = segment_values(processor.state.table.head(1).reset_index(drop=True), processor.bundle)
    check = resolve_goal(goal, processor.segments, processor.skipped, run_fields(sample, processor.bundle), bands)
    missing = [leaf.text for leaf in _closure_leaves(check.segments, check.segment)
               if leaf.op in ("in top", "in bottom") and leaf.text not in thresholds]
    if missing:
        raise ValueError(f"goal {check.goal.words()!r} needs population thresholds ({', '.join(missing)}) and no "
                         f"batch refresh has fitted them: run segments refresh first")
    return check


def customer_clock(processor, customer_id: str) -> datetime:
    """The customer's current time: when the service would evaluate records posted for them now."""
    return processor.clock(customer_id)


def _search(evaluator: Evaluator, actions: list[Action], current: dict, current_progress: float, window: int,
            limits: SearchLimits) -> tuple[Plan | None, list[Plan], bool]:
    """(the cheapest plan of the fewest actions reaching the goal, else the closest tried if it is closer than
    now; alternatives of the same size; whether max_evaluations cut the search short)."""
    by_key = {a.key: a for a in actions}
    closest, previous = None, []
    for size in range(1, limits.max_actions + 1):
        level = (candidate_counts(actions, size) if size <= limits.exhaustive_actions
                 else _extensions(previous, actions, limits.beam_width))
        tried, reached, cut_short = _search_size(evaluator, level, by_key, current, window, limits)
        closest = max([p for p in [closest, *tried] if p is not None and p.progress > current_progress],
                      key=lambda p: p.progress, default=None)
        if reached:  # every smaller size was searched (in full up to exhaustive_actions)
            reached.sort(key=lambda p: p.cost)  # stable: cheapest first, then the order they were tried
            return reached[0], reached[1:limits.alternatives + 1], False
        if cut_short or not tried:
            return closest, [], cut_short
        previous = tried
    return closest, [], False


def _search_size(evaluator: Evaluator, level: list[dict], by_key: dict[str, Action], current: dict, window: int,
                 limits: SearchLimits) -> tuple[list[Plan], list[Plan], bool]:
    """Try the candidates of one size cheapest first, in chunks scored together; after the first plan reaching the
    goal, look a little further for alternatives. Returns (tried, reached, cut short by the budget)."""
    tried: list[Plan] = []
    found_at = None  # evaluations when the first plan of this size reached the goal
    for start in range(0, len(level), SCORING_CHUNK):
        budget = limits.max_evaluations - evaluator.evaluations
        if budget <= 0:
            return tried, [p for p in tried if p.reaches_goal], True
        plans = [Plan(c, by_key, plan_records(evaluator.customer_id, c, by_key, evaluator.as_of, window), window)
                 for c in level[start:start + min(SCORING_CHUNK, budget)]]
        _evaluate(evaluator, plans, current)
        tried += plans
        reached = [p for p in tried if p.reaches_goal]
        found_at = found_at if found_at is not None or not reached else evaluator.evaluations
        if reached and (len(reached) > limits.alternatives
                        or evaluator.evaluations - found_at >= EXTRA_EVALUATIONS_FOR_ALTERNATIVES):
            break
    return tried, [p for p in tried if p.reaches_goal], False


def _extensions(plans: list[Plan], actions: list[Action], beam_width: int) -> list[dict]:
    """The next size's candidates: the `beam_width` plans closest to the goal, each with one more action."""
    out = []
    for plan in sorted(plans, key=lambda p: -p.progress)[:beam_width]:
        for action in actions:
            grown = Counter(plan.counts) + Counter({action.key: 1})
            counts = {a.key: grown[a.key] for a in actions if grown[a.key]}
            if grown[action.key] <= action.limit and counts not in out:
                out.append(counts)
    cost = {a.key: a.cost for a in actions}
    return sorted(out, key=lambda c: sum(cost[k] * n for k, n in c.items()))


def _evaluate(evaluator: Evaluator, plans: list[Plan], current: dict) -> None:
    values = evaluator.rows([p.records for p in plans])
    served, met, progress = evaluator.judge(values)
    before = set(current["segments"])
    for i, plan in enumerate(plans):
        plan.predicted = evaluator.snapshot(values, served, i)
        after = set(plan.predicted["segments"])
        plan.entered, plan.left = sorted(after - before), sorted(before - after)
        plan.reaches_goal, plan.progress = bool(met.iloc[i]), float(progress.iloc[i])

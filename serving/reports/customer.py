"""One customer's page, rendered by the service on request (GET /reports/customers/{id}): scores and the reasons
behind them, current segments and their history with causes, and what would move the customer ("counterfactual").

Everything on the page comes from the service's own objects, so it says what the API says: the feature row is the
event path's (`EventProcessor.features`: served history plus posted events), the scores and reasons are the scorer's,
the segments and history the store's, and the plan `serving.segments.counterfactuals.counterfactuals`.
"""

from __future__ import annotations

import numpy as np

from serving.explain.reasons import format_value
from serving.reports.render import NavLink, Site, render_page, segment_file, site_models
from serving.segments.counterfactuals import DEFAULT_GOAL, Goal, counterfactuals, customer_clock
from training import plots

TOP_REASONS = 5
GOAL_PREFIXES = ("leave ", "enter ")


def customer_page(processor, customer_id: str, goal: str | None = None) -> str:
    """The page's HTML. Raises KeyError for a customer the service does not know (no served or posted record)."""
    as_of = customer_clock(processor, customer_id)
    features = processor.features(customer_id, [], as_of)
    if features.empty:
        raise KeyError(customer_id)
    scored = processor.state.scorer.results(features, explain=True, top_k=TOP_REASONS)[0]
    membership = processor.store.current.customer(customer_id)
    current = [s["segment"] for s in membership["segments"]]
    goal = goal or default_goal(current)
    return render_page(
        "customer.html.j2", title=f"Customer {customer_id}", site=customer_site(processor), page_file="",
        customer_id=customer_id, as_of=as_of, scored=scored, reasons=reason_tables(scored),
        churn_chart=churn_reasons_chart(scored), membership=membership,
        segment_links={name: "../" + segment_file(name) for name in processor.segments.names()},
        goals=goal_choices(processor, current, goal), goal=goal, ordinal=ordinal, whatif=whatif(processor, customer_id, goal, as_of))


def ordinal(value: float) -> str:
    """85 -> "85th", 1 -> "1st", 22 -> "22nd", 13 -> "13th"."""
    n = round(value)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def default_goal(current: list[str]) -> str:
    """Out of 'at risk' for a customer in it; otherwise into the loyal segment."""
    return DEFAULT_GOAL if "likely_to_churn" in current else "enter loyal"


def goal_choices(processor, current: list[str], goal: str) -> list[str]:
    """Leave a segment the customer is in, or enter one they are not in (evaluated segments only); the goal asked
    for (e.g. a condition given in the address) first when it is none of those."""
    names = processor.segments.names()
    choices = [f"leave {n}" for n in names if n in current] + [f"enter {n}" for n in names if n not in current]
    return choices if goal in choices else [goal, *choices]


def whatif(processor, customer_id: str, goal: str, as_of) -> dict:
    """The counterfactual's JSON shape, or {"error": why} (a goal already met, an unknown segment, ...)."""
    try:
        Goal.parse(goal)
        return counterfactuals(processor, customer_id, goal, as_of=as_of).to_dict()
    except ValueError as exc:
        return {"error": str(exc)}


def reason_tables(scored: dict) -> list[dict]:
    """Per model (churn first), its title and top reasons."""
    titles = {"churn": "Churn risk", "value": "Expected spend", "cluster": "Behavioural cluster",
              "uplift": "Campaign response (uplift)"}
    reasons = scored.get("reasons") or {}
    keys = sorted(reasons, key=lambda k: (k != "churn", k))
    return [{"key": k, "title": titles.get(k, "Look-alike: " + k.removeprefix("lookalike_").replace("_", " ")),
             "reasons": [{**r, "value_text": format_value(r["feature"], r["value"]),
                          "typical_text": format_value(r["feature"], r["typical"])} for r in reasons[k]]}
            for k in keys if reasons[k]]


def churn_reasons_chart(scored: dict) -> str | None:
    """Bars of the top churn reasons' effects on the churn probability (percentage points)."""
    reasons = (scored.get("reasons") or {}).get("churn") or []
    if not reasons:
        return None
    labels = [r["attribute_label"] for r in reasons][::-1]
    effects = np.array([r["effect"] for r in reasons][::-1]) * 100
    fig, ax = plots.figure("What drives this customer's churn risk", "Effect on churn probability (points)",
                           "Attribute", height=0.5 + 0.45 * len(labels))
    ax.barh(labels, effects, color=plots.effect_colours(effects, risk=True))
    ax.axvline(0, color=plots.NEUTRAL, linewidth=1)
    return plots.svg(fig, "Effects of the top attributes on this customer's churn probability")


def customer_site(processor) -> Site:
    """Navigation back to the written reports (one folder up from /reports/customers/) and the footer's facts."""
    state = processor.state
    last = processor.store.current.last_refresh()
    return Site(links=(NavLink("Overview", "../index.html", "Reports"),), models=site_models(state.manifest),
                data_as_of=last["as_of"] if last else None, features_as_of=state.as_of,
                feature_set_version=state.manifest.get("feature_set_version"))

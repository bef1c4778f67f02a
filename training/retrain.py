"""Retraining as a product: a new challenger, the current champion re-judged beside it on the newest window.

`segments train` followed by `segments promote` only compares runs evaluated on the same data and dates, so an old
champion is never judged on new data. `segments retrain` does what a data scientist would by hand: train the
challenger with the usual protocol (backtest, then refit: `training.train`), score the champion that is being served
on the challenger's out-of-time evaluation snapshot (the newest window whose outcomes are known), and promote the
challenger only when its margin on the primary metric has a paired-bootstrap 95% interval above 0 (a significant
win). A champion whose own training labels reach into that window has seen part of its outcomes: its figure is
then optimistic, and the result says by how many days.

Churn and value only: look-alikes and clusters are not judged on a future window (`segments train` + `promote`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from training.evaluation import paired_bootstrap
from training.labels import Snapshot

RETRAINED_KINDS = ("churn", "value")


@dataclass(frozen=True)
class Rejudging:
    """The outcome of one retrain: both models on the same window, the margin, and what was decided."""

    kind: str
    name: str
    metric: str
    evaluation_as_of: object
    challenger_version: str
    champion_version: str | None
    challenger_value: float
    champion_value: float | None
    ci: tuple[float, float] | None
    champion_saw_days: int
    promoted: bool
    reason: str

    @property
    def margin(self) -> float | None:
        return None if self.champion_value is None else self.challenger_value - self.champion_value


def rejudge(kind: str, name: str, evaluation: Snapshot, backtest, challenger_version: str,
            champion=None, champion_version: str | None = None) -> Rejudging:
    """Judge the challenger's recipe (its backtest model) and the served champion on `evaluation`.

    Returns whether the challenger should be promoted: always when there is no other champion, else only on a
    significant win (the 95% interval of the margin above 0).
    """
    metric_name = backtest.primary_metric
    y, challenger_score = backtest.outcome_scores(evaluation)
    challenger_value = backtest.metric(y, challenger_score)
    if champion is None or champion_version == challenger_version:
        return Rejudging(kind, name, metric_name, evaluation.as_of, challenger_version, None, challenger_value, None,
                         None, 0, True, "no other champion: the challenger is served")
    _, champion_score = champion.outcome_scores(evaluation)
    champion_value = backtest.metric(y, champion_score)
    ci = paired_bootstrap(backtest.metric, y, challenger_score, champion_score)
    labels_end = max(champion.fit_as_of_) + timedelta(days=evaluation.horizon_days)
    saw = max(0, (labels_end - evaluation.as_of).days)
    promoted = ci[0] > 0
    verdict = (f"beats the champion by {challenger_value - champion_value:+.4f} (95% interval {ci[0]:+.4f} to "
               f"{ci[1]:+.4f})")
    if promoted:
        reason = f"challenger {verdict}: promoted"
    elif ci[1] < 0:
        reason = (f"challenger trails the champion by {challenger_value - champion_value:+.4f} (95% interval "
                  f"{ci[0]:+.4f} to {ci[1]:+.4f}): champion kept")
    else:
        reason = (f"no significant difference ({challenger_value - champion_value:+.4f}, 95% interval {ci[0]:+.4f} "
                  f"to {ci[1]:+.4f}): champion kept")
    if saw:
        reason += (f"; the champion's training labels cover {saw} days of this window, so its figure is "
                   "optimistic")
    return Rejudging(kind, name, metric_name, evaluation.as_of, challenger_version, champion_version,
                     challenger_value, champion_value, ci, saw, promoted, reason)

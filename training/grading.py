"""Model grades in plain words, absolute and relative to the best baseline: one rule for every place that shows one.

The absolute grade comes from the primary out-of-time figure and fixed cut-offs (`GRADE_RULES`). It is then capped by
how the model does against its best baseline on the same figure, because a model a textbook method matches is not
"Excellent", however high its figure:
- better (the paired-bootstrap 95% interval of the margin lies above 0, or, for kinds without an interval, a higher
  figure): the absolute grade stands;
- no clear difference (the interval holds 0): at most "Good";
- worse (the interval lies below 0, or a lower figure): at most "Fair".
`segments train`, the model report pages and the service's `/v1/info` all read `grade_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GRADES = ("Poor", "Fair", "Good", "Excellent")
NOT_GRADED = "Not graded"
CAP_BY_VERDICT = {"better": "Excellent", "no clear difference": "Good", "worse": "Fair", "no baseline": "Excellent"}
BASELINE_NAMES = {"recency": "recency-only", "bgnbd": "BG/NBD", "pnbd": "Pareto/NBD",
                  "bgnbd_gamma_gamma": "BG/NBD × Gamma-Gamma", "last_horizon": "last-horizon-repeats",
                  "random": "random", "centroid_similarity": "centroid-similarity",
                  "rule_near_miss": "rule near-miss",
                  "majority_cluster": "majority-cluster", "likeliest_buyers": "likeliest-buyers"}


@dataclass(frozen=True)
class GradeRule:
    """A plain-words grade from one out-of-time figure: below cutoffs[0] Poor, below [1] Fair, below [2] Good."""

    metric: str
    cutoffs: tuple[float, float, float]
    why: str

    def grade(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return NOT_GRADED
        return GRADES[sum(value >= c for c in self.cutoffs)]


# Cut-offs per model kind, printed on each page. Churn: ROC AUC 0.5 is a coin toss; 0.75-0.85 is what recency and
# frequency alone usually reach, so "Excellent" asks for more. Look-alike: recall of held-out seed members in the top
# 10% (random finds 10%). Value: rank correlation of predicted and actual spend. Clusters: bootstrap stability
# (adjusted Rand index), after Hennig's (2007) reading of cluster-wise stability (< 0.6 dissolved, > 0.85 stable).
GRADE_RULES = {
    "churn": GradeRule("roc_auc", (0.65, 0.75, 0.85),
                       "how often a customer who lapsed is ranked above one who bought again (0.5 = coin toss)"),
    "lookalike": GradeRule("entry_lift_at_10", (1.5, 2.5, 4.0),
                           "how many times more often the 10% of non-members ranked highest joined the seed within "
                           "the horizon than non-members in general (1 = random)"),
    "value": GradeRule("spearman_spend", (0.4, 0.6, 0.8),
                       "rank correlation of predicted and actual spend over the next horizon (0 = unrelated)"),
    "clusters": GradeRule("stability_ari", (0.6, 0.75, 0.85),
                          "agreement of the clusters with those of refits on resampled customers (1 = identical)"),
    "uplift": GradeRule("qini", (0.0, 0.05, 0.15),
                        "extra buyers won by contacting the customers ranked highest first, as a share of what a "
                        "perfect ranking of the held-out campaigns' outcomes would win (0 = random targeting)"),
}


# When the headline cannot be computed (a look-alike of a tag or an id list has no history of membership).
FALLBACK_RULES = {
    "lookalike": GradeRule("recall_at_10", (0.25, 0.45, 0.65),
                           "share of held-out seed members found in the top 10% of scores (random: 10%)"),
}


def rule_for(kind: str, metrics: dict[str, float]) -> GradeRule:
    """The grade rule of a kind: its headline figure's, or the fallback's when the run lacks the headline."""
    rule = GRADE_RULES[kind]
    return rule if rule.metric in metrics or kind not in FALLBACK_RULES else FALLBACK_RULES[kind]


@dataclass(frozen=True)
class Grade:
    """A model's grade with its reasons.

    Attributes: grade (what is shown), absolute (from the cut-offs alone), metric, value, best_baseline (display
    name, None without baselines), best_baseline_value, margin (value - best baseline), ci (95% interval of the
    margin, None when not computed), verdict ("better", "no clear difference", "worse" or "no baseline") and
    sentence (one line saying all that).
    """

    grade: str
    absolute: str
    metric: str
    value: float
    best_baseline: str | None
    best_baseline_value: float | None
    margin: float | None
    ci: tuple[float, float] | None
    verdict: str
    sentence: str


def grade_model(kind: str, metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> Grade:
    """The grade of a model of `kind` from its logged out-of-time metrics and its baselines' (same metric names).

    The interval is read from the metrics `margin_ci_low` / `margin_ci_high` (`training.evaluation.
    margin_over_baselines`, over the best baseline on the primary metric); without them the comparison is plain.
    """
    rule = rule_for(kind, metrics)
    value = float(metrics.get(rule.metric, math.nan))
    absolute = rule.grade(value)
    candidates = {name: float(values[rule.metric]) for name, values in baselines.items()
                  if math.isfinite(float(values.get(rule.metric, math.nan)))}
    if not candidates or absolute == NOT_GRADED:
        return Grade(absolute, absolute, rule.metric, value, None, None, None, None, "no baseline",
                     f"{absolute}: {rule.metric} {value:.3f} (no baseline to compare with)")
    best = max(candidates, key=candidates.get)
    margin = value - candidates[best]
    low, high = metrics.get("margin_ci_low"), metrics.get("margin_ci_high")
    ci = (float(low), float(high)) if low is not None and high is not None and math.isfinite(low) else None
    if ci is not None:
        verdict = "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "no clear difference"
    else:
        verdict = "better" if margin > 0 else "worse" if margin < 0 else "no clear difference"
    grade = GRADES[min(GRADES.index(absolute), GRADES.index(CAP_BY_VERDICT[verdict]))]
    name = BASELINE_NAMES.get(best, best)
    interval = f" (95% interval {ci[0]:+.3f} to {ci[1]:+.3f})" if ci is not None else ""
    reading = {"better": "beats", "worse": "is behind", "no clear difference": "is not clearly better than"}[verdict]
    capped = f"; capped from {absolute}" if grade != absolute else ""
    sentence = (f"{grade}: {rule.metric} {value:.3f} {reading} the best baseline, {name} {candidates[best]:.3f}, "
                f"by {margin:+.3f}{interval}{capped}")
    return Grade(grade, absolute, rule.metric, value, name, candidates[best], margin, ci, verdict, sentence)


def split_logged_metrics(run_metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """An MLflow training run's metrics as (model metrics, baseline -> metrics): `baseline.<name>.<metric>` keys are
    the baselines' (training.tracking logs them so)."""
    metrics, baselines = {}, {}
    for key, value in run_metrics.items():
        if key.startswith("baseline."):
            baseline, metric = key.removeprefix("baseline.").rsplit(".", 1)
            baselines.setdefault(baseline, {})[metric] = value
        else:
            metrics[key] = value
    return metrics, baselines

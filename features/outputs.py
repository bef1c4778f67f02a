"""Every model output, declared once: its column name, dtype, label, unit, bands, which model kind produces it and
where it sits in the service's response. The segment language, the scorer's response, the API schemas, the
counterfactual search and the reports read it; each estimator's `predict` returns exactly its kind's columns
(tested).

Look-alike outputs exist once per seed segment: their names hold `{seed}` (lookalike_best_members_score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BANDS = ("low", "medium", "high")  # churn risk bands, lowest first


@dataclass(frozen=True)
class Output:
    """One model output column.

    field: its type in the segment language (number, band, string); response: (group, key) of the value in a
    scored customer of the API (a look-alike's group is keyed by seed); unit: what the number measures.
    """

    name: str
    kind: str
    dtype: str
    field: str
    label: str
    response: tuple[str, str]
    unit: str = ""
    description: str = ""
    bands: tuple[str, ...] = ()

    @property
    def per_seed(self) -> bool:
        return "{seed}" in self.name

    def column(self, seed: str | None = None) -> str:
        return self.name.format(seed=seed) if self.per_seed else self.name


OUTPUTS = (
    Output("churn_probability", "churn", "float64", "number", "Churn probability", ("churn", "probability"),
           "probability", "Calibrated probability of no purchase within the horizon."),
    Output("churn_band", "churn", "category", "band", "Churn risk band", ("churn", "band"), "",
           "low, medium or high, by the model's band thresholds.", BANDS),
    Output("expected_purchases", "value", "float64", "number", "Expected purchases",
           ("value", "expected_purchases"), "purchases", "Expected number of purchases within the horizon."),
    Output("expected_spend", "value", "float64", "number", "Expected spend", ("value", "expected_spend"),
           "currency", "Expected spend within the horizon."),
    Output("lookalike_{seed}_score", "lookalike", "float64", "number", "Look-alike score ({seed})",
           ("lookalike", "score"), "probability", "Estimated probability of belonging to the seed segment (0..1)."),
    Output("lookalike_{seed}_percentile", "lookalike", "float64", "number", "Look-alike percentile ({seed})",
           ("lookalike", "percentile"), "percentile",
           "Share of the fitted population scoring lower (0..100); stable alone or in a batch."),
    Output("cluster_id", "clusters", "int64", "number", "Cluster", ("cluster", "id"), "",
           "Behavioural cluster, numbered by size (0 = largest)."),
    Output("cluster_name", "clusters", "string", "string", "Cluster name", ("cluster", "name"), "",
           "The cluster's name, from its profile."),
    Output("uplift_score", "uplift", "float64", "number", "Campaign uplift", ("uplift", "score"), "probability",
           "Estimated change in the chance of buying within the campaign window when contacted rather than held "
           "out (-1..1; learnt from past campaigns' holdouts)."),
)
_PER_SEED = {o: re.compile("^" + re.escape(o.name).replace(re.escape("{seed}"), "(?P<seed>[A-Za-z0-9_]+?)") + "$")
             for o in OUTPUTS if o.per_seed}


def outputs_of(kind: str) -> tuple[Output, ...]:
    """The outputs a model kind produces, in column order."""
    return tuple(o for o in OUTPUTS if o.kind == kind)


def columns_of(kind: str, seed: str | None = None) -> list[str]:
    """Score column names of a kind (a look-alike's for one seed)."""
    return [o.column(seed) for o in outputs_of(kind)]


def find_output(name: str) -> tuple[Output, str | None] | None:
    """(the output, its seed or None) of a score column name, or None when `name` is no model output."""
    for output in OUTPUTS:
        if not output.per_seed and output.name == name:
            return output, None
    for output, pattern in _PER_SEED.items():
        match = pattern.match(name)
        if match:
            return output, match["seed"]
    return None


def label_of_output(name: str) -> str | None:
    found = find_output(name)
    if found is None:
        return None
    output, seed = found
    return output.label.format(seed=seed.replace("_", " ")) if seed else output.label


def is_model_number(name: str) -> bool:
    """A numeric model output whose higher values mean more of what it measures (counterfactual goals)."""
    found = find_output(name)
    return found is not None and found[0].field == "number" and found[0].kind != "clusters"


def nested(row: dict, seeds: list[str]) -> dict:
    """A flat score row (columns above) -> the response's groups: churn, value, cluster, uplift as objects (None when
    the model is not served) and lookalike as {seed: object}."""
    groups: dict = {"churn": None, "value": None, "lookalike": {}, "cluster": None, "uplift": None}
    for output in OUTPUTS:
        group, key = output.response
        for seed in (seeds if output.per_seed else [None]):
            column = output.column(seed)
            if column not in row:
                continue
            value = _plain(row[column], output.dtype)
            if seed is not None:
                groups[group].setdefault(seed, {})[key] = value
            else:
                groups[group] = {**(groups[group] or {}), key: value}
    return groups


def _plain(value, dtype: str):
    if dtype == "float64":
        return float(value)
    if dtype == "int64":
        return int(value)
    return str(value)

"""From exact TreeSHAP contributions to reasons a marketer reads, grouped to business attributes.

Contributions come from LightGBM's own exact TreeSHAP (`pred_contrib`, the values `shap.TreeExplainer` returns): one
value per model input plus the base value, adding up to the model's margin exactly.

Attributes. Each feature belongs to one attribute: its catalog name with the window suffix stripped
(`orders_count_14d`, `_30d`, `_90d`, `_365d`, `_total` -> `orders_count`, "Purchases"). Windows of one measure are
strongly correlated, and trees split credit among them arbitrarily (one tree uses the 30-day count, the next the
90-day count); their sum is stable, their parts are not. The catalog groups (recency, monetary, ...) would be too
coarse: "recency" holds both days since the last purchase (lapsing) and since the first (tenure), which pull churn
in opposite directions and would cancel out. Text features (favourite category, tier, region) are one integer-coded
column each, not one-hot columns, so they need no summing. The catalog group's title is reported beside the attribute.

Scales. `contribution` is on the model's margin: log-odds for churn, look-alike and the cluster surrogate (its
own-cluster class score), log of expected spend for value, probability points for uplift (its score is its margin).
`effect` is an approximate change on the output scale, the output at the customer's margin minus the output with
this attribute's contribution removed: churn probability (sigmoid of the margin, before calibration), look-alike
seed-membership probability, expected spend in currency, and the probability of the customer's own cluster (softmax
of the surrogate's class scores); for uplift it is the contribution. Effects of several attributes do not add up
exactly (the output is not linear in the margin); contributions do.

Typical values are the population's medians (numbers) or most frequent values (text, yes/no), computed once when the
service is built (`typical_values`) and shipped with it: never recomputed from the batch being scored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.catalog import FEATURES_BY_NAME, GROUPS, SHARE

WINDOW_SUFFIX = re.compile(r"_(\d+d|total)$")
_LABEL_WINDOW = re.compile(r"\s*(\((\d+ days|all time)\)|in the last \d+ days|ever)$")
DEFAULT_TOP_K = 3


def attribute_of(feature: str) -> str:
    """The business attribute of a feature: its name without the window suffix (orders_count_90d -> orders_count)."""
    return WINDOW_SUFFIX.sub("", feature)


def attribute_label(feature: str) -> str:
    """The attribute's words: the feature's catalog label without its window ("Purchases in the last 14 days" ->
    "Purchases")."""
    spec = FEATURES_BY_NAME.get(feature)
    return _LABEL_WINDOW.sub("", spec.label) if spec else feature


def typical_values(features: pd.DataFrame) -> dict[str, float | str | bool | None]:
    """The population's typical value of every catalog feature in `features`: the median of a number, the most
    frequent value of text and yes/no (None when all are missing). Computed once, at build time."""
    out: dict[str, float | str | bool | None] = {}
    for name in features.columns:
        spec = FEATURES_BY_NAME.get(name)
        if spec is None:
            continue
        column = features[name].dropna()
        if column.empty:
            out[name] = None
        elif spec.dtype in ("string", "boolean"):
            counts = column.astype("object").value_counts()
            top = counts[counts == counts.max()].index
            out[name] = bool(top[0]) if spec.dtype == "boolean" else min(str(v) for v in top)
        else:
            out[name] = float(column.astype("float64").median())
    return out


COUNTED_UNITS = ("days", "points", "items", "years")  # written after the number: "94 days", "1 day"


def format_value(feature: str, value, digits: int | None = None) -> str:
    """A feature value in words, with its unit: "94 days", "1 day", "12.5 days", "45%", "312.50", "49.90/month",
    "yes", "none". The one formatter of feature values: reasons, the customer page and the report pages.

    Currency shows cents; a share is a whole percentage; other numbers show up to `digits` decimals (default 2;
    trailing zeros dropped, so whole numbers show none): 1 gives the rounder figures of averages and thresholds.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    spec = FEATURES_BY_NAME.get(feature)
    if spec is None or spec.dtype == "string":
        return str(value)
    if spec.dtype == "boolean":
        return "yes" if bool(value) else "no"
    number = float(value)
    if spec.bounds == SHARE:
        return f"{number:.0%}"
    if spec.unit.startswith("currency"):
        return f"{number:,.2f}" + spec.unit.removeprefix("currency")  # "/month" stays
    text = _decimals(number, 2 if digits is None else digits)
    if spec.unit in COUNTED_UNITS:
        return f"{text} {spec.unit.removesuffix('s') if text == '1' else spec.unit}"
    return text


def _decimals(number: float, digits: int) -> str:
    """At most `digits` decimals, trailing zeros dropped: 12.50 -> "12.5", 94.0 -> "94", 1234.5 -> "1,234.5"."""
    rounded = round(number, digits) + 0.0  # + 0.0: no "-0" for a small negative
    text = f"{rounded:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Target:
    """What one model's reasons are about: its key in responses, its words, and how its margin maps to an output."""

    key: str  # churn, value, cluster, lookalike_<seed>
    words: str  # "churn risk": the sentence's subject
    margin_scale: str  # what `contribution` is measured in
    effect_scale: str  # what `effect` is measured in


class AttributeMap:
    """Model inputs -> attributes, built once per model."""

    def __init__(self, feature_names: list[str]):
        self.feature_names = list(feature_names)
        self.attributes = list(dict.fromkeys(attribute_of(f) for f in self.feature_names))
        # Inputs ordered by attribute, and where each attribute's run starts: sums by np.add.reduceat, which adds
        # each row's values in the same order whatever the number of rows (a BLAS product did not: a customer's
        # reasons differed in the last digit alone and in a batch).
        by_attribute = sorted(range(len(self.feature_names)),
                              key=lambda i: self.attributes.index(attribute_of(self.feature_names[i])))
        self._order = np.array(by_attribute, dtype=np.intp)
        attribute_of_input = [self.attributes.index(attribute_of(self.feature_names[i])) for i in by_attribute]
        self._starts = np.searchsorted(attribute_of_input, np.arange(len(self.attributes)))
        # Each attribute's inputs, in input order, padded with -1: the leading input of many rows at once.
        members = [[i for i, f in enumerate(self.feature_names) if attribute_of(f) == a] for a in self.attributes]
        self.members = np.full((len(members), max(map(len, members), default=0)), -1)
        for a, inputs in enumerate(members):
            self.members[a, :len(inputs)] = inputs

    def group(self, contributions: np.ndarray) -> np.ndarray:
        """Per-row sums of the contributions of each attribute's inputs (rows x attributes)."""
        if not len(self.attributes):
            return np.zeros((len(contributions), 0))
        return np.add.reduceat(contributions[:, self._order], self._starts, axis=1)

    def leading_inputs(self, contributions: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        """For rows x chosen attributes: the attribute's input with the largest absolute contribution in that row
        (the first of equals; its value is shown), as an input position."""
        members = self.members[attributes]  # rows x chosen x most inputs of one attribute
        rows = np.arange(len(contributions))[:, None, None]
        size = np.where(members >= 0, np.abs(contributions)[rows, np.maximum(members, 0)], -np.inf)
        return np.take_along_axis(members, size.argmax(axis=2)[..., None], axis=2)[..., 0]


def top_reasons(target: Target, attribute_map: AttributeMap, contributions: np.ndarray, margin: np.ndarray,
                effect_of, features: pd.DataFrame, typical: dict, top_k: int = DEFAULT_TOP_K) -> list[list[dict]]:
    """The top-k reasons per row, largest absolute grouped contribution first.

    Args:
        contributions: rows x model inputs (base value excluded), exact TreeSHAP on the margin.
        margin: the model's margin per row (base value + contributions).
        effect_of: (margin, margin_without) -> output-scale change, vectorised.
        features: the feature rows (raw values shown to the reader), same row order.
        typical: feature -> the population's typical value (see `typical_values`).
    """
    grouped = attribute_map.group(contributions)
    k = min(top_k, grouped.shape[1])
    order = np.argsort(-np.abs(grouped), axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(grouped, order, axis=1)
    effects = effect_of(margin[:, None], margin[:, None] - chosen)
    names = attribute_map.feature_names
    leading = attribute_map.leading_inputs(contributions, order)
    # The shown values, one column read per feature shown (a pandas lookup per reason cost more than the model).
    values = {names[i]: features[names[i]].tolist() if names[i] in features.columns else None
              for i in np.unique(leading)}
    out = []
    for row, (attributes, inputs, contribution, effect) in enumerate(
            zip(order.tolist(), leading.tolist(), chosen.tolist(), effects.tolist(), strict=True)):
        out.append([_reason(target, attribute_map.attributes[a], names[i], values[names[i]], row, typical, c, e)
                    for a, i, c, e in zip(attributes, inputs, contribution, effect, strict=True)])
    return out


def _reason(target: Target, attribute: str, feature: str, column: list | None, row: int, typical: dict,
            contribution: float, effect: float) -> dict:
    spec = FEATURES_BY_NAME.get(feature)
    value = _plain(column[row]) if column is not None else None
    typical_value = typical.get(feature)
    label = spec.label if spec else feature
    value_text, typical_text = format_value(feature, value), format_value(feature, typical_value)
    effect_text = f"{effect:+,.2f}"
    return {
        "attribute": attribute,
        "attribute_label": attribute_label(feature),
        "group": GROUPS.get(spec.group, spec.group) if spec else None,
        "feature": feature,
        "label": label,
        "value": value,
        "typical": typical_value,
        "direction": "raises" if contribution > 0 else "lowers",
        "contribution": contribution,
        "effect": effect,
        "sentence": f"{label} {value_text} (typical {typical_text}): {target.words} {effect_text}",
    }


def _plain(value):
    """A JSON-ready Python value (numpy and pandas scalars, missing as None)."""
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def sigmoid_effect(margin: np.ndarray, without: np.ndarray) -> np.ndarray:
    return _sigmoid(margin) - _sigmoid(without)


def exp_effect(margin: np.ndarray, without: np.ndarray) -> np.ndarray:
    return np.exp(margin) - np.exp(without)


def identity_effect(margin: np.ndarray, without: np.ndarray) -> np.ndarray:
    """A score that is its margin (uplift, in probability points): the effect is the contribution itself."""
    return margin - without


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax_own_effect(others_logsumexp: np.ndarray):
    """Effect on the own class's softmax probability; `others_logsumexp` is log(sum(exp(other classes' scores)))."""
    def effect(margin: np.ndarray, without: np.ndarray) -> np.ndarray:
        rest = others_logsumexp[:, None]
        return _sigmoid(margin - rest) - _sigmoid(without - rest)

    return effect

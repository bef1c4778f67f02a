"""What "unlocks" a score: global SHAP drivers grouped to business attributes, where their effect changes, in words.

Contributions are exact TreeSHAP of the served models (`serving.scorer.ModelExplainer`'s engine) on a sample of the
serve folder's feature table, summed per business attribute (`serving.explain.reasons.AttributeMap`: the window variants of
one measure together). For each attribute:

- importance: mean |contribution| over the sample (on the model's margin: log-odds, or log of expected spend);
- its leading feature: the attribute's input with the largest mean |contribution| (its values go on the x axis);
- direction: the sign of the rank correlation between the leading feature's value and the attribute's contribution
  ("rises" with higher values, or "falls");
- threshold: the leading feature's values are cut into up to `N_BINS` quantile bins and the attribute's mean
  contribution taken per bin. Where the mean changes sign between adjacent bins, the largest such step is the
  threshold (below it the attribute lowers the score, above it raises it, or the reverse); without a sign change,
  the largest step between adjacent bins. The threshold is the upper edge of the lower bin: "above X" means > X.

Nothing here knows a feature by name: words come from the catalog (label, unit, bounds), numbers from the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from features.catalog import FEATURES_BY_NAME, GROUPS
from serving.explain.reasons import AttributeMap, attribute_label, attribute_of, format_value, typical_values

N_BINS = 10
MIN_BIN_SHARE = 0.02  # bins (distinct values) with fewer rows than this share merge into a neighbour: noisy means
SHARP_STEP = 0.5  # a step holding at least half of the range of bin means is "sharp": the effect switches there
TOP_DRIVERS = 3


@dataclass(frozen=True)
class Threshold:
    """Where an attribute's effect changes: values above `value` vs up to it (adjacent quantile bins)."""

    value: float
    below: float  # mean contribution in the bin just below (values <= value)
    above: float  # mean contribution in the bin just above
    crosses_zero: bool
    sharp: bool

    @property
    def step(self) -> float:
        return self.above - self.below


@dataclass
class Driver:
    """One business attribute's global effect on a model's score."""

    attribute: str
    label: str  # the attribute's words ("Purchases")
    group: str  # the catalog group's title ("Frequency")
    feature: str  # the leading input (its values are shown)
    mean_abs: float  # mean |contribution| over the sample (margin scale)
    share: float  # of all attributes' mean |contribution|
    correlation: float | None  # rank correlation of the leading feature's value with the contribution
    threshold: Threshold | None
    categories: pd.Series | None = None  # text features: mean contribution per category, highest first
    sentence: str = ""

    @property
    def direction(self) -> str | None:
        """"rises" or "falls" with higher values of the leading feature; None for text or no correlation."""
        if self.correlation is None or not np.isfinite(self.correlation) or self.correlation == 0:
            return None
        return "rises" if self.correlation > 0 else "falls"


@dataclass
class DriverSet:
    """The drivers of one score on one sample: raw contributions kept for plots (and for checking)."""

    subject: str  # the score in words: "churn risk", "likeness to best members", "membership"
    scale: str  # what contributions are measured in ("log-odds")
    features: pd.DataFrame  # the sample's feature rows
    contributions: pd.DataFrame  # rows x model inputs (base value excluded)
    grouped: pd.DataFrame  # rows x attributes
    drivers: list[Driver] = field(default_factory=list)
    risk: bool = False  # the score is a risk (churn): an effect raising it is a loss (`plots.effect_colours`)


# ---------------------------------------------------------------------------------------------------------------
# Contributions


def explainer_contributions(explainer, features: pd.DataFrame) -> np.ndarray:
    """All classes' exact TreeSHAP of a served model on `features`: rows x classes x (inputs + base value).

    Single-output models have one class. Uses the explainer's engine (exactly LightGBM's `pred_contrib`).
    """
    X = explainer.matrix(features)
    values = np.asarray(explainer.engine(X))
    return values.reshape(len(X), -1, explainer.n_inputs + 1)


def driver_set(subject: str, scale: str, feature_names: list[str], features: pd.DataFrame,
               contributions: np.ndarray, top: int = TOP_DRIVERS, risk: bool = False) -> DriverSet:
    """Drivers of one score from its contributions (rows x inputs, base value excluded), strongest first; `risk`:
    the score is a risk (churn)."""
    frame = pd.DataFrame(contributions, index=features.index, columns=feature_names)
    attribute_map = AttributeMap(feature_names)
    grouped = pd.DataFrame(attribute_map.group(contributions), index=features.index,
                           columns=attribute_map.attributes)
    result = DriverSet(subject, scale, features, frame, grouped, risk=risk)
    importance = grouped.abs().mean().sort_values(ascending=False, kind="stable")
    total = float(importance.sum()) or 1.0
    for attribute in importance.index[:top]:
        leading = leading_feature(frame, attribute)
        driver = describe_driver(attribute, leading, features[leading], grouped[attribute],
                                 float(importance[attribute]), float(importance[attribute]) / total)
        driver.sentence = driver_sentence(subject, driver)
        result.drivers.append(driver)
    return result


def importance_table(drivers: DriverSet, top: int = 8) -> pd.DataFrame:
    """Mean |contribution| per attribute, strongest first: attribute, label, group, mean_abs, mean (signed)."""
    grouped = drivers.grouped
    mean_abs = grouped.abs().mean().sort_values(ascending=False, kind="stable").head(top)
    leading = {a: leading_feature(drivers.contributions, a) for a in mean_abs.index}
    return pd.DataFrame({
        "attribute": mean_abs.index,
        "label": [attribute_label(leading[a]) for a in mean_abs.index],
        "group": [GROUPS.get(FEATURES_BY_NAME[leading[a]].group, "") for a in mean_abs.index],
        "mean_abs": mean_abs.to_numpy(),
        "mean": grouped[mean_abs.index].mean().to_numpy(),
    })


def leading_feature(contributions: pd.DataFrame, attribute: str) -> str:
    """The attribute's input with the largest mean |contribution| (the first of equals)."""
    members = [f for f in contributions.columns if attribute_of(f) == attribute]
    return str(contributions[members].abs().mean().idxmax())


# ---------------------------------------------------------------------------------------------------------------
# Direction and threshold


def numeric_values(column: pd.Series) -> np.ndarray:
    """A feature column as floats (yes/no as 1/0, missing as NaN)."""
    return pd.to_numeric(column.astype("object"), errors="coerce").to_numpy(dtype=float)


def describe_driver(attribute: str, feature: str, values: pd.Series, effect: pd.Series, mean_abs: float,
                    share: float) -> Driver:
    """Direction, threshold (numbers and yes/no) or per-category effects (text) of one attribute."""
    spec = FEATURES_BY_NAME[feature]
    driver = Driver(attribute, attribute_label(feature), GROUPS.get(spec.group, spec.group), feature, mean_abs,
                    share, None, None)
    if spec.dtype == "string":
        frame = pd.DataFrame({"value": values.astype("object"), "effect": effect.to_numpy()}).dropna()
        driver.categories = frame.groupby("value")["effect"].mean().sort_values(ascending=False)
        return driver
    x, y = numeric_values(values), effect.to_numpy(dtype=float)
    present = np.isfinite(x)
    driver.correlation = rank_correlation(x[present], y[present])
    bins = effect_bins(x[present], y[present])
    driver.threshold = find_threshold(bins)
    return driver


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho, None when either side is constant (no direction to speak of)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def effect_bins(x: np.ndarray, effect: np.ndarray, n_bins: int = N_BINS,
                min_share: float = MIN_BIN_SHARE) -> pd.DataFrame:
    """Quantile bins of `x` with the mean effect in each: upper (inclusive upper edge), n, mean_effect.

    Edges are observed values (quantiles with method "lower"), so bins of a discrete feature are whole values.
    Bins (x <= edge) with fewer than `min_share` of the rows merge into the next bin up (the last one down), but
    never down to one bin while `x` takes two values: a rare value (a flag 1% of customers hold) keeps its own bin,
    since a rare value can carry a strong effect (`two_bins`).
    """
    if len(x) == 0:
        return pd.DataFrame(columns=["upper", "n", "mean_effect"])
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:], method="lower"))
    edges[-1] = x.max()
    index = np.searchsorted(edges, x, side="left")  # bin i holds edges[i-1] < x <= edges[i]
    counts = np.bincount(index, minlength=len(edges))
    edges = edges[_merge_small(counts, max(math.ceil(min_share * len(x)), 1))]
    if len(edges) < 2 and np.ptp(x) > 0:
        edges = two_bins(x)
    index = np.searchsorted(edges, x, side="left")
    frame = pd.DataFrame({"bin": index, "effect": effect}).groupby("bin")["effect"].agg(["size", "mean"])
    return pd.DataFrame({"upper": edges[frame.index], "n": frame["size"].to_numpy(),
                         "mean_effect": frame["mean"].to_numpy()}).reset_index(drop=True)


def _merge_small(counts: np.ndarray, minimum: int) -> np.ndarray:
    """Positions of the edges kept so that every bin holds at least `minimum` rows (a small bin's edge is dropped,
    joining it to the bin above; a small last bin joins the one below)."""
    kept, running = [], 0
    for i, count in enumerate(counts):
        running += count
        if running >= minimum:
            kept.append(i)
            running = 0
    if not kept:
        return np.array([len(counts) - 1])
    if running:  # rows left after the last kept edge: extend that bin to the top
        kept[-1] = len(counts) - 1
    return np.asarray(kept)


def two_bins(x: np.ndarray) -> np.ndarray:
    """Edges of the most even split of `x` (at least two distinct values) into x <= cut and x > cut."""
    values, counts = np.unique(x, return_counts=True)
    below = np.cumsum(counts)[:-1]  # rows at or below each candidate cut (every value but the largest)
    cut = values[int(np.argmax(np.minimum(below, len(x) - below)))]
    return np.array([cut, values[-1]])


def find_threshold(bins: pd.DataFrame) -> Threshold | None:
    """Where the mean effect changes sign between adjacent bins (the largest such step), else changes most."""
    if len(bins) < 2:
        return None
    means = bins["mean_effect"].to_numpy()
    steps = np.diff(means)
    crossing = np.sign(means[:-1]) * np.sign(means[1:]) < 0
    candidates = np.flatnonzero(crossing) if crossing.any() else np.arange(len(steps))
    i = int(candidates[np.argmax(np.abs(steps[candidates]))])
    spread = float(np.ptp(means)) or 1.0
    return Threshold(float(bins["upper"].iloc[i]), float(means[i]), float(means[i + 1]), bool(crossing[i]),
                     bool(abs(steps[i]) >= SHARP_STEP * spread))


# ---------------------------------------------------------------------------------------------------------------
# Words


def lower_first(text: str) -> str:
    """"Days since last purchase" -> "days since last purchase" (acronyms such as "AOV" kept)."""
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def driver_sentence(subject: str, driver: Driver) -> str:
    """Where the attribute's effect changes, in one sentence, e.g. "Churn risk rises sharply for days since last
    purchase above 62 days (pushed up above that value, down below it)."; yes/no features say "when ... is yes"."""
    label = lower_first(FEATURES_BY_NAME[driver.feature].label)
    if driver.categories is not None:
        if len(driver.categories) < 2:
            return f"{capitalise(subject)} depends on {label}."
        return (f"{capitalise(subject)} is highest when {label} is {driver.categories.index[0]} and lowest when it "
                f"is {driver.categories.index[-1]}.")
    threshold = driver.threshold
    if threshold is None:
        if driver.direction is not None:  # no step to name, but a known direction is still worth saying
            return f"{capitalise(subject)} {driver.direction} with higher {label}."
        return f"{capitalise(subject)} barely varies with {label}."
    if FEATURES_BY_NAME[driver.feature].dtype == "boolean":
        return _yes_no_sentence(subject, label, threshold)
    verb = "rises" if threshold.step > 0 else "falls"
    how = " sharply" if threshold.sharp else ""
    where = f"for {label} above {format_value(driver.feature, threshold.value, digits=1)}"
    sentence = f"{capitalise(subject)} {verb}{how} {where}"
    if threshold.crosses_zero:
        sentence += " (pushed up above that value, down below it)" if threshold.step > 0 \
            else " (pushed down above that value, up below it)"
    if driver.direction is not None and driver.direction != verb:
        sentence += f", although overall it {driver.direction} as {label} grows"
    return sentence + "."


def _yes_no_sentence(subject: str, label: str, threshold: Threshold) -> str:
    """A yes/no feature has two values, so the step is the whole story: no "above", no overall trend."""
    verb = "rises" if threshold.step > 0 else "falls"
    how = " sharply" if threshold.sharp else ""
    sentence = f"{capitalise(subject)} {verb}{how} when ‘{label}’ is yes"
    if threshold.crosses_zero:
        sentence += " (pushed up when yes, down when no)" if threshold.step > 0 \
            else " (pushed down when yes, up when no)"
    return sentence + "."


def typical_of(column: pd.Series) -> object:
    """The population's typical value of one feature column (named after it): `serving.explain.reasons.typical_values`."""
    return typical_values(column.to_frame())[column.name]


def yes_share(column: pd.Series) -> float | None:
    values = column.dropna()
    return float(values.astype(bool).mean()) if len(values) else None


def share_of(column: pd.Series, value) -> float | None:
    return float((column.astype("object") == value).mean()) if value is not None and len(column) else None


def contrast_phrase(feature: str, group: pd.Series, population: pd.Series) -> str:
    """"typical days between purchases 21 days (all customers: 48 days)"; yes/no as shares of yes; text as the
    most common value with its share in both."""
    spec = FEATURES_BY_NAME[feature]
    label = lower_first(spec.label)
    group, population = group.rename(feature), population.rename(feature)
    if spec.dtype == "boolean":
        return f"{label}: {percent_text(yes_share(group))} (all customers: {percent_text(yes_share(population))})"
    value, everyone = typical_of(group), typical_of(population)
    if spec.dtype == "string":
        return (f"{label} most often {value} ({percent_text(share_of(group.dropna(), value))} of them, "
                f"{percent_text(share_of(population, value))} of all customers)")
    shown, shown_everyone = format_value(feature, value, digits=1), format_value(feature, everyone, digits=1)
    return f"{label} {shown} (all customers: {shown_everyone})"


def percent_text(value: float | None) -> str:
    return "none" if value is None else f"{value:.0%}"


def contrast_sentence(who: str, drivers: list[Driver], group: pd.DataFrame, population: pd.DataFrame) -> str:
    """"Customers most like best members: typical days between purchases 21 days (all customers: 48 days); ..."."""
    phrases = [contrast_phrase(d.feature, group[d.feature], population[d.feature]) for d in drivers]
    return f"{capitalise(who)}: " + "; ".join(phrases) + "." if phrases else ""

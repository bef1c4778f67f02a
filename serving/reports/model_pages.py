"""Model pages of the marketer reports: how good each served model is, and what "unlocks" its score.

One page per served model (`model-churn.html`, `model-value.html`, `model-lookalike-<seed>.html`) and one for the
clusters (`clusters.html`, personas). Everything shown comes from two places:

- MLflow: the serve folder's manifest names each model's registered name and version; that version's run holds the
  out-of-time evaluation (metrics, `baseline.<name>.<metric>`, evaluation.json, tables/*.csv). The quality grade,
  the figures beside the baselines and the calibration, lift and reach charts are read from there, never recomputed.
- The served models on a fixed sample of the serve folder's feature table: exact TreeSHAP grouped to business
  attributes (`serving.explain.drivers`), which gives the "what unlocks it" sentences and their charts.

Key numbers sit in elements with data attributes (`data-metric`, `data-scorer`, `data-value`, `data-driver`,
`data-threshold`, ...) so tests compare them with their sources.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.catalog import FEATURES_BY_NAME, SHARE
from features.pipeline import feature_table_rows
from serving.explain import drivers as drv
from serving.explain.reasons import format_value
from serving.reports.render import NavLink, Site, as_datetime, render_page, site_models, write_page
from serving.state import FEATURES_FILE, served_rows
from training import plots
from training.estimators.base import ReportPage
from training.grading import BASELINE_NAMES, GRADES, Grade, grade_model, rule_for, split_logged_metrics
from training.labels import churn_eligible
from training.plots import (
    ACCENT,
    MAIN,
    NEUTRAL,
    SERIES,
    TEXT_COLOUR,
    date_axis,
    difference_colours,
    effect_colours,
    figure,
    svg,
)
from training.tracking import kind_of

DEFAULT_SAMPLE = 2000
TOP_GROUP_SHARE = 0.10  # look-alike: "customers most like the seed" = the top 10% of the sample by score


@dataclass(frozen=True)
class MetricSpec:
    label: str
    better: str  # "higher", "lower" or "near 1"
    style: str  # "decimal", "percent", "times", "amount", "count"
    digits: int = 2


METRICS = {
    "roc_auc": MetricSpec("ROC AUC", "higher", "decimal"),
    "pr_auc": MetricSpec("PR AUC (average precision)", "higher", "decimal"),
    "lift_top_decile": MetricSpec("Lift in the top 10%", "higher", "times", 1),
    "brier": MetricSpec("Brier score", "lower", "decimal", 3),
    "log_loss": MetricSpec("Log-loss", "lower", "decimal", 3),
    "ece": MetricSpec("Calibration error (ECE)", "lower", "decimal", 3),
    "recall_at_1": MetricSpec("Seed members found in the top 1%", "higher", "percent", 0),
    "recall_at_5": MetricSpec("Seed members found in the top 5%", "higher", "percent", 0),
    "recall_at_10": MetricSpec("Seed members found in the top 10%", "higher", "percent", 0),
    "recall_at_20": MetricSpec("Seed members found in the top 20%", "higher", "percent", 0),
    "lift_at_10": MetricSpec("Lift in the top 10%", "higher", "times", 1),
    "entry_lift_at_10": MetricSpec("Seed entries, top 10% vs all non-members (out of time)", "higher", "times", 1),
    "entry_rate_at_10": MetricSpec("Share of the top 10% that joined the seed (out of time)", "higher", "percent", 1),
    "spearman_spend": MetricSpec("Rank correlation, spend", "higher", "decimal"),
    "top_decile_capture_spend": MetricSpec("Spend captured by the top 10%", "higher", "percent", 0),
    "mae_spend": MetricSpec("Mean absolute error, spend", "lower", "amount"),
    "total_ratio_spend": MetricSpec("Predicted / actual total spend", "near 1", "decimal"),
    "spearman_purchases": MetricSpec("Rank correlation, purchases", "higher", "decimal"),
    "mae_purchases": MetricSpec("Mean absolute error, purchases", "lower", "decimal"),
    "stability_ari": MetricSpec("Stability (adjusted Rand index)", "higher", "decimal"),
    "silhouette": MetricSpec("Silhouette", "higher", "decimal"),
    "surrogate_fidelity": MetricSpec("Explainer agreement (surrogate fidelity)", "higher", "percent", 1),
    "k": MetricSpec("Clusters", "higher", "count", 0),
    "qini": MetricSpec("Qini (share of the perfect ranking's gain)", "higher", "decimal", 3),
    "uplift_at_10": MetricSpec("Uplift in the top 10% (treated - held out)", "higher", "percent", 1),
    "uplift_at_20": MetricSpec("Uplift in the top 20% (treated - held out)", "higher", "percent", 1),
    "uplift_at_30": MetricSpec("Uplift in the top 30% (treated - held out)", "higher", "percent", 1),
    "average_uplift": MetricSpec("Uplift of the whole audience (the campaigns' effect)", "higher", "percent", 1),
}
# ---------------------------------------------------------------------------------------------------------------
# Evidence from MLflow


@dataclass
class RunEvidence:
    """What the MLflow run of one served model version logged."""

    name: str
    version: str
    kind: str
    seed: str | None
    run_id: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    evaluation: dict
    tables: dict[str, pd.DataFrame]
    params: dict[str, str]
    served: str | None = None  # which candidate is served and why (churn: the model or a textbook baseline)

    @property
    def page(self) -> ReportPage:
        """What this kind's page shows (the estimator's declaration)."""
        return page_of_kind(self.kind)

    @property
    def evaluated_at(self) -> datetime | None:
        return as_datetime(self.evaluation.get("as_of")) if self.evaluation.get("as_of") else None


def load_evidence(mlflow_client, name: str, version: str) -> RunEvidence:
    """The run behind `name` version `version`: metrics split into model and `baseline.<name>.<metric>`,
    evaluation.json and every tables/*.csv."""
    run_id = mlflow_client.get_model_version(name, version).run_id
    run = mlflow_client.get_run(run_id)
    metrics, baselines = split_logged_metrics(run.data.metrics)
    evaluation, tables = _run_files(mlflow_client, run_id)
    kind, seed = kind_of(name)
    return RunEvidence(name, str(version), kind, seed, run_id, metrics, baselines, evaluation, tables,
                       dict(run.data.params), run.data.tags.get("served_reason"))


def _run_files(mlflow_client, run_id: str) -> tuple[dict, dict[str, pd.DataFrame]]:
    """evaluation.json and tables/*.csv of a run (empty when it logged none, e.g. a run of older code)."""
    logged = {a.path for a in mlflow_client.list_artifacts(run_id)}
    tables_logged = [a.path for a in mlflow_client.list_artifacts(run_id, "tables") if a.path.endswith(".csv")]
    with tempfile.TemporaryDirectory() as tmp:
        evaluation = json.loads(Path(mlflow_client.download_artifacts(run_id, "evaluation.json", tmp)).read_text()) \
            if "evaluation.json" in logged else {}
        tables = {Path(path).stem: pd.read_csv(mlflow_client.download_artifacts(run_id, path, tmp))
                  for path in tables_logged}
    return evaluation, tables


# ---------------------------------------------------------------------------------------------------------------
# Quality in plain words


def format_metric(metric: str, value: float | None) -> str:
    """A metric for the page: 0.81, 45%, 3.2×, 1,234.50."""
    if value is None or not math.isfinite(value):
        return "–"
    spec = METRICS.get(metric, MetricSpec(metric, "higher", "decimal"))
    if spec.style == "percent":
        return f"{value:.{spec.digits}%}"
    if spec.style == "times":
        return f"{value:.{spec.digits}f}×"
    if spec.style == "count":
        return f"{value:,.0f}"
    return f"{value:,.{spec.digits}f}"


def format_margin(metric: str, margin: float) -> str:
    """The model's lead over a baseline, signed: +0.07, −3 pts, +1.2×."""
    spec = METRICS.get(metric, MetricSpec(metric, "higher", "decimal"))
    sign = "−" if margin < 0 else "+"
    size = abs(margin) * (100 if spec.style == "percent" else 1)
    digits = spec.digits
    while digits < spec.digits + 2 and 0 < size < 0.5 * 10 ** -digits:  # a small lead never reads as ±0.00
        digits += 1
    unit = {"percent": " pts", "times": "×"}.get(spec.style, "")
    return f"{sign}{size:,.{digits}f}{unit}"


def better_than(metric: str, model: float, baseline: float) -> bool | None:
    """Whether the model's figure is better than the baseline's (None when one is missing)."""
    if not (math.isfinite(model) and math.isfinite(baseline)):
        return None
    better = METRICS.get(metric, MetricSpec(metric, "higher", "decimal")).better
    if better == "lower":
        return model < baseline
    if better == "near 1":
        return abs(model - 1) < abs(baseline - 1)
    return model > baseline


@dataclass
class MetricRow:
    metric: str
    label: str
    better: str
    model: float
    model_text: str
    baselines: list[dict]  # name, label, value, text, margin_text, better


def metric_rows(evidence: RunEvidence) -> list[MetricRow]:
    """The shown metrics of the model beside each baseline that has them, with the margin."""
    rows = []
    for metric in evidence.page.shown_metrics:
        if metric not in evidence.metrics:
            continue
        value = float(evidence.metrics[metric])
        cells = []
        for baseline, values in evidence.baselines.items():
            other = values.get(metric)
            cells.append({"name": baseline, "label": BASELINE_NAMES.get(baseline, baseline), "value": other,
                          "text": format_metric(metric, other),
                          "margin_text": "" if other is None else format_margin(metric, value - other),
                          "better": None if other is None else better_than(metric, value, other)})
        spec = METRICS[metric]
        rows.append(MetricRow(metric, spec.label, spec.better, value, format_metric(metric, value), cells))
    return rows


@dataclass
class Quality:
    """The grade and its reading: the figure, the cut-offs, the baselines beaten or not."""

    grade: str
    metric: str
    label: str
    value: float
    value_text: str
    label_in_text: str  # the label inside a sentence ("ROC AUC", "seed members found in the top 10%")
    cutoffs: list[dict]  # grade, lower bound text
    why: str
    headline: str
    caveat: str | None
    relative: str  # the grade against the best baseline, in one sentence (training.grading)


def quality(evidence: RunEvidence) -> Quality:
    """The plain-words grade of a model (`training.grading.grade_model`: absolute, capped by the best baseline),
    from its out-of-time primary figure, with the baselines beside it."""
    rule = rule_for(evidence.kind, evidence.metrics)
    graded = grade_model(evidence.kind, evidence.metrics, evidence.baselines)
    value = graded.value
    label = METRICS[rule.metric].label
    comparisons = [(BASELINE_NAMES.get(b, b), values[rule.metric]) for b, values in evidence.baselines.items()
                   if rule.metric in values]
    headline = f"{label}: {format_metric(rule.metric, value)}"
    low, high = (evidence.metrics.get(f"{rule.metric}_ci_{end}") for end in ("low", "high"))
    if low is not None and high is not None:
        headline += f" (95% interval {format_metric(rule.metric, low)} to {format_metric(rule.metric, high)})"
    if comparisons:
        headline += " vs " + "; ".join(
            f"{format_metric(rule.metric, v)} for the {b} baseline ({format_margin(rule.metric, value - v)})"
            for b, v in comparisons)
    behind = [b for b, v in comparisons if better_than(rule.metric, value, v) is False]
    caveat = (f"The model does not beat the {' and '.join(behind)} baseline on this figure: a simpler method "
              "ranks customers as well.") if behind else None
    bounds = [{"grade": GRADES[0], "range": f"below {format_metric(rule.metric, rule.cutoffs[0])}"}]
    bounds += [{"grade": GRADES[i + 1], "range": f"{format_metric(rule.metric, low)} to below "
                                                 f"{format_metric(rule.metric, high)}"}
               for i, (low, high) in enumerate(zip(rule.cutoffs[:-1], rule.cutoffs[1:], strict=True))]
    bounds.append({"grade": GRADES[-1], "range": f"{format_metric(rule.metric, rule.cutoffs[-1])} or more"})
    return Quality(graded.grade, rule.metric, label, value, format_metric(rule.metric, value),
                   drv.lower_first(label), bounds, rule.why, headline, caveat, relative_sentence(graded, label))


def refit_sentence(evidence: RunEvidence) -> str | None:
    """Churn and value: the figures are the backtest's; the served version is the same recipe refitted later."""
    served = json.loads(evidence.params.get("data.training_as_of", "null") or "null")
    backtest = json.loads(evidence.params.get("data.backtest_training_as_of", "null") or "null")
    if not served or not backtest:
        return None
    return (f"These figures judge the recipe out of time: fitted on customers up to {backtest[-1][:10]} and scored on "
            f"what they did next. The version served is the same recipe refitted on the freshest data whose outcomes "
            f"are known, customers up to {served[-1][:10]}.")


def relative_sentence(graded: Grade, label: str) -> str:
    """How the grade stands against the best baseline, for a marketer."""
    if graded.best_baseline is None:
        return "No baseline was evaluated beside this model, so the grade rests on the cut-offs alone."
    margin = format_margin(graded.metric, graded.margin)
    interval = (f" (95% interval {format_margin(graded.metric, graded.ci[0])} to "
                f"{format_margin(graded.metric, graded.ci[1])})" if graded.ci else "")
    reading = {"better": f"beats the best baseline, {graded.best_baseline}, by {margin}{interval}",
               "no clear difference": f"is not clearly better than the best baseline, {graded.best_baseline}: "
                                      f"{margin}{interval}",
               "worse": f"is behind the best baseline, {graded.best_baseline}: {margin}{interval}"}[graded.verdict]
    capped = (f" The cut-offs alone would say {graded.absolute}; a model a simpler method matches is graded at most "
              f"{graded.grade}." if graded.grade != graded.absolute else "")
    return f"On {drv.lower_first(label)} the model {reading}.{capped}"


# ---------------------------------------------------------------------------------------------------------------
# Charts redrawn from the logged tables


# ---------------------------------------------------------------------------------------------------------------
# Driver charts


def axis_label(feature: str) -> str:
    """A feature's label with its unit for an axis: "Days since last purchase (days)", "... (%)"."""
    spec = FEATURES_BY_NAME[feature]
    if spec.dtype == "boolean":
        return f"{spec.label} (no / yes)"
    if spec.bounds == SHARE:
        return f"{spec.label} (%)"
    unit = {"currency": "currency", "orders": "purchases"}.get(spec.unit, spec.unit)
    return f"{spec.label} ({unit})" if unit else spec.label


def plotted_values(feature: str, values: np.ndarray) -> np.ndarray:
    """Shares as percentages (what the axis says); everything else as it is."""
    return 100 * values if FEATURES_BY_NAME[feature].bounds == SHARE else values


def drivers_chart(drivers: drv.DriverSet, title: str) -> str:
    """Horizontal bars: mean |effect| per business attribute, strongest on top."""
    table = drv.importance_table(drivers).iloc[::-1]
    fig, ax = figure(title, f"Average size of the effect on {drivers.subject} ({drivers.scale})",
                     "Business attribute", width=7.0, height=0.38 * len(table) + 1.4)
    pairs = zip(table["label"], table["group"], strict=True)
    names = [label if label == group else f"{label}  ·  {group}" for label, group in pairs]
    ax.barh(names, table["mean_abs"], color=MAIN)
    ax.grid(axis="y", visible=False)
    return svg(fig)


def dependence_chart(drivers: drv.DriverSet, driver: drv.Driver, max_points: int = 600) -> str:
    """The attribute's effect against its leading feature's value: customers as dots, bin means as a line, the
    threshold as a dashed line."""
    feature = driver.feature
    x = drv.numeric_values(drivers.features[feature])
    y = drivers.grouped[driver.attribute].to_numpy(dtype=float)
    present = np.flatnonzero(np.isfinite(x))
    shown = np.random.default_rng(0).permutation(present)[:max_points]  # fewer dots keep the SVG light
    low, high = np.quantile(x[present], [0.0, 0.99]) if len(present) else (0.0, 1.0)
    x_label = axis_label(feature)
    if len(present) and high < np.nanmax(x):
        x_label = x_label[:-1] + "; the top 1% off the chart)" if x_label.endswith(")") else \
            f"{x_label} (the top 1% off the chart)"
    fig, ax = figure(f"{driver.label}: effect on {drivers.subject}", x_label,
                     f"Effect on {drivers.subject} ({drivers.scale})", width=7.0, height=3.6)
    ax.scatter(plotted_values(feature, x[shown]), y[shown], s=9, alpha=0.45, color=MAIN, linewidths=0,
               label="customers (sample)")
    bins = drv.effect_bins(x[present], y[present])
    ax.step(plotted_values(feature, bins["upper"].to_numpy()), bins["mean_effect"], where="pre", color=ACCENT,
            label="average per band of values")
    ax.axhline(0, color=NEUTRAL, linewidth=1)
    if driver.threshold is not None:
        ax.axvline(plotted_values(feature, np.array([driver.threshold.value]))[0], color=TEXT_COLOUR, linestyle="--",
                   label=f"effect changes: {format_value(feature, driver.threshold.value, digits=1)}")
    if FEATURES_BY_NAME[feature].dtype == "boolean":
        ax.set_xticks([0, 1], ["no", "yes"])
    elif high > low:
        pad = 0.03 * (high - low)
        ax.set_xlim(*plotted_values(feature, np.array([low - pad, high + pad])))
    ax.legend(loc="best")
    return svg(fig)


def category_chart(drivers: drv.DriverSet, driver: drv.Driver) -> str:
    """Mean effect per category of a text feature."""
    categories = driver.categories.head(12).iloc[::-1]
    fig, ax = figure(f"{driver.label}: effect on {drivers.subject}", f"Average effect ({drivers.scale})",
                     FEATURES_BY_NAME[driver.feature].label, width=6.4, height=0.35 * len(categories) + 1.4)
    ax.barh([str(c) for c in categories.index], categories.to_numpy(),
            color=effect_colours(categories.to_numpy(), drivers.risk))
    ax.axvline(0, color=NEUTRAL, linewidth=1)
    return svg(fig)


def effect_charts(drivers: drv.DriverSet, top: int = 2) -> list[str]:
    return [category_chart(drivers, d) if d.categories is not None else dependence_chart(drivers, d)
            for d in drivers.drivers[:top]]


def driver_items(drivers: drv.DriverSet) -> list[dict]:
    """The drivers as template rows (sentence plus the numbers behind it, for data attributes)."""
    return [{"attribute": d.attribute, "feature": d.feature, "label": d.label, "group": d.group,
             "sentence": d.sentence, "share": d.share, "direction": d.direction or "",
             "threshold": "" if d.threshold is None else repr(d.threshold.value),
             "mean_abs": d.mean_abs} for d in drivers.drivers]


# ---------------------------------------------------------------------------------------------------------------
# The sample and its contributions


def report_sample(state, size: int, seed: int, population: np.ndarray | None = None) -> pd.DataFrame:
    """Up to `size` customers of the serve folder's feature table (of its `population` rows, a boolean mask, when
    given), drawn with a fixed seed (the same sample on every run: `population`'s rows as `DataFrame.sample` draws
    them). Only the sample's rows are read from the file (`serving.state.served_rows`)."""
    rows = np.arange(customer_count(state)) if population is None else np.flatnonzero(population)
    if len(rows) > size:
        rows = rows[np.random.RandomState(seed).choice(len(rows), size, replace=False)]
    return served_rows(state, rows)


def customer_count(state) -> int:
    """The customers of the serve folder's feature table."""
    return feature_table_rows(state.directory / FEATURES_FILE)


def seed_words(seed: str) -> str:
    return seed.replace("_", " ")


def single_output_drivers(explainer, sample: pd.DataFrame, subject: str, risk: bool = False) -> drv.DriverSet:
    values = drv.explainer_contributions(explainer, sample)
    return drv.driver_set(subject, explainer.target.margin_scale, explainer.encoder.feature_names_, sample,
                          values[:, 0, :-1], risk=risk)


# ---------------------------------------------------------------------------------------------------------------
# Pages


@dataclass
class Context:
    """What every model page of one build shares."""

    state: object  # serving.state.ServingState
    mlflow_client: object
    site: Site
    out_dir: Path
    sample_size: int
    seed: int
    written: list[Path] = field(default_factory=list)


def page_of_kind(kind: str) -> ReportPage:
    """A model kind's report declaration (`Estimator.report`)."""
    from training.estimators import model_class

    return model_class(kind).report


def model_file(name: str) -> str:
    """The page of a registered model: the kind's declared file (clusters.html), else model-<kind>.html or
    model-<kind>-<seed>.html."""
    kind, seed = kind_of(name)
    declared = page_of_kind(kind).file
    if declared:
        return declared
    return f"model-{kind}-{seed}.html" if seed else f"model-{kind}.html"


def model_links(manifest: dict) -> list[NavLink]:
    """Navigation links to the model pages of a serve folder's manifest (section "Models"; per-seed models after
    the others, single-page kinds such as clusters last)."""
    def order(name: str):
        kind, seed = kind_of(name)
        return page_of_kind(kind).file is not None, seed is not None, name

    return [NavLink(page_of_kind(kind_of(name)[0]).nav_label.format(seed=seed_words(kind_of(name)[1] or "")),
                    model_file(name), "Models") for name in sorted(manifest.get("models", {}), key=order)]


def default_site(state) -> Site:
    return Site(links=tuple(model_links(state.manifest)), data_as_of=state.as_of, models=site_models(state.manifest),
                feature_set_version=state.manifest.get("feature_set_version"))


def model_pages(serve_dir: Path, out_dir: Path, *, site: Site | None = None, state=None,
                sample_size: int = DEFAULT_SAMPLE, seed: int = 0) -> list[Path]:
    """Write the model pages of the models served from `serve_dir` into `out_dir`; returns the files written.

    Args:
        serve_dir: the serve folder (manifest with each model's registered name and version, feature table).
        out_dir: where the pages go (created).
        site: navigation and footer facts shared with the other reports (default: links to the model pages only).
        state: an already loaded `serving.state.ServingState` of `serve_dir` (loaded here when None).
        sample_size, seed: the customers the SHAP drivers are computed on (a fixed-seed sample).

    MLflow is read at the current tracking URI (`training.tracking.client()`).
    """
    from serving.state import load_state
    from training.tracking import client

    state = state if state is not None else load_state(Path(serve_dir), rows=1)  # samples are read from the file
    if state.scorer is None:
        raise LookupError(f"no model can be loaded from {serve_dir}: {'; '.join(state.problems) or 'none served'}")
    context = Context(state, client(), site or default_site(state), Path(out_dir), sample_size, seed)
    for name, explainer in state.scorer.explainers.items():
        evidence = load_evidence(context.mlflow_client, name, state.versions[name])
        writer = clusters_page if evidence.page.page == "clusters" else model_page
        context.written.append(writer(context, explainer, evidence))
    return context.written


def _write(context: Context, file_name: str, template: str, **values) -> Path:
    html = render_page(template, site=context.site, page_file=file_name, **values)
    return write_page(context.out_dir, file_name, html)


def model_page(context: Context, explainer, evidence: RunEvidence) -> Path:
    """The page of a model with one explained score (churn, value, look-alikes), as its kind declares it."""
    page, seed = evidence.page, seed_words(evidence.seed or "")
    # the churn model's population: training's rule (`churn_eligible`), from the one column it reads
    population = (churn_eligible(served_rows(context.state, columns=["orders_count_365d"]))
                  if page.population == "active" else np.ones(customer_count(context.state), dtype=bool))
    sample = report_sample(context.state, context.sample_size, context.seed, population)
    subject = page.subject.format(seed=seed) if page.subject else explainer.target.words
    drivers = single_output_drivers(explainer, sample, subject, risk=page.risk)
    contrast = lookalike_contrast(explainer, drivers, sample) if page.contrast else ""
    title = page.title + (f": {seed}" if evidence.seed else "")
    return _write(context, model_file(evidence.name), "model.html.j2", title=title, evidence=evidence,
                  page=page, purpose=purpose(evidence), quality=quality(evidence), subject=subject,
                  rows=metric_rows(evidence), baselines=[BASELINE_NAMES.get(b, b) for b in evidence.baselines],
                  drivers=driver_items(drivers), contrast=contrast, refit=refit_sentence(evidence),
                  population_text=population_text(page, len(sample), int(population.sum())),
                  drivers_chart=drivers_chart(drivers, f"What moves {subject} most"),
                  effect_charts=effect_charts(drivers), evaluation_charts=evaluation_charts(evidence),
                  data_window=data_window_rows(evidence), warnings=leak_warnings(evidence),
                  health=health_section(context.mlflow_client, evidence))


def health_section(mlflow_client, evidence: RunEvidence) -> dict:
    """Health over time from `segments monitor` runs (training.tracking.health_history): the realised primary
    figure of each monitored version against its out-of-time figure at training, and each run's status."""
    from training.tracking import health_history

    history = health_history(mlflow_client, evidence.name)
    metric = rule_for(evidence.kind, evidence.metrics).metric
    rows = [{"monitor_as_of": str(r["monitor_as_of"])[:10], "version": r["version"], "status": r["status"],
             "realised": r.get(f"realised.{metric}"), "psi_score_max": r.get("psi_score_max"),
             "features_drifting": r.get("features_drifting")} for _, r in history.iterrows()]
    realised = history.dropna(subset=[f"realised.{metric}"]) if f"realised.{metric}" in history else history.iloc[:0]
    chart = health_chart(realised, metric, evidence.metrics.get(metric)) if len(realised) else ""
    return {"rows": rows, "chart": chart, "metric_label": METRICS[metric].label}


def health_chart(realised: pd.DataFrame, metric: str, at_training: float | None) -> str:
    """The realised primary figure per monitoring date, one line per model version, against the training figure."""
    label = METRICS[metric].label
    fig, ax = figure(f"{label} once the outcomes were known", "Date monitored", f"{label} (realised)",
                     subtitle="Each point: the served model's predictions scored against what customers then did")
    for i, (version, rows) in enumerate(realised.groupby("version", sort=True)):
        ax.plot(pd.to_datetime(rows["monitor_as_of"]), rows[f"realised.{metric}"], marker="o",
                color=SERIES[i % len(SERIES)] if i else MAIN, label=f"version {version}")
    if at_training is not None and math.isfinite(at_training):
        ax.axhline(at_training, color=NEUTRAL, linestyle=":", linewidth=1.2,
                   label=f"this version at training (out of time): {format_metric(metric, at_training)}")
    date_axis(ax)
    ax.legend(loc="lower left")
    return svg(fig)


def purpose(evidence: RunEvidence) -> str:
    """The kind's purpose sentence with the run's horizon and seed."""
    seed = seed_words(evidence.seed or "")
    definition = json.loads(evidence.params.get("data.seed_definition", "{}") or "{}")
    return evidence.page.purpose.format(horizon=evidence.params.get("data.horizon_days", "90"), seed=seed,
                                        what=definition.get("description") or seed)


def population_text(page: ReportPage, n_sample: int, n_population: int) -> str:
    who = "customers with a purchase in the last 365 days" if page.population == "active" else "customers"
    return f"Computed on {n_sample:,} {who} drawn at random (fixed seed) from {n_population:,}."


def _chart(section: str, title: str, chart: str, caption: str, square: bool = False) -> dict:
    return {"id": section, "title": title, "svg": chart, "caption": caption, "shape": "square" if square else ""}


def evaluation_charts(evidence: RunEvidence) -> list[dict]:
    """The evaluation charts the kind declares (calibration and lift, or reach), redrawn from the run's logged
    tables (none when the run lacks them: the page says so)."""
    page = evidence.page
    if any(name not in evidence.tables for name in page.chart_tables):
        return []
    horizon, seed = evidence.params.get("data.horizon_days", "90"), seed_words(evidence.seed or "")
    return [_chart(c.section, c.title, svg(c.draw(evidence.tables, horizon, seed)), c.caption, square=c.square)
            for c in page.charts]


def data_window_rows(evidence: RunEvidence) -> list[dict]:
    table = evidence.tables.get("data_window")
    if table is None:
        return []
    return [{"as_of": str(r.as_of)[:10], "role": r.role, "customers": int(r.customers),
             "target_mean": float(r.target_mean)} for r in table.itertuples()]


def leak_warnings(evidence: RunEvidence) -> list[str]:
    """Look-alikes: inputs that alone separate the seed (from tables/separating_features.csv)."""
    from training.estimators.lookalike import LEAK_AUC

    table = evidence.tables.get("separating_features")
    if table is None:
        return []
    leaks = table[table["auc"] >= LEAK_AUC]
    return [f"{r.label} alone separates seed members from everyone else (AUC {r.auc:.3f}): it may restate the "
            "seed's definition, so the look-alikes it finds may simply be near-members." for r in leaks.itertuples()]


def lookalike_contrast(explainer, drivers: drv.DriverSet, sample: pd.DataFrame) -> str:
    """The top 10% of the sample by look-alike score against the whole sample, on the top drivers' features."""
    score = explainer.model.ranking_score(sample)
    top = sample[score >= np.quantile(score, 1 - TOP_GROUP_SHARE)]
    who = f"the {TOP_GROUP_SHARE:.0%} of customers most like {seed_words(explainer.seed)}"
    return drv.contrast_sentence(who, drivers.drivers, top, sample)


# ---------------------------------------------------------------------------------------------------------------
# Clusters


def clusters_page(context: Context, explainer, evidence: RunEvidence) -> Path:
    """Personas of every served cluster: size, what sets it apart, its surrogate SHAP drivers, a profile chart."""
    model = explainer.model
    sample = report_sample(context.state, context.sample_size, context.seed)
    values = drv.explainer_contributions(explainer, sample)
    assigned = model.assign(sample)
    profiles = evidence.tables["profiles"].set_index("cluster_id")
    population = evidence.tables["population"].set_index("feature")
    personas = []
    for cluster_id, name in enumerate(model.names_):
        drivers = drv.driver_set("membership", "log-odds", explainer.encoder.feature_names_, sample,
                                 values[:, cluster_id, :-1])
        members = sample[assigned == cluster_id]
        profile = profiles.loc[cluster_id]
        personas.append({
            "id": cluster_id, "name": name, "size": int(profile["size"]), "share": float(profile["share"]),
            "persona": persona_sentence(profile, population),
            "drivers": driver_items(drivers),
            "contrast": cluster_contrast(drivers, profile, members, sample),
            "profile_chart": profile_chart(profile, population, name),
            "drivers_chart": drivers_chart(drivers, "What decides membership"),
        })
    return _write(context, model_file(evidence.name), "clusters.html.j2", title=evidence.page.title,
                  evidence=evidence, quality=quality(evidence), rows=metric_rows(evidence),
                  baselines=[BASELINE_NAMES.get(b, b) for b in evidence.baselines],
                  personas=personas,
                  sizes_chart=svg(plots.cluster_sizes(evidence.tables["profiles"])),
                  heatmap=svg(plots.profile_heatmap(evidence.tables["profiles"])),
                  population_text=population_text(evidence.page, len(sample), customer_count(context.state)),
                  k_note=f"{len(model.names_)} clusters, chosen by {model.criterion_} over "
                         f"k = {int(model.k_scores_['k'].min())}…{int(model.k_scores_['k'].max())}.")


def cluster_contrast(drivers: drv.DriverSet, profile: pd.Series, members: pd.DataFrame,
                     sample: pd.DataFrame) -> str:
    """The drivers' features not already in the persona sentence: members against the whole sample."""
    described = set(distinguishing(profile))
    rest = [d for d in drivers.drivers if d.feature not in described]
    if members.empty or not rest:
        return ""
    return drv.contrast_sentence("also typical of its members (in the sample)", rest, members, sample)


def distinguishing(profile: pd.Series, top: int = 3) -> list[str]:
    """The profile's features furthest from the population (by |standardized difference|), strongest first."""
    diffs = {c.removesuffix("__std_diff"): float(v) for c, v in profile.items()
             if str(c).endswith("__std_diff") and pd.notna(v)}
    return sorted(diffs, key=lambda f: -abs(diffs[f]))[:top]


def persona_sentence(profile: pd.Series, population: pd.DataFrame, top: int = 3) -> str:
    """"Compared with all customers, they have days since last purchase 240 days (all customers: 60 days), ..."
    from the logged profile (cluster medians) and population (medians)."""
    phrases = []
    for feature in distinguishing(profile, top):
        label = drv.lower_first(FEATURES_BY_NAME[feature].label)
        word = "higher" if profile[f"{feature}__std_diff"] > 0 else "lower"
        phrases.append(f"{word} {label}: {format_value(feature, profile[f'{feature}__median'], digits=1)} "
                       f"(all customers: {format_value(feature, population.loc[feature, 'median'], digits=1)})")
    return "Compared with all customers: " + "; ".join(phrases) + "." if phrases else ""


def profile_chart(profile: pd.Series, population: pd.DataFrame, name: str, top: int = 8) -> str:
    """Bars of the standardized difference from the population for the cluster's most distinguishing features."""
    features = distinguishing(profile, top)[::-1]
    diffs = [float(profile[f"{f}__std_diff"]) for f in features]
    fig, ax = figure("How its members differ from all customers",
                     "Difference from all customers (standard deviations)", "Feature", width=7.0,
                     height=0.36 * len(features) + 1.5,
                     subtitle="medians; right (blue): members higher, left (grey): lower")
    ax.barh([FEATURES_BY_NAME[f].label for f in features], diffs, color=difference_colours(diffs))
    ax.axvline(0, color=NEUTRAL, linewidth=1)
    ax.grid(axis="y", visible=False)
    return svg(fig)

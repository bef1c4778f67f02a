"""Model pages of the marketer reports: numbers equal MLflow's, grades follow the printed cut-offs, the "what unlocks
it" thresholds are where the SHAP effect really changes, personas for every cluster, and the pages open cleanly in
a real headless Chromium.

Small real models are trained and served once for the module (tests/serving_setup.py); SHAP contributions are
recomputed here with LightGBM's own `pred_contrib`, not with the report's code.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from serving_setup import build_served, environment, use_bentoml_home

from serving.explain.reasons import attribute_of
from serving.reports.model_pages import model_pages
from training.grading import GRADE_RULES, GRADES

SAMPLE, SEED = 2000, 0
VOID = {"meta", "br", "img", "input", "link", "hr", "wbr", "source", "col", "area", "base", "embed", "track"}


@pytest.fixture(scope="module")
def report(tmp_path_factory, generated_validation, small_models):
    """The served models, their loaded state and the model pages written from them."""
    from serving.state import load_state

    root = tmp_path_factory.mktemp("report-models")
    served = build_served(root, generated_validation, small_models)  # run artifacts stay in root (tracking_in)
    with environment(**served["env"]):
        use_bentoml_home(Path(served["env"]["BENTOML_HOME"]))
        state = load_state(served["serve_dir"])
        assert state.ready, state.problems
        paths = model_pages(served["serve_dir"], root / "reports", state=state, sample_size=SAMPLE, seed=SEED)
        runs = mlflow_runs(state.versions)
    return {"served": served, "state": state, "paths": {p.name: p for p in paths}, "runs": runs}


def mlflow_runs(versions: dict[str, str]) -> dict[str, dict]:
    """Per served model: its run's metrics, params and evaluation.json, read straight from MLflow."""
    import mlflow

    from training.tracking import client

    mlflow_client = client()
    out = {}
    for name, version in versions.items():
        run_id = mlflow_client.get_model_version(name, version).run_id
        run = mlflow_client.get_run(run_id)
        metrics, params = run.data.metrics, run.data.params
        evaluation = mlflow.artifacts.load_dict(f"runs:/{run_id}/evaluation.json")
        profiles = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/tables/profiles.csv")) \
            if name.endswith("clusters") else None
        out[name] = {"metrics": metrics, "params": params, "evaluation": evaluation, "profiles": profiles,
                     "tags": run.data.tags}
    return out


class DataElements(HTMLParser):
    """Elements of a page that carry data-* attributes, with their text."""

    def __init__(self, html: str):
        super().__init__()
        self.found, self._open = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        element = {"tag": tag, "attrs": dict(attrs), "text": []}
        self._open.append(element)
        if any(key.startswith("data-") for key in element["attrs"]):
            self.found.append(element)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self._open:
            element["text"].append(data)

    def having(self, attribute: str) -> list[dict]:
        return [{**e["attrs"], "text": " ".join("".join(e["text"]).split())} for e in self.found
                if attribute in e["attrs"]]


def elements(report, file_name: str, attribute: str) -> list[dict]:
    return DataElements(report["paths"][file_name].read_text()).having(attribute)


def shown_number(text: str) -> tuple[float, float]:
    """(value, half of its last digit) of a number as shown: "0.90", "75%", "3.7×", "2,383"."""
    match = re.search(r"[−-]?[\d,]+(\.\d+)?", text)
    digits = len(match.group(1)) - 1 if match.group(1) else 0
    value = float(match.group(0).replace(",", "").replace("−", "-"))
    scale = 100.0 if "%" in text else 1.0
    return value / scale, 0.5 * 10 ** -digits / scale


def expected_files(versions: dict[str, str]) -> set[str]:
    names = set()
    for name in versions:
        if name == "segments-clusters":
            names.add("clusters.html")
        elif name.startswith("segments-lookalike-"):
            names.add(f"model-lookalike-{name.removeprefix('segments-lookalike-')}.html")
        else:
            names.add(f"model-{name.removeprefix('segments-')}.html")
    return names


def test_one_page_per_served_model(report):
    assert set(report["paths"]) == expected_files(report["state"].versions)
    assert {"model-churn.html", "model-value.html", "model-lookalike-best_members.html", "clusters.html"} \
        <= set(report["paths"])


def page_of(name: str) -> str:
    return next(iter(expected_files({name: ""})))


def test_metrics_shown_equal_mlflow_run_metrics(report):
    for name, run in report["runs"].items():
        shown = elements(report, page_of(name), "data-scorer")
        assert shown, f"{name}: no metrics on its page"
        scorers = {e["data-scorer"] for e in shown}
        assert "model" in scorers and len(scorers) > 1, f"{name}: baselines missing ({scorers})"
        for element in shown:
            key = element["data-metric"] if element["data-scorer"] == "model" \
                else f"baseline.{element['data-scorer']}.{element['data-metric']}"
            expected = run["metrics"][key]
            assert float(element["data-value"]) == expected, (name, key)
            value, tolerance = shown_number(element["text"])
            assert abs(value - expected) <= tolerance + 1e-12, (name, key, element["text"], expected)


def test_evaluation_date_and_customers_come_from_evaluation_json(report):
    for name, run in report["runs"].items():
        facts = {e["data-metric"]: e for e in elements(report, page_of(name), "data-metric")}
        assert int(facts["n_customers"]["data-value"]) == run["evaluation"]["n_customers"]
        assert facts["n_customers"]["text"] == f"{run['evaluation']['n_customers']:,}"
        assert facts["evaluation_as_of"]["text"] == run["evaluation"]["as_of"][:10]


def test_grade_follows_the_cutoffs_printed_on_the_page(report):
    for name, run in report["runs"].items():
        page = page_of(name)
        cutoffs = {e["data-cutoff"]: e["text"] for e in elements(report, page, "data-cutoff")}
        assert list(cutoffs) == list(GRADES)
        lower = {grade: -math.inf if grade == "Poor" else shown_number(text)[0] for grade, text in cutoffs.items()}
        grade = next(e for e in elements(report, page, "data-grade"))
        value = run["metrics"][grade["data-metric"]]
        by_cutoffs = max((g for g in GRADES if value >= lower[g]), key=GRADES.index)
        relative = next(e for e in elements(report, page, "data-section") if e["data-section"] == "relative-grade")
        if grade["data-grade"] == by_cutoffs:
            assert "would say" not in relative["text"], name
        else:  # capped below the cut-offs' grade only because a baseline matches it, and the page says why
            assert GRADES.index(grade["data-grade"]) < GRADES.index(by_cutoffs), name
            assert f"The cut-offs alone would say {by_cutoffs}" in relative["text"], (name, relative["text"])
            assert "not clearly better" in relative["text"] or "is behind" in relative["text"], name


def test_a_model_a_baseline_matches_is_never_excellent():
    from training.grading import grade_model

    baselines = {"bgnbd": {"roc_auc": 0.90}, "recency": {"roc_auc": 0.80}}
    tie = grade_model("churn", {"roc_auc": 0.91, "margin_ci_low": -0.004, "margin_ci_high": 0.02}, baselines)
    assert (tie.absolute, tie.grade, tie.verdict, tie.best_baseline) == ("Excellent", "Good", "no clear difference",
                                                                         "BG/NBD")
    behind = grade_model("churn", {"roc_auc": 0.88, "margin_ci_low": -0.03, "margin_ci_high": -0.01}, baselines)
    assert (behind.grade, behind.verdict) == ("Fair", "worse")
    ahead = grade_model("churn", {"roc_auc": 0.93, "margin_ci_low": 0.01, "margin_ci_high": 0.05}, baselines)
    assert (ahead.grade, ahead.verdict) == ("Excellent", "better") and ahead.margin == pytest.approx(0.03)
    poor = grade_model("churn", {"roc_auc": 0.6, "margin_ci_low": 0.01, "margin_ci_high": 0.05}, {})
    assert (poor.grade, poor.verdict) == ("Poor", "no baseline")


def test_grade_boundaries():
    rule = GRADE_RULES["churn"]
    assert [rule.grade(v) for v in (0.5, 0.6499, 0.65, 0.7499, 0.75, 0.85, 0.99)] == \
        ["Poor", "Poor", "Fair", "Fair", "Good", "Excellent", "Excellent"]
    assert rule.grade(float("nan")) == "Not graded"


def test_a_small_lead_over_a_baseline_never_reads_as_zero():
    from serving.reports.model_pages import format_margin

    assert format_margin("roc_auc", -0.0021) == "−0.002"
    assert format_margin("roc_auc", 0.07) == "+0.07"
    assert format_margin("recall_at_10", 0.27) == "+27 pts"


def test_a_planted_step_is_found_and_phrased_with_the_catalog_unit():
    from serving.explain.drivers import describe_driver, driver_sentence

    days = pd.Series(np.arange(1000) % 200, dtype="float64", name="days_since_last_order")
    effect = pd.Series(np.where(days > 60, 0.8, -0.4) + 0.01 * np.sin(days.to_numpy()))
    driver = describe_driver("days_since_last_order", "days_since_last_order", days, effect, 0.5, 1.0)
    assert driver.threshold.value == 59 or driver.threshold.value == 60  # the decile edge at the step
    assert driver.threshold.crosses_zero and driver.threshold.sharp and driver.direction == "rises"
    sentence = driver_sentence("churn risk", driver)
    assert sentence.startswith(f"Churn risk rises sharply for days since last purchase above "
                               f"{driver.threshold.value:.0f} days"), sentence


@pytest.mark.parametrize("rare", [True, False])
def test_a_rare_strong_yes_no_driver_is_named_not_called_flat(rare):
    """1% of customers hold the rare value, whose effect is strong: its bin is under the 2% merging floor, yet it
    keeps its own bin, so the sentence names the step in yes/no words (no "above", no "barely varies")."""
    from serving.explain.drivers import describe_driver, driver_sentence, effect_bins

    is_rare = np.arange(1000) % 100 == 0
    values = pd.Series(is_rare if rare else ~is_rare, name="loyalty_member")
    effect = pd.Series(np.where(is_rare, 2.0, -0.02))  # the rare value raises the score a lot
    driver = describe_driver("loyalty_member", "loyalty_member", values, effect, 0.04, 1.0)
    assert len(effect_bins(values.to_numpy(float), effect.to_numpy())) == 2
    assert driver.threshold is not None and driver.threshold.crosses_zero
    sentence = driver_sentence("churn risk", driver)
    verb = "rises" if rare else "falls"  # yes is the rare value, or no is
    assert sentence.startswith(f"Churn risk {verb} sharply when ‘loyalty member’ is yes"), sentence
    assert "above" not in sentence and "below" not in sentence and "barely" not in sentence


def test_a_rare_strong_count_keeps_its_own_bin():
    """A count that is 0 for 99% of customers: the 1% above 0 is where the effect is."""
    from serving.explain.drivers import describe_driver, driver_sentence

    returns = pd.Series(np.where(np.arange(1000) % 100 == 0, 3.0, 0.0), name="returns_count_365d")
    effect = pd.Series(np.where(returns > 0, 1.5, -0.01))
    driver = describe_driver("returns_count", "returns_count_365d", returns, effect, 0.03, 1.0)
    assert driver.threshold.value == 0 and driver.direction == "rises"
    assert driver_sentence("churn risk", driver).startswith("Churn risk rises sharply for returns (365 days) above 0 "
                                                            "(pushed up above that value")


def test_a_known_direction_without_a_threshold_is_still_said():
    from serving.explain.drivers import Driver, driver_sentence

    driver = Driver("orders_count", "Purchases", "Frequency", "orders_count_90d", 0.1, 0.5, -0.6, None)
    assert driver_sentence("churn risk", driver) == "Churn risk falls with higher purchases in the last 90 days."
    flat = Driver("orders_count", "Purchases", "Frequency", "orders_count_90d", 0.1, 0.5, None, None)
    assert driver_sentence("churn risk", flat) == "Churn risk barely varies with purchases in the last 90 days."


def svg_fills(chart: str) -> set[str]:
    """The fill colours of a chart's bars (matplotlib writes them in lower case)."""
    return set(re.findall(r"fill: (#[0-9a-f]{6})", chart))


def test_each_colour_means_one_thing_on_every_chart():
    """Raising churn risk is a loss (vermillion) on the churn page as on the customer page; raising another score is
    a gain; members higher than everyone are blue and lower grey, on segment and cluster profiles alike."""
    from serving.explain.drivers import Driver, DriverSet
    from serving.reports import segment_pages as segments
    from serving.reports.model_pages import category_chart, profile_chart
    from training import plots

    assert plots.effect_colours([0.3, -0.2], risk=True) == [plots.NEGATIVE, plots.POSITIVE]
    assert plots.effect_colours([0.3, -0.2], risk=False) == [plots.POSITIVE, plots.NEGATIVE]
    driver = Driver("region", "Region", "Geography", "region", 0.1, 0.5, None, None,
                    categories=pd.Series([0.4, -0.3], index=["north", "south"]))  # drawn bottom up: south first
    gain, loss = plots.POSITIVE.lower(), plots.NEGATIVE.lower()
    for risk, bars in ((True, [gain, loss]), (False, [loss, gain])):
        drivers = DriverSet("churn risk", "log-odds", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), risk=risk)
        chart = category_chart(drivers, driver)
        assert [c for c in re.findall(r"fill: (#[0-9a-f]{6})", chart) if c in (gain, loss)] == bars, risk
    members = {plots.MAIN.lower(), plots.NEUTRAL.lower()}
    meaningful = {plots.NEGATIVE.lower(), plots.POSITIVE.lower(), plots.ACCENT.lower()}
    frame = pd.DataFrame({"label": ["Spend", "Purchases"], "difference": [1.2, -0.8]})
    cluster = pd.Series({"spend_sum_90d__std_diff": 1.2, "orders_count_90d__std_diff": -0.8})
    for chart in (segments.profile_chart("vip", frame, None), profile_chart(cluster, pd.DataFrame(), "big spenders")):
        assert members <= svg_fills(chart) and not svg_fills(chart) & meaningful


# ---------------------------------------------------------------------------------------------------------------
# "What unlocks it": recomputed from LightGBM's own contributions


def report_sample(table: pd.DataFrame, churn: bool) -> pd.DataFrame:
    rows = table[table["orders_count_365d"].fillna(0) > 0] if churn else table
    return rows.sample(min(SAMPLE, len(rows)), random_state=SEED) if len(rows) > SAMPLE else rows


def raw_contributions(name: str, model, sample: pd.DataFrame, cluster: int | None) -> pd.DataFrame:
    """The served model's contributions: LightGBM's pred_contrib (own class `cluster` for the clusters' surrogate)
    plus the part of the margin the model declares beside its trees (churn's textbook term)."""
    if name.startswith("segments-value"):
        booster = model.boosters_["spend"]
    else:
        booster = model.booster_
    X = model.encoder_.matrix(sample)
    values = np.asarray(booster.predict(X, pred_contrib=True))
    if cluster is None and model.explanation().extra is not None:
        values = values + model.explanation().extra(X)
    inputs = model.encoder_.feature_names_
    if cluster is not None:
        values = values.reshape(len(sample), -1, len(inputs) + 1)[:, cluster, :]
    return pd.DataFrame(values[:, :-1], index=sample.index, columns=inputs)


def expected_cut(x: np.ndarray, effect: np.ndarray) -> tuple[float, float, float]:
    """(cut, mean effect just below, just above): deciles at observed values, bins under 2% of rows joined to the
    next, then the largest step where the mean changes sign between neighbours, else the largest step."""
    keep = np.isfinite(x)
    x, effect = x[keep], effect[keep]
    cuts = sorted(set(np.quantile(x, np.arange(1, 11) / 10, method="lower").tolist()))
    cuts[-1] = float(x.max())
    minimum = math.ceil(0.02 * len(x))
    merged, carry = [], 0
    for low, high in zip([-math.inf, *cuts[:-1]], cuts, strict=True):
        carry += int(((x > low) & (x <= high)).sum())
        if carry >= minimum:
            merged.append(high)
            carry = 0
    if carry:
        merged[-1] = cuts[-1]
    if len(merged) < 2:  # never one bin: the most even split in two
        values = np.unique(x)
        merged = [max(values[:-1], key=lambda v: min((x <= v).sum(), (x > v).sum())), float(x.max())]
    means = pd.Series(effect).groupby(pd.cut(x, [-math.inf, *merged], right=True), observed=True).mean().to_numpy()
    pairs = list(zip(means[:-1], means[1:], merged[:-1], strict=True))
    crossing = [p for p in pairs if p[0] * p[1] < 0]
    below, above, cut = max(crossing or pairs, key=lambda p: abs(p[1] - p[0]))
    return cut, below, above


def threshold_in_sentence(sentence: str) -> tuple[float, float]:
    """The number after "above" in a sentence (shares back to fractions), with a rounding tolerance."""
    match = re.search(r"above (-?[\d,.]+)(%?)", sentence)
    value = float(match.group(1).replace(",", "").rstrip("."))
    if match.group(2):
        return value / 100, 0.005
    return value, max(0.5, 0.05 * abs(value))


def check_drivers(drivers: list[dict], contributions: pd.DataFrame, sample: pd.DataFrame) -> None:
    grouped = contributions.T.groupby(contributions.columns.map(attribute_of), sort=False).sum().T
    strongest = grouped.abs().mean().sort_values(ascending=False, kind="stable").index[:len(drivers)]
    assert [d["data-driver"] for d in drivers] == list(strongest), "order"
    for driver in drivers:
        attribute, feature = driver["data-driver"], driver["data-feature"]
        members = [c for c in contributions.columns if attribute_of(c) == attribute]
        assert feature == contributions[members].abs().mean().idxmax()
        x = pd.to_numeric(sample[feature].astype("object"), errors="coerce").to_numpy(dtype=float)
        effect = grouped[attribute].to_numpy()
        present = np.isfinite(x)
        rho = pd.Series(x[present]).corr(pd.Series(effect[present]), method="spearman")
        assert driver["data-direction"] == ("rises" if rho > 0 else "falls"), (attribute, rho)
        cut, below, above = expected_cut(x, effect)
        assert float(driver["data-threshold"]) == pytest.approx(cut), attribute
        sentence = driver["text"]
        assert (" rises" if above > below else " falls") in sentence, sentence
        if sample[feature].dtype == bool or str(sample[feature].dtype) == "boolean":  # yes/no: no numbers
            assert "is yes" in sentence and "above" not in sentence, sentence
            continue
        if below * above < 0:  # the effect changes sign there: the sentence says so
            assert "up above that value, down below it" in sentence or "down above that value, up below it" \
                in sentence, sentence
        shown, tolerance = threshold_in_sentence(sentence)
        assert abs(shown - cut) <= tolerance, (sentence, cut)


def test_drivers_thresholds_and_directions_follow_the_contributions(report):
    state = report["state"]
    for name, model in state.scorer.bundle.models.items():
        if name.endswith("clusters"):
            continue
        sample = report_sample(state.table, churn=name == "segments-churn")
        drivers = [d for d in elements(report, page_of(name), "data-driver") if d["data-model"] == name]
        assert len(drivers) == 3, name
        check_drivers(drivers, raw_contributions(name, model, sample, None), sample)


def test_cluster_drivers_follow_the_surrogate_contributions(report):
    state = report["state"]
    model = state.scorer.bundle.models["segments-clusters"]
    sample = report_sample(state.table, churn=False)
    drivers = elements(report, "clusters.html", "data-driver")
    for cluster in range(model.k_):
        own = [d for d in drivers if d["data-model"] == f"segments-clusters#{cluster}"]
        assert len(own) == 3, cluster
        check_drivers(own, raw_contributions("segments-clusters", model, sample, cluster), sample)


def test_a_persona_for_every_served_cluster(report):
    model = report["state"].scorer.bundle.models["segments-clusters"]
    profiles = report["runs"]["segments-clusters"]["profiles"].set_index("cluster_id")
    html = report["paths"]["clusters.html"].read_text()
    personas = DataElements(html).having("data-cluster")
    assert [int(p["data-cluster"]) for p in personas] == list(range(model.k_))
    for persona in personas:
        cluster = int(persona["data-cluster"])
        assert persona["data-cluster-name"] == model.names_[cluster]
        assert "Compared with all customers" in persona["text"]
    sizes = [e for e in DataElements(html).having("data-metric") if e["data-metric"] in ("size", "share")]
    by_cluster = [sizes[i:i + 2] for i in range(0, len(sizes), 2)]
    for cluster, (size, share) in enumerate(by_cluster):
        assert int(size["data-value"]) == profiles.loc[cluster, "size"]
        assert float(share["data-value"]) == pytest.approx(profiles.loc[cluster, "share"])


def test_lookalike_page_contrasts_the_closest_customers_with_everyone(report):
    contrast = elements(report, "model-lookalike-best_members.html", "data-section")
    text = next(e["text"] for e in contrast if e["data-section"] == "contrast")
    assert text.startswith("The 10% of customers most like best members:")
    assert text.count("(all customers") == 3


# ---------------------------------------------------------------------------------------------------------------
# In a real browser


SECTIONS = {"clusters.html": ("quality", "overview", "personas"),
            "model-lookalike-best_members.html": ("quality", "drivers", "lift", "reach"),
            "model-uplift.html": ("quality", "drivers", "qini")}


def test_pages_open_in_chromium_without_errors(report):
    from browser import browser, open_page

    with browser() as instance:
        for file_name, path in sorted(report["paths"].items()):
            opened = open_page(instance, path.as_uri(), f"report-{path.stem}")
            page = opened.page
            assert opened.problems == [], (file_name, opened.problems)
            for section in SECTIONS.get(file_name, ("quality", "drivers", "calibration", "lift")):
                assert page.locator(f"[data-section={section}]").count() >= 1, (file_name, section)
            charts = page.locator("svg.chart")
            assert charts.count() >= 4, file_name
            labels = charts.evaluate_all("(nodes) => nodes.map((n) => n.getAttribute('aria-label'))")
            assert all(labels), file_name
            # self-contained: nothing is fetched (no src attributes, no stylesheets, no absolute links to resources)
            assert page.locator("[src], link[rel=stylesheet], script").count() == 0, file_name
            assert page.locator("h1").inner_text().strip()
            page.close()


def test_pages_carry_model_versions_from_the_manifest(report):
    manifest = json.loads((report["served"]["serve_dir"] / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        facts = {e["data-metric"]: e["text"] for e in elements(report, page_of(name), "data-metric")}
        assert facts["version"] == entry["version"]
        for other, other_entry in manifest["models"].items():  # the footer: every model, look-alikes by seed
            assert f"{other} v{other_entry['version']}" in facts["models"], (name, other)
        assert "lookalike (best_members): segments-lookalike-best_members" in facts["models"]


def test_churn_and_value_pages_say_the_served_version_is_a_refit(report):
    for name, run in report["runs"].items():
        refit = [e for e in elements(report, page_of(name), "data-section") if e["data-section"] == "refit"]
        if name in ("segments-churn", "segments-value"):
            served = json.loads(run["params"]["data.training_as_of"])[-1][:10]
            backtest = json.loads(run["params"]["data.backtest_training_as_of"])[-1][:10]
            assert len(refit) == 1 and served in refit[0]["text"] and backtest in refit[0]["text"], name
        else:
            assert not refit, name


def test_the_churn_page_says_which_candidate_is_served_and_why(report):
    """The model or a textbook baseline: the page names the one served, its margin and interval, from the run."""
    run = report["runs"]["segments-churn"]
    served = [e for e in elements(report, page_of("segments-churn"), "data-section") if e["data-section"] == "served"]
    reason = run["tags"]["served_reason"]
    assert len(served) == 1 and served[0]["text"] == reason
    assert reason.startswith("Served: ") and "best of 3 candidates" in reason and "95% interval" in reason
    assert run["tags"]["served_candidate"] in ("lightgbm", "pnbd", "bgnbd")

"""The marketer reports end to end: small served models, a store refreshed at two dates, every page written and
opened in a real headless Chromium (no console errors, nothing fetched, a screenshot in test-artifacts/), key
sections present, and the numbers on the pages equal to the store, the feature table and serving.segments.lift."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from browser import ARTIFACTS, browser, open_page
from serving_setup import build_served, environment, use_bentoml_home

from features.catalog import FEATURES_BY_NAME
from features.pipeline import build_feature_table
from features.segments import in_holdout, load_segments
from serving.segments.lift import measure

FIRST, LAST = datetime(2026, 6, 1), datetime(2026, 7, 1)
# The shipped definitions plus one segment no served model can give (no look-alike of loyalty members is trained).
EXTRA = """
  loyalty_lookalike:
    kind: lookalike
    description: The 10% of customers most like the loyalty members
    seed: loyalty_members
    reach: 10
"""
LIFECYCLE = ["lifecycle_new", "lifecycle_active", "lifecycle_reactivated", "lifecycle_lapsing", "lifecycle_lapsed"]
SEGMENTS = Path(sys.executable).with_name("segments")


@pytest.fixture(scope="module")
def built(tmp_path_factory, generated_validation, small_models):
    """Served models, a store refreshed as of FIRST and LAST (with the served models) and the reports written."""
    from serving.reports.site import write_reports
    from serving.segments.refresh import refresh
    from serving.segments.store import SegmentStore
    from serving.state import load_state

    root = tmp_path_factory.mktemp("reports")
    served = build_served(root, generated_validation, small_models)
    use_bentoml_home(Path(served["env"]["BENTOML_HOME"]))
    state = load_state(served["serve_dir"])
    assert state.ready, state.problems
    definitions_file = root / "segments.yaml"
    from features.segments import default_segments_path

    definitions_file.write_text(default_segments_path().read_text() + EXTRA)
    definitions = load_segments(definitions_file)
    store = SegmentStore(served["env"]["SEGMENTS_DB_URL"])
    for as_of in (FIRST, LAST):
        refresh(store, definitions, build_feature_table(generated_validation, as_of).table, state.scorer.bundle,
                as_of)
    from serving.segments.campaigns import create_campaign

    create_campaign(store, definitions, "spring-email", "loyal", FIRST, LAST, "email", "conversion_rate")
    with environment(MLFLOW_TRACKING_URI=served["env"]["MLFLOW_TRACKING_URI"]):
        # as `segments report` runs it: its own state, without the feature table (profiles and samples read the file)
        written = write_reports(root / "out", served["serve_dir"], store, definitions_file)
    yield {"root": root, "served": served, "state": state, "store": store, "written": written,
           "definitions": definitions, "out": root / "out"}
    store.close()


@pytest.fixture(scope="module")
def chromium():
    with browser() as instance:
        yield instance


@pytest.fixture(scope="module")
def pages(built, chromium):
    """Every written page opened in Chromium once: file name -> OpenedPage (screenshots land in test-artifacts/)."""
    return {path.name: open_page(chromium, path.as_uri(), f"report-{path.stem}") for path in built["written"]}


def values(opened, selector: str, attribute: str | None = None) -> list[str]:
    """Text (or an attribute) of every element matching `selector`."""
    script = ("(els, attr) => els.map(e => attr ? e.getAttribute(attr) : e.textContent.trim())")
    return opened.page.eval_on_selector_all(selector, script, attribute)


def one(opened, selector: str, attribute: str | None = None) -> str:
    found = values(opened, selector, attribute)
    assert len(found) == 1, (selector, found)
    return found[0]


# ---------------------------------------------------------------------------------------------------------------
# Every page


def test_every_page_opens_offline_without_errors(built, pages):
    names = {path.name for path in built["written"]}
    segment_pages = {f"segment-{s}.html" for s in [*built["definitions"].names(), "cluster_0"] if s != "cluster"}
    assert {"index.html", *segment_pages} <= names
    assert any(name.startswith("model-") for name in names) and "clusters.html" in names  # the model pages too
    for name, opened in pages.items():
        assert opened.problems == [], (name, opened.problems)
        html = (built["out"] / name).read_text()
        # Offline: nothing to fetch. No script, stylesheet, image or font from a URL (SVG namespaces are names,
        # url(#id) points inside the page).
        assert "<script" not in html and not re.search(r"url\((?!#)", html), name
        assert not re.search(r'<link[^>]*href="(?!data:)', html), name  # the favicon is an empty data: URL
        assert not re.search(r'(src|href)="(https?:)?//', html), name
        assert opened.page.title() and values(opened, "h1"), name
        footer = one(opened, "[data-metric=models]")
        for registered, entry in built["state"].manifest["models"].items():
            assert f"{registered} v{entry['version']}" in footer, (name, footer)
        assert "lookalike (best_members): segments-lookalike-best_members v" in footer, (name, footer)
        assert (ARTIFACTS / f"report-{Path(name).stem}.png").exists(), name


def test_navigation_links_every_page_by_relative_links(built, pages):
    written = {path.name for path in built["written"]}
    for name, opened in pages.items():
        links = set(values(opened, "nav.site a", "href"))
        assert links <= written, (name, links - written)
        assert "index.html" in links and {n for n in written if n.startswith("segment-")} <= links, name


# ---------------------------------------------------------------------------------------------------------------
# The overview


def test_overview_sizes_trend_and_not_evaluated_match_the_store(built, pages):
    store, index = built["store"], pages["index.html"]
    rows = values(index, "[data-section=segments] tr[data-segment]", "data-segment")
    assert "loyal" in rows and "cluster_0" in rows and "likely_to_churn" in rows
    sizes = dict(zip(rows, values(index, "[data-section=segments] [data-metric=size]", "data-value"), strict=True))
    at_first, at_last = (store.changes.membership_at(m).groupby("segment").size() for m in (FIRST, LAST))
    customers = int(one(index, "[data-metric=customers]").replace(",", ""))
    assert customers == len(built["state"].table)
    for name, shown in sizes.items():
        assert int(shown) == store.current.segment_size(name), name
        row = f"[data-section=segments] tr[data-segment={name}]"
        share = one(index, f"{row} [data-metric=share]")
        assert share == f"{store.current.segment_size(name) / customers * 100:.1f}%", name
        change = int(one(index, f"{row} [data-metric=change]", "data-value"))
        assert change == at_last.get(name, 0) - at_first.get(name, 0), name
    skipped = values(index, "[data-section=not-evaluated] tr[data-segment]", "data-segment")
    assert skipped == ["loyalty_lookalike"]
    assert "lookalike_loyalty_members_percentile" in one(index, "[data-section=not-evaluated] [data-metric=reason]")
    assert values(index, "[data-section=models] a", "href")  # links to the model pages


def test_overview_lift_equals_serving_lift_on_the_clean_tables(built, pages, generated_validation):
    """Lift between the two refreshes, recomputed here from the validated tables (the page reads the serve folder's
    copy of them), for every segment that has both targeted and held-out members."""
    store, index, definitions = built["store"], pages["index.html"], built["definitions"]
    checked = 0
    for name in ("loyal", "inactive", "lifecycle_active", "lifecycle_lapsed", "vip"):
        members = store.changes.membership_at(FIRST, [name])
        held = in_holdout(members["customer_id"], name, definitions[name].holdout_percent)
        assert 0 < held.sum() < len(members), name
        expected = next(c for c in measure(members, definitions[name], generated_validation, FIRST, LAST).comparisons
                        if c.metric == "conversion_rate")
        cell = f"[data-section=segments] tr[data-segment={name}] [data-metric=lift]"
        for attribute, value in (("data-value", expected.lift), ("data-ci-low", expected.ci_low),
                                 ("data-ci-high", expected.ci_high), ("data-p-value", expected.p_value),
                                 ("data-relative-ci-low", expected.relative_ci_low),
                                 ("data-relative-ci-high", expected.relative_ci_high)):
            assert math.isclose(float(one(index, cell, attribute)), value, rel_tol=1e-12), (name, attribute)
        # The interval printed is the relative lift's own (serving.segments.lift), not the difference's scaled by a rate.
        low, high = (f"{'−' if v < 0 else '+'}{abs(v) * 100:.0f}%" for v in (
            expected.relative_ci_low, expected.relative_ci_high))
        sign = "−" if expected.lift < 0 else "+"
        assert one(index, cell).startswith(f"{sign}{abs(expected.lift) * 100:.0f}% (95% CI {low} to {high})"), name
        checked += 1
    assert checked == 5
    # at_risk_vip is tiny: when no member fell in its holdout the page says so instead of a number
    members = store.changes.membership_at(FIRST, ["at_risk_vip"])
    if not in_holdout(members["customer_id"], "at_risk_vip", 10).any():
        text = one(index, "tr[data-segment=at_risk_vip] [data-metric=lift]")
        assert text.startswith("not measured: none of its") and "holdout" in text


# ---------------------------------------------------------------------------------------------------------------
# Segment pages


def test_a_campaign_reads_its_goal_and_timeline_as_measured_on_the_clean_tables(built, pages, generated_validation):
    """The campaign on `loyal` (issue 15): its goal metric on the page equals `measure_campaign` recomputed here on
    the validated tables (the page reads the serve folder's copy of them), with its chart over time."""
    from serving.reports.render import segment_file
    from serving.segments.campaigns import get_campaign, measure_campaign

    store = built["store"]
    measured = measure_campaign(store, built["definitions"], get_campaign(store, "spring-email"), generated_validation)
    expected = next(c for c in measured.result.comparisons if c.metric == "conversion_rate")
    page = pages[segment_file("loyal")]
    cell = "[data-campaign=spring-email] [data-metric=campaign-goal]"
    for attribute, value in (("data-value", expected.difference), ("data-ci-low", expected.ci_low),
                             ("data-ci-high", expected.ci_high), ("data-p-value", expected.p_value)):
        assert math.isclose(float(one(page, cell, attribute)), value, rel_tol=1e-12), attribute
    assert one(page, cell).startswith(f"targeted {expected.targeted:.1%}, holdout {expected.holdout:.1%}")
    assert "<svg" in page.page.inner_html("[data-campaign=spring-email] [data-section=campaign-chart]")
    assert len(measured.timeline) >= 2  # checkpoints from the start to the end
    assert one(pages[segment_file("vip")], "[data-section=campaigns]").startswith("No campaign on this segment")


def test_segment_pages_sizes_entries_exits_and_daily_rows_match_the_store(built, pages):
    store = built["store"]
    for name in ("loyal", "vip", "lifecycle_active", "likely_to_churn", "cluster_0", "best_members_lookalike"):
        page = pages[f"segment-{name}.html"]
        for section in ("definition", "facts", "size-chart", "profile", "changes-chart", "daily", "log"):
            assert values(page, f"[data-section={section}]"), (name, section)
        assert int(one(page, "[data-section=facts] [data-metric=size]", "data-value")) == store.current.segment_size(name)
        log = store.changes.log(segment=name)
        assert int(one(page, "[data-metric=entered-total]", "data-value")) == (log["change"] == "entered").sum()
        assert int(one(page, "[data-metric=exited-total]", "data-value")) == (log["change"] == "exited").sum()
        daily = store.changes.daily_changes(name, FIRST, LAST.replace(day=2))
        moving = daily[(daily["entered"] > 0) | (daily["exited"] > 0)]
        assert values(page, "[data-section=daily] tr[data-day]", "data-day") == [
            f"{d:%Y-%m-%d}" for d in moving["day"]]
        shown = [int(v.replace(",", "")) for v in values(page, "[data-section=daily] [data-metric=entered]")]
        assert shown == moving["entered"].tolist(), name
        shown = [int(v.replace(",", "")) for v in values(page, "[data-section=daily] [data-metric=size-at-day]")]
        assert shown == moving["size"].tolist(), name
        assert len(values(page, "[data-section=log] tbody tr")) == min(len(log), 25)


def test_segment_definitions_read_in_words(pages):
    loyal = values(pages["segment-loyal.html"], "[data-section=definition] li")
    assert loyal == ["Purchases in the last 14 days: at least 2", "Spend in the last 14 days: more than 100.00"]
    at_risk = pages["segment-at_risk_vip.html"]
    assert values(at_risk, "[data-section=definition] a", "href") == ["segment-vip.html"]
    assert "Churn risk band: is high" in values(at_risk, "[data-section=definition] li")
    lookalike = one(pages["segment-best_members_lookalike.html"], "[data-section=definition] li")
    assert lookalike.startswith("Among the 10% of customers")
    skipped = pages["segment-loyalty_lookalike.html"]
    assert "Not evaluated" in one(skipped, "[data-section=not-evaluated]")


def test_flows_say_where_members_came_from_and_went(built, pages):
    """Entrants and leavers between the refreshes recounted from the log, and for the lifecycle stages (disjoint)
    the same counts as store.flows."""
    store = built["store"]
    evaluated = values(pages["index.html"], "[data-section=segments] tr[data-segment]", "data-segment")
    before = store.changes.membership_at(FIRST, evaluated).groupby("customer_id")["segment"].agg(set)
    after = store.changes.membership_at(LAST, evaluated).groupby("customer_id")["segment"].agg(set)
    stage_flows = store.changes.flows(FIRST, LAST, LIFECYCLE)
    for name in LIFECYCLE:
        page = pages[f"segment-{name}.html"]
        entrants = [c for c, s in after.items() if name in s and name not in before.get(c, set())]
        leavers = [c for c, s in before.items() if name in s and name not in after.get(c, set())]
        assert int(one(page, "[data-metric=flow-entered]", "data-value")) == len(entrants)
        assert int(one(page, "[data-metric=flow-exited]", "data-value")) == len(leavers)
        came = dict(zip(values(page, "[data-section=came-from] tr[data-from]", "data-from"),
                        map(int, values(page, "[data-section=came-from] [data-metric=customers]", "data-value")),
                        strict=True))
        assert came.get("", 0) == sum(1 for c in entrants if not before.get(c, set()) - {name})
        expected = stage_flows[(stage_flows["to_segment"] == name) & stage_flows["from_segment"].notna()]
        assert {k: v for k, v in came.items() if k in LIFECYCLE} == dict(
            zip(expected["from_segment"], expected["customers"], strict=True)), name
        went = dict(zip(values(page, "[data-section=went-to] tr[data-to]", "data-to"),
                        map(int, values(page, "[data-section=went-to] [data-metric=customers]", "data-value")),
                        strict=True)) if leavers else {}
        expected = stage_flows[(stage_flows["from_segment"] == name) & stage_flows["to_segment"].notna()]
        assert {k: v for k, v in went.items() if k in LIFECYCLE} == dict(
            zip(expected["to_segment"], expected["customers"], strict=True)), name


def test_profile_differences_equal_the_feature_table(built, pages):
    """Standardised differences recomputed from the serve folder's feature table for the current members."""
    table, store = built["state"].table, built["store"]
    for name in ("vip", "inactive"):
        page = pages[f"segment-{name}.html"]
        features = values(page, "[data-section=profile] tr[data-feature]", "data-feature")
        assert len(features) >= 3
        members = table["customer_id"].isin(store.current.memberships().query("segment == @name")["customer_id"]).to_numpy()
        shown = [float(v) for v in values(page, "[data-section=profile] [data-metric=difference]", "data-value")]
        assert shown == sorted(shown, key=abs, reverse=True)
        for feature, difference in zip(features, shown, strict=True):
            if FEATURES_BY_NAME[feature].dtype not in ("int64", "float64"):
                continue
            column = table[feature].astype("float64")
            expected = (column[members].mean() - column.mean()) / column.std(ddof=0)
            assert math.isclose(difference, expected, rel_tol=1e-9), (name, feature)
    loyal = pages["segment-loyal.html"]
    marked = values(loyal, "[data-section=profile] tr[data-feature]:has(.tag)", "data-feature")
    assert marked and set(marked) <= {"orders_count_14d", "spend_sum_14d"}


def test_profile_averages_are_shown_unrounded_and_an_empty_segment_says_so(tmp_path):
    """344.38 is shown as 344.38 (not rounded to 344.4 first and printed as 344.40); a segment without members, or
    with too few of them in the feature table, says so instead of a profile."""
    from serving.reports.segment_pages import profiles

    table = pd.DataFrame({"customer_id": [f"c{i}" for i in range(10)], "aov_365d": [344.38] * 5 + [10.0] * 5,
                          "days_since_last_order": [12.47] * 5 + [30.0] * 5})
    table.to_parquet(tmp_path / "features.parquet")
    members = pd.DataFrame({"segment": ["high"] * 5 + ["few"] * 3,
                            "customer_id": [f"c{i}" for i in range(5)] + ["c1", "c2", "unknown"]})
    found = profiles(tmp_path / "features.parquet", members, segments=["high", "few", "empty"])
    rows = found["high"][0].set_index("feature")
    assert rows.loc["aov_365d", ["members_text", "everyone_text"]].tolist() == ["344.38", "177.19"]
    assert rows.loc["days_since_last_order", "members_text"] == "12.5 days"
    assert found["few"] == (None, ("2 of its 3 members are in the served feature table: too few to profile (at "
                                   "least 5 are needed)"))
    assert found["empty"] == (None, "the segment has no members")


def test_one_formatter_for_feature_values():
    """serving.explain.reasons.format_value writes every feature value on every page: units in words, money to the cent."""
    from serving.explain.reasons import format_value

    assert format_value("days_since_last_order", 1) == "1 day"
    assert format_value("days_since_last_order", 12.5) == "12.5 days"
    assert format_value("days_since_last_order", 12.47, digits=1) == "12.5 days"
    assert format_value("spend_sum_90d", 5.25, digits=1) == "5.25"
    assert format_value("spend_per_month_total", 49.9) == "49.90/month"
    assert format_value("returns_count_365d", 3.0) == "3"


def test_a_cause_reads_the_same_in_the_report_and_the_command():
    from serving.reports.segment_pages import cause_text

    assert cause_text([{"text": "Spend 90 -> 120"}, {"text": "joined"}]) == "Spend 90 -> 120; joined"
    assert cause_text({"text": "the segment is no longer in the definitions"}).startswith("the segment")
    assert cause_text([]) == "re-evaluated"


def test_the_footer_lists_the_manifest_models_with_look_alike_seeds():
    from serving.reports.render import ModelVersion, site_models

    manifest = {"models": {"segments-lookalike-best_members": {"version": 2}, "segments-churn": {"version": "3"}}}
    assert site_models(manifest) == (ModelVersion("churn", "segments-churn", "3"),
                                     ModelVersion("lookalike (best_members)", "segments-lookalike-best_members", "2"))


# ---------------------------------------------------------------------------------------------------------------
# The command


def segments(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEGMENTS), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False, env={"COLUMNS": "200", "PATH": str(SEGMENTS.parent), **env})


def test_report_command_without_a_refresh_models_or_serve_folder(built, chromium, tmp_path):
    """The command's errors and its empty cases: no serve folder stops it; an empty store and a model store that
    holds none of the served models still give every page, saying what is missing."""
    env = {**built["served"]["env"], "BENTOML_HOME": str(tmp_path / "no-models")}
    missing = segments("report", "--out", "out", "--serve-dir", "nowhere", cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "no serve folder" in missing.stderr and "segments build" in missing.stderr
    empty_db = f"sqlite:///{tmp_path / 'empty.db'}"
    result = segments("report", "--out", "out", "--serve-dir", str(built["served"]["serve_dir"]), "--db", empty_db,
                      cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "no refresh yet" in result.stdout and "no model pages" in result.stdout
    index_file = tmp_path / "out" / "index.html"
    assert result.stdout.strip().splitlines()[-1] == str(index_file.resolve())  # `make demo` ends with it
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("segment-")) == [
        "index.html"]
    opened = open_page(chromium, index_file.as_uri(), "report-index-no-refresh")
    assert opened.problems == []
    assert "No refresh yet: run segments refresh" in one(opened, "[data-section=no-refresh]")
    sizes = values(opened, "[data-section=segments] [data-metric=size]", "data-value")
    assert sizes and all(size == "" for size in sizes)  # evaluated rule segments, no member counts yet
    reasons = dict(zip(values(opened, "[data-section=not-evaluated] tr[data-segment]", "data-segment"),
                       values(opened, "[data-section=not-evaluated] [data-metric=reason]"), strict=True))
    assert "churn_band" in reasons["likely_to_churn"] and "no cluster model" in reasons["cluster"]
    segment_page = open_page(chromium, (tmp_path / "out" / "segment-loyal.html").as_uri(), "report-segment-no-refresh")
    assert segment_page.problems == [] and values(segment_page, "[data-section=no-refresh]")


def test_report_over_a_damaged_feature_table_writes_its_pages(built, tmp_path):
    """A truncated features.parquet is a problem the report states (no model pages, no profiles), not a crash."""
    import shutil

    serve_dir = tmp_path / "serve"
    shutil.copytree(built["served"]["serve_dir"], serve_dir)
    damaged = serve_dir / "features.parquet"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    result = segments("report", "--out", "out", "--serve-dir", str(serve_dir), cwd=tmp_path,
                      env=built["served"]["env"])
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert "no model pages" in said and "cannot be read (features.parquet," in said and "Parquet" in said
    assert (tmp_path / "out" / "index.html").exists() and (tmp_path / "out" / "segment-loyal.html").exists()

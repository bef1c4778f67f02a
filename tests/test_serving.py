"""Serving in process: exact explanations, reasons, input resolution, the ASGI app, and batch/service parity.

One ASGI app per process (a second one registers BentoML's Prometheus collectors twice; NOTES.md).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from serving_setup import AS_OF, build_served, environment, use_bentoml_home

from serving.explain.reasons import AttributeMap, attribute_of, format_value, typical_values
from training.encoding import SMALL_BATCH


@pytest.fixture(scope="module")
def served(tmp_path_factory, generated_validation, small_models):
    root = tmp_path_factory.mktemp("served")
    return build_served(root, generated_validation, small_models)


@pytest.fixture(scope="module")
def state(served):
    from serving.state import load_state

    use_bentoml_home(served["env"]["BENTOML_HOME"])
    loaded = load_state(served["serve_dir"])
    assert loaded.ready, loaded.problems
    return loaded


@pytest.fixture(scope="module")
def client(served, state):
    from starlette.testclient import TestClient

    with environment(**served["env"]):
        from serving.http.service import SegmentsService

        with TestClient(SegmentsService.to_asgi()) as test_client:
            yield test_client


@pytest.fixture(scope="module")
def sample(served):
    return served["features"].sample(300, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def refreshed(served, state, client):
    """The shipped segments refreshed at the serve folder's as_of into the store the service reads (a batch refresh
    as `segments refresh` runs it): its membership and thresholds are what the score responses are compared with."""
    from features.segments import load_segments
    from serving.segments.refresh import refresh
    from serving.segments.store import SegmentStore

    store = SegmentStore(served["env"]["SEGMENTS_DB_URL"])
    refresh(store, load_segments(), state.table.reset_index(drop=True), state.scorer.bundle, state.as_of)
    yield store
    store.close()


@pytest.fixture(scope="module")
def covering_ids(refreshed, state):
    """Up to 3 members of every segment of the refresh plus 20 customers at random: every kind of segment (rule,
    `in top N%`, predictive, look-alike, cluster) and customers in none."""
    members = refreshed.current.memberships()
    ids = list(members.groupby("segment")["customer_id"].apply(lambda c: sorted(c)[:3]).explode())
    ids += list(state.table.index.to_series().sample(20, random_state=1))
    return list(dict.fromkeys(ids))


def _rules(state, refresh: dict | None):
    from serving.segments.refresh import SegmentRules, served_segments

    usable, skipped = served_segments(None, state.table, state.scorer.bundle)
    return SegmentRules.of_refresh(usable, skipped, refresh)


def test_attribute_is_the_feature_without_its_window():
    assert {attribute_of(f"orders_count_{w}") for w in ("14d", "30d", "90d", "365d", "total")} == {"orders_count"}
    assert attribute_of("orders_count_prev_90d") == "orders_count_prev"  # a trend input, not a window of counts
    assert attribute_of("days_since_last_order") == "days_since_last_order"
    grouping = AttributeMap(["orders_count_14d", "orders_count_90d", "days_since_last_order"])
    summed = grouping.group(np.array([[0.1, 0.2, -0.5]]))
    assert grouping.attributes == ["orders_count", "days_since_last_order"]
    np.testing.assert_allclose(summed, [[0.3, -0.5]])
    # the attribute's input with the largest absolute contribution, per row and chosen attribute (first of equals)
    leading = grouping.leading_inputs(np.array([[0.1, 0.2, -0.5], [-0.3, 0.3, 0.0]]), np.array([[0, 1], [1, 0]]))
    assert leading.tolist() == [[1, 2], [2, 0]]


def test_values_in_words():
    assert format_value("days_since_last_order", 94.0) == "94 days"
    assert format_value("online_share_365d", 0.25) == "25%"
    assert format_value("spend_sum_90d", 1234.5) == "1,234.50"
    assert format_value("loyalty_member", True) == "yes"
    assert format_value("days_since_last_order", None) == "none"


def test_typical_values_are_medians_and_modes():
    frame = pd.DataFrame({"orders_count_90d": [1, 2, 10], "region": pd.Series(["n", "s", "s"], dtype="string"),
                          "loyalty_member": pd.Series([True, True, False], dtype="boolean")})
    assert typical_values(frame) == {"orders_count_90d": 2.0, "region": "s", "loyalty_member": True}


@pytest.mark.parametrize("name", ["segments-churn", "segments-value", "segments-lookalike-best_members",
                                  "segments-clusters"])
def test_contributions_plus_base_value_equal_the_margin(state, sample, name):
    explainer = state.scorer.explainers[name]
    contributions, base = explainer.contributions(sample)
    np.testing.assert_allclose(contributions.sum(axis=1) + base, explainer.margin(sample), rtol=0, atol=1e-6)
    # and they are the SHAP values of the `shap` library's TreeExplainer, whatever engine computed them
    import shap

    booster = explainer.declared.booster  # None when a textbook candidate is served: its term alone
    values, expected = np.zeros((len(sample), explainer.n_inputs)), np.zeros(1)
    if booster is not None:
        reference = shap.TreeExplainer(booster)
        values = np.asarray(reference.shap_values(explainer.matrix(sample)))
        expected = np.asarray(reference.expected_value)
    if explainer.kind == "clusters":  # values: (rows, inputs, classes); each row's own cluster is explained
        own = explainer.model.assign(sample)
        values, expected = values[np.arange(len(sample)), :, own], expected[own]
    expected = np.broadcast_to(expected, base.shape)
    if explainer.extra is not None:  # churn's textbook term: its exact Shapley values ride on the trees'
        extra = explainer.extra(explainer.matrix(sample))
        values, expected = values + extra[:, :-1], expected + extra[:, -1]
    np.testing.assert_allclose(contributions, values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(base, expected, rtol=0, atol=1e-6)
    if explainer.kind == "churn":  # and they add up to the margin the served probability is calibrated from
        np.testing.assert_allclose(explainer.margin(sample), explainer.model.margin(sample), rtol=0, atol=1e-9)


def test_score_columns_are_the_declared_outputs(state, sample):
    """features/outputs.py is the one declaration: every served model gives exactly its kind's columns, typed."""
    from features.outputs import columns_of, find_output
    from training.tracking import kind_of

    frame = state.scorer.bundle.score(sample)
    declared = [c for name in state.scorer.bundle.models for c in columns_of(*kind_of(name))]
    assert sorted(frame.columns.drop("customer_id")) == sorted(declared)
    for column in declared:
        dtype = find_output(column)[0].dtype
        if dtype == "string":
            assert pd.api.types.is_string_dtype(frame[column]), column
        else:
            assert str(frame[column].dtype) == dtype, column


def test_scores_in_chunks_equal_one_batch(state, sample):
    bundle = state.scorer.bundle
    pd.testing.assert_frame_equal(bundle.score_in_chunks(sample, rows=70), bundle.score(sample))


def test_one_encoding_per_request_is_each_models_own(state, sample):
    rows = sample.head(40).copy()
    rows.loc[3, "region"] = "a region never seen"  # unknown text -> NaN, like a missing one
    rows.loc[4, "region"] = pd.NA
    shared = state.scorer.encode(rows)
    # a batch above SMALL_BATCH converts its columns another way: the same floats
    large = state.scorer.encode(pd.concat([rows, sample], ignore_index=True))
    assert len(rows) <= SMALL_BATCH < len(rows) + len(sample)
    for name, explainer in state.scorer.explainers.items():
        alone = explainer.encoder.transform(rows)
        np.testing.assert_array_equal(shared[name], alone.to_numpy())
        np.testing.assert_array_equal(large[name][:len(rows)], shared[name])
        assert list(alone.columns) == explainer.encoder.feature_names_
    region = state.scorer.explainers["segments-churn"].encoder.feature_names_.index("region")
    assert np.isnan(shared["segments-churn"][[3, 4], region]).all()
    clusters = state.scorer.explainers["segments-clusters"].model
    np.testing.assert_array_equal(clusters.assign(rows, shared["segments-clusters"]), clusters.assign(rows))
    frame = state.scorer.bundle.score(rows)
    pd.testing.assert_frame_equal(state.scorer.bundle.score(rows, shared), frame)
    assert frame.index.equals(pd.RangeIndex(len(rows))) and frame["churn_band"].dtype == "category"


def test_reasons_are_sorted_signed_and_phrased(state, sample):
    reasons = state.scorer.explanations(sample.head(20), top_k=3)
    assert set(reasons[0]) == {"churn", "value", "lookalike_best_members", "cluster", "uplift"}
    for customer in reasons:
        churn = customer["churn"]
        assert len(churn) == 3
        sizes = [abs(r["contribution"]) for r in churn]
        assert sizes == sorted(sizes, reverse=True)
        for r in churn:
            assert r["direction"] == ("raises" if r["contribution"] > 0 else "lowers")
            assert np.sign(r["effect"]) == np.sign(r["contribution"]) or r["effect"] == 0
            assert r["sentence"].startswith(r["label"]) and "churn risk" in r["sentence"]
            assert r["typical"] == state.typical.get(r["feature"])


def test_one_customer_gets_the_same_result_alone_and_in_a_batch(state, sample, refreshed):
    rules = _rules(state, refreshed.current.last_refresh())
    batch = state.scorer.results(sample.head(100), explain=True, rules=rules)  # above SMALL_BATCH: other conversion
    assert any(item["segments"] for item in batch)
    for i in (0, 7, 99):
        alone = state.scorer.results(sample.iloc[[i]], explain=True, rules=rules)
        assert json.dumps(alone[0], sort_keys=True) == json.dumps(batch[i], sort_keys=True)
    # scores without reasons are the same items less the reasons
    assert [dict(item, reasons=None) for item in batch] == state.scorer.results(sample.head(100), rules=rules)


def test_score_by_id_with_an_unknown_id_in_the_batch(client, state):
    ids = list(state.table.index[:2])
    response = client.post("/score", json={"customers": [{"customer_id": ids[0]}, {"customer_id": "nobody"},
                                                         {"customer_id": ids[1]}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["versions"]["models"] == state.versions
    assert body["versions"]["feature_set_version"] == state.manifest["feature_set_version"]
    first, unknown, third = body["customers"]
    assert unknown["error"]["code"] == "unknown_customer" and unknown["churn"] is None
    assert first["customer_id"] == ids[0] and 0 < first["churn"]["probability"] < 1 and first["error"] is None
    assert third["customer_id"] == ids[1] and set(first["lookalike"]) == {"best_members"}
    assert unknown["segments"] == [] and set(body["segment_evaluation"]) == {"definitions_hash", "thresholds_as_of",
                                                                             "not_evaluated"}


def test_score_segments_are_the_store_membership_after_a_refresh(client, state, refreshed, covering_ids):
    response = client.post("/score", json={"customers": [{"customer_id": c} for c in covering_ids]})
    assert response.status_code == 200, response.text
    body = response.json()
    evaluation = body["segment_evaluation"]
    assert evaluation["thresholds_as_of"] == state.as_of.isoformat()
    assert evaluation["not_evaluated"] == {}  # the served models give every output the shipped file reads
    by_id = {item["customer_id"]: item["segments"] for item in body["customers"]}
    assert by_id == {c: refreshed.current.segments_of(c) for c in covering_ids}
    # one vocabulary: the store's names, of every kind (the score's own outputs are not turned into other names)
    seen = {name for names in by_id.values() for name in names}
    assert {"vip", "likely_to_churn", "best_members_lookalike", "lifecycle_active"} <= seen
    assert any(name.startswith("cluster_") for name in seen) and not any(n.startswith("churn_risk") for n in seen)
    info = client.get("/v1/info").json()["segments"]
    assert [s["name"] for s in info["evaluated"]] == _rules(state, refreshed.current.last_refresh()).evaluated.names()
    assert {s["name"] for s in info["evaluated"]} >= seen and info["thresholds_as_of"] == state.as_of.isoformat()
    vip = next(s for s in info["evaluated"] if s["name"] == "vip")
    assert vip["kind"] == "rule" and "Top 20%" in vip["description"]


def _boundary_customers(generated) -> list[str]:
    """The customers with the purchases closest to the 14-day window's start (as_of - 14 days), one each side."""
    orders = generated[0].transactions
    orders = orders[(orders["amount"] > 0) & ~orders["is_return"].astype(bool)]
    start = pd.Timestamp(AS_OF) - pd.Timedelta(days=14)
    inside = orders[orders["timestamp"] >= start].sort_values("timestamp").iloc[0]
    outside = orders[orders["timestamp"] < start].sort_values("timestamp").iloc[-1]
    assert (inside["timestamp"] - outside["timestamp"]) < pd.Timedelta(hours=2)
    return [str(inside["customer_id"]), str(outside["customer_id"])]


def test_segments_at_the_14_day_boundary_by_history_equal_the_store(client, state, refreshed, generated,
                                                                     generated_validation):
    """The one-customer feature SQL (a history input) puts a purchase minutes from the window's start on the same
    side as the batch features the refresh evaluated: same segments as the store."""
    inside, outside = _boundary_customers(generated)
    customers = []
    for cid in (inside, outside):
        customers += [{"customer_id": cid}, {"customer_id": cid, "history": _history(generated_validation, cid)}]
    response = client.post("/score", json={"customers": customers, "as_of": AS_OF.isoformat()})
    assert response.status_code == 200, response.text
    items = response.json()["customers"]
    for item in items:
        assert item["segments"] == refreshed.current.segments_of(item["customer_id"]), item["customer_id"]
    counts = state.table.loc[[inside, outside], "orders_count_14d"]
    assert counts[inside] >= 1  # the purchase just after the window's start is counted


def test_before_a_refresh_top_percent_segments_are_not_evaluated_not_false(state, sample, refreshed):
    """Without a refresh's thresholds, `vip` (`in top 20%`) and `at_risk_vip` (refers to vip) are left out with the
    reason; every other segment is evaluated as with them. With thresholds from other definitions: the same."""
    last = refreshed.current.last_refresh()
    with_thresholds = _rules(state, last)
    before = _rules(state, None)
    assert set(before.not_evaluated) == {"vip", "at_risk_vip"}
    assert "segments refresh" in before.not_evaluated["vip"] and "vip" in before.not_evaluated["at_risk_vip"]
    assert before.thresholds_as_of is None and "vip" not in before.evaluated.names()
    other = _rules(state, {**last, "thresholds": {}})
    assert set(other.not_evaluated) == {"vip", "at_risk_vip"} and "other definitions" in other.not_evaluated["vip"]
    rows = sample.head(200)
    full = state.scorer.results(rows, rules=with_thresholds)
    assert any("vip" in item["segments"] for item in full)
    for item, known in zip(state.scorer.results(rows, rules=before), full, strict=True):
        assert item["segments"] == [s for s in known["segments"] if s not in ("vip", "at_risk_vip")]


def test_history_and_feature_row_inputs_give_the_id_result(client, state, generated_validation):
    con = generated_validation.con
    cid = con.execute("SELECT customer_id FROM transactions GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
    history = _history(generated_validation, cid)
    row = state.table.loc[cid]
    features = {name: _plain(row[name]) for name in state.feature_names}
    body = {"customers": [{"customer_id": cid}, {"customer_id": cid, "history": history},
                          {"customer_id": cid, "features": features}], "explain": True}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    by_id, by_history, by_row = response.json()["customers"]
    # The one-customer query sums in another order than the batch query: feature values agree to ~1e-15
    assert _rounded(by_history) == _rounded(by_id)
    assert by_row == by_id


def _history(validation, cid: str) -> dict:
    """The customer's raw records as a score request's `history`."""
    con = validation.con
    txns = con.execute("SELECT * EXCLUDE (customer_id) FROM transactions WHERE customer_id = ?", [cid]).df()
    events = con.execute("SELECT * EXCLUDE (customer_id) FROM events WHERE customer_id = ?", [cid]).df()
    profile = con.execute("SELECT * EXCLUDE (customer_id, tags) FROM customers WHERE customer_id = ?", [cid]).df()
    return {"profile": _records(profile)[0], "transactions": _records(txns), "events": _records(events)}


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_bad_inputs_are_field_level_4xx_without_traces(client, state):
    cid = state.table.index[0]
    cases = [
        ({"customers": [{"customer_id": cid, "extra": 1}]}, 400, ["customers", 0, "extra"]),
        ({"customers": [{"customer_id": cid}], "bogus": True}, 400, ["bogus"]),
        ({"customers": [{"customer_id": 5}]}, 400, ["customers", 0, "customer_id"]),
        ({}, 400, ["customers"]),
        ({"customers": [{"customer_id": "x", "history": {"transactions": [
            {"transaction_id": "t", "timestamp": "2026-01-01", "amount": "12"}]}}]}, 400, None),
        ({"customers": [{"customer_id": "x", "features": {"orders_count_14d": 1}}]}, 422, None),
        ({"customers": [{"customer_id": cid}], "as_of": "2026-01-01"}, 422, ["as_of"]),
    ]
    for body, status, loc in cases:
        response = client.post("/score", json=body)
        assert response.status_code == status, (body, response.text)
        assert "Traceback" not in response.text
        if loc is not None:
            assert loc in [d["loc"][:len(loc)] for d in response.json()["detail"]], response.text
    not_finite = client.post("/score", content=b'{"customers": [{"customer_id": "x", "history": {"transactions": '
                                                b'[{"transaction_id": "t", "timestamp": "2026-01-01", '
                                                b'"amount": NaN}]}}]}', headers={"content-type": "application/json"})
    assert not_finite.status_code == 400 and "finite" in not_finite.text


def test_status_endpoints(client, state, served, monkeypatch):
    assert client.get("/v1/health").json() == {"status": "ok"}
    monkeypatch.setenv("SEGMENTS_MAX_MODEL_AGE_DAYS", "100000")
    assert client.get("/v1/ready").json() == {"ready": True, "warnings": []}
    monkeypatch.setenv("SEGMENTS_MAX_MODEL_AGE_DAYS", "1")  # trained as of 2026-07-01: stale a day later
    ready = client.get("/v1/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True  # stale is a warning, not an outage
    assert sorted(w.split(" is stale")[0] for w in ready.json()["warnings"]) == sorted(
        f"{name} v{version}" for name, version in state.versions.items())
    info = client.get("/v1/info").json()
    assert info["warnings"] == ready.json()["warnings"]
    for entry in info["models"].values():
        assert entry["health"]["stale"] is True and entry["health"]["trained_as_of"] == AS_OF.isoformat()
        assert entry["health"]["monitoring"] is None  # no segments monitor has run
    assert info["explanation_engines"]["churn"] == "pred_contrib"
    assert "predictive_segments" not in info and {"evaluated", "not_evaluated"} <= set(info["segments"])
    assert all(set(s) == {"name", "kind", "description"} for s in info["segments"]["evaluated"])
    assert {name: m["version"] for name, m in info["models"].items()} == state.versions
    _assert_quality_is_the_logged_runs(info["models"], served["env"]["MLFLOW_TRACKING_URI"])
    # /metrics needs the Prometheus set-up of a real server: tests/test_serving_http.py


def _assert_quality_is_the_logged_runs(models: dict, tracking_uri: str) -> None:
    """/v1/info grades each model as `segments train` and the reports do: from its run's metrics and baselines."""
    from mlflow import MlflowClient

    from training.grading import GRADES, grade_model, split_logged_metrics
    from training.tracking import kind_of

    mlflow_client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    for name, entry in models.items():
        run = mlflow_client.get_run(mlflow_client.get_model_version(name, entry["version"]).run_id)
        expected = grade_model(kind_of(name)[0], *split_logged_metrics(run.data.metrics))
        quality = entry["quality"]
        assert quality["grade"] == expected.grade and quality["sentence"] == expected.sentence, name
        assert GRADES.index(quality["grade"]) <= GRADES.index(quality["absolute"])
    churn = models["segments-churn"]["quality"]
    assert churn["metric"] == "roc_auc" and churn["best_baseline"] in {"recency-only", "BG/NBD", "Pareto/NBD"}
    assert churn["ci"][0] <= churn["margin"] <= churn["ci"][1]


def test_the_event_process_state_reads_one_row_and_resolves_the_same_segments(served, state):
    """The event process loads the serve folder with one feature row (it never looks ids up): the same first row,
    dtypes and segment resolution as the worker's whole table."""
    from serving.segments.refresh import served_segments
    from serving.state import load_state

    light = load_state(served["serve_dir"], rows=1)
    assert light.ready, light.problems
    assert len(state.table) > 1 and light.table.equals(state.table.head(1))
    usable, skipped = served_segments(None, light.table, light.scorer.bundle)
    expected_usable, expected_skipped = served_segments(None, state.table, state.scorer.bundle)
    assert usable.names() == expected_usable.names() and skipped == expected_skipped


def test_readiness_reports_a_missing_model(served, tmp_path):
    import shutil

    from serving.state import load_state

    broken = tmp_path / "serve"
    shutil.copytree(served["serve_dir"], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["models"]["segments-churn"]["bento_tag"] = "segments-churn:doesnotexist"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    state = load_state(broken)
    assert not state.ready and "segments-churn" in state.problems[0]


@pytest.mark.parametrize(("name", "damage"), [("features.parquet", b"PAR1 not really parquet"),
                                              ("typical.json", b'{"orders_count_90d": '),
                                              ("manifest.json", b"{not json")])
def test_readiness_names_the_damaged_file(served, tmp_path, name, damage):
    """A serve folder file that cannot be read is a problem naming that file and the reader's reason, not a
    crash and not only the folder."""
    import shutil

    from serving.state import load_state

    broken = tmp_path / "serve"
    shutil.copytree(served["serve_dir"], broken)
    (broken / name).write_bytes(damage)
    state = load_state(broken, rows=1)
    assert not state.ready and state.scorer is None
    assert len(state.problems) == 1 and f"cannot be read ({name}, " in state.problems[0], state.problems
    assert ("ArrowInvalid" if name.endswith(".parquet") else "JSONDecodeError") in state.problems[0]


def test_readiness_reports_a_missing_history_file(served, tmp_path):
    """A serve folder without the history the event path reads (e.g. built by an older version) is not ready, and
    says which file is missing and what to do."""
    import shutil

    from serving.state import load_state

    broken = tmp_path / "serve"
    shutil.copytree(served["serve_dir"], broken)
    (broken / "history.sqlite").unlink()
    state = load_state(broken)
    assert not state.ready
    assert any("history.sqlite" in problem and "segments build" in problem for problem in state.problems)


def test_readiness_reports_a_history_file_replaced_while_serving(client, served):
    """A `segments build` into the served folder while the service runs: readiness says to restart (the models and
    table in memory are the old build's), and is ready again once the file it loaded is back."""
    import os
    import shutil

    history = served["serve_dir"] / "history.sqlite"
    aside = history.with_name("history.sqlite.aside")
    os.rename(history, aside)  # keeps the file's inode and modification time, to put it back as it was
    try:
        shutil.copy(aside, history)
        ready = client.get("/v1/ready")
        assert ready.status_code == 503 and "restart the service" in ready.text, ready.text
    finally:
        os.replace(aside, history)
    assert client.get("/v1/ready").status_code == 200


def _same(a, b, rel: float = 1e-9) -> bool:
    """Equal, floats to `rel`: the batch builds its feature table again and DuckDB's parallel sums may round a
    feature's last bit differently from the serve folder's table (measured: 324.29078103448273 vs ...827)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-12)
    return a == b


def test_batch_scoring_and_the_service_agree(client, served, state, generated, refreshed, covering_ids, tmp_path):
    """`segments score --serve-dir` and POST /score give the same scores, reasons and segments. The batch takes the
    thresholds of the store's last refresh (SEGMENTS_DB_URL, as the service); without a store it fits them on the
    scored population, which at the refresh's as_of is the refresh's population: the same segments again."""
    from typer.testing import CliRunner

    from serving.cli import app

    def batch(out, explain: bool, **env) -> pd.DataFrame:
        args = ["score", "--data", str(generated[1]), "--as-of", AS_OF.date().isoformat(), "--out", str(out),
                "--serve-dir", str(served["serve_dir"])] + (["--explain"] if explain else [])
        with environment(**{**served["env"], **env}):
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return result.output, pd.read_parquet(out).set_index("customer_id")

    output, scored = batch(tmp_path / "scores.parquet", True)
    assert f"thresholds: the refresh as of {AS_OF.isoformat()}" in " ".join(output.split())
    response = client.post("/score", json={"customers": [{"customer_id": i} for i in covering_ids],
                                           "explain": True})
    assert response.status_code == 200, response.text
    for item in response.json()["customers"]:
        row = scored.loc[item["customer_id"]]
        assert _same(item["churn"], {"probability": row["churn_probability"], "band": row["churn_band"]})
        assert _same(item["value"]["expected_spend"], row["expected_spend"])
        assert item["lookalike"]["best_members"]["percentile"] == row["lookalike_best_members_percentile"]
        assert item["cluster"]["id"] == row["cluster_id"]
        assert item["segments"] == list(row["segments"])
        assert _same(item["reasons"], json.loads(row["reasons"])), (item["reasons"], row["reasons"])
    output, fitted = batch(tmp_path / "fitted.parquet", False, SEGMENTS_DB_URL="")
    assert f"fitted on the {len(fitted):,} scored customers" in " ".join(output.split())
    assert fitted["segments"].map(list).equals(scored["segments"].map(list))
    assert fitted["segments"].map(len).sum() > 0


def test_batch_scoring_in_batches_writes_what_one_batch_writes(served, generated, refreshed, tmp_path):
    """`segments score --serve-dir` builds and scores the feature table a batch at a time: batches of a third of the
    customers write the same file (scores, segments, reasons) and log the same predictions as one batch, both with the
    store's thresholds and with thresholds fitted on the whole population."""
    from serving.cli.serve_commands import score_served

    third = len(served["features"]) // 3 + 1
    for db in (served["env"]["SEGMENTS_DB_URL"], None):
        files = []
        for rows in (third, 10 * len(served["features"])):
            out, logged = tmp_path / f"{rows}-{bool(db)}.parquet", tmp_path / f"predictions-{rows}-{bool(db)}"
            with environment(**served["env"]):
                score_served(generated[1], AS_OF, out, served["serve_dir"], True, 0.05, db=db, predictions=logged,
                             batch_rows=rows)
            files.append((pd.read_parquet(out), {p.name: pd.read_parquet(p).drop(columns="written_at")
                                                 for p in logged.glob("*.parquet")}))
        (batched, batched_log), (whole, whole_log) = files
        assert len(whole) == len(served["features"]) and whole["segments"].map(len).sum() > 0
        # Each run builds the features again: floats to _same's tolerance (DuckDB's parallel sums), the rest exact.
        pd.testing.assert_frame_equal(batched.drop(columns="reasons"), whole.drop(columns="reasons"),
                                      check_exact=False, rtol=1e-9)
        assert all(_same(json.loads(a), json.loads(b)) for a, b in zip(batched["reasons"], whole["reasons"],
                                                                       strict=True))
        assert sorted(batched_log) == sorted(whole_log) and len(whole_log) >= 4
        for name, frame in whole_log.items():
            pd.testing.assert_frame_equal(batched_log[name], frame, check_exact=False, rtol=1e-9)


def test_batch_scoring_of_no_customers_writes_an_empty_file(served, generated, tmp_path):
    """Before anyone's first record nobody is known: `score --serve-dir --explain` writes an empty file with the
    columns, as `segments score` does (it failed in LightGBM's contributions of no rows, and on the empty
    `segments` column)."""
    from datetime import datetime

    from serving.cli.serve_commands import score_served

    out = tmp_path / "nobody.parquet"
    with environment(**served["env"]):
        score_served(generated[1], datetime(1990, 1, 1), out, served["serve_dir"], True, 0.05, db=None)
    frame = pd.read_parquet(out)
    assert frame.empty and {"customer_id", "churn_probability", "segments", "reasons"} <= set(frame.columns)


def _records(frame: pd.DataFrame) -> list[dict]:
    out = []
    for record in frame.to_dict(orient="records"):
        out.append({k: _plain(v) for k, v in record.items() if _plain(v) is not None})
    return out


def _plain(value):
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def test_a_refresh_evaluated_in_batches_equals_the_whole_population(served, state, generated_validation):
    """`segments refresh` scores and evaluates the feature table one batch at a time, keeping only what a refresh
    reads: the same customers, fields, scores, thresholds and skipped segments as the population evaluated whole."""
    from features.pipeline import build_feature_table, feature_batches
    from features.segments import load_segments
    from serving.segments.refresh import evaluate, evaluate_batches, evaluate_population

    bundle = state.scorer.bundle
    whole = evaluate_population(load_segments(), build_feature_table(generated_validation, AS_OF).table, bundle)
    batched, head = evaluate_batches(load_segments(), feature_batches(generated_validation, AS_OF, rows=97), bundle)
    scores = [c for c in bundle.score(head).columns if c != "customer_id"]
    batched_values, whole_values = batched.read(), whole.read()
    assert set(scores) <= set(batched_values.columns) and len(batched_values.columns) < len(whole_values.columns)
    pd.testing.assert_frame_equal(batched_values, whole_values[batched_values.columns])
    assert batched.thresholds == whole.thresholds and batched.thresholds
    assert batched.usable.names() == whole.usable.names() and batched.skipped == whole.skipped
    # What a refresh compares with the store, a chunk of customers at a time: the membership of the whole.
    chunked = pd.concat([membership for _, membership in batched.chunks(rows=50)])
    assert len(chunked) == batched.rows == len(whole_values) > 50
    pd.testing.assert_frame_equal(chunked, evaluate(whole.usable, whole_values, whole.thresholds))


def test_build_streams_the_feature_table_and_typical_values(served, generated_validation):
    """`segments build` writes the serve folder's feature table batch by batch and reads its typical values back a
    column at a time: the same table and values as computed from the whole table in memory."""
    from features.pipeline import build_feature_table, read_feature_table
    from serving.state import FEATURES_FILE, TYPICAL_FILE

    whole = build_feature_table(generated_validation, AS_OF).table
    written, meta = read_feature_table(served["serve_dir"] / FEATURES_FILE)
    pd.testing.assert_frame_equal(written, whole, check_exact=True)  # sums are exact: two builds agree to the bit
    assert meta["as_of"] == AS_OF.isoformat()
    assert json.loads((served["serve_dir"] / TYPICAL_FILE).read_text()) == json.loads(
        json.dumps(typical_values(whole)))

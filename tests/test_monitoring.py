"""Model monitoring: PSI on planted drift, the prediction log and its retention, realised performance through the
`segments` CLI against labels computed independently, planted decay, and stale models in /v1/info and /v1/ready.

A small programme of its own (1,500 customers, 24 months to 2026-07-01): churn and value models trained as of
2026-04-01 (90-day horizon, evaluated out of time on 2026-01-01) into a temp MLflow, scored as of 2026-04-01, and
monitored as of 2026-06-30 (the horizon has passed) and 2026-05-01 (it has not).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr
from serving_setup import environment
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from training.labels import make_snapshot
from training.monitoring import PSI_DRIFTING, PSI_MODERATE, psi, reference_profile
from training.tracking import health_history

TRAINED_AS_OF = datetime(2026, 4, 1)
HORIZON = 90
MONITOR_AS_OF = TRAINED_AS_OF + timedelta(days=HORIZON)  # 2026-06-30: the scores' outcome window has ended
SMALL = {"churn": {"n_estimators": 40}, "value": {"n_estimators": 15, "num_leaves": 7}}
OUTAGE = (datetime(2026, 2, 1), datetime(2026, 4, 1))  # planted drift: after the evaluation as_of (2026-01-01)
RECENCY_AND_FREQUENCY = {"days_since_last_order", "orders_count_30d", "orders_count_90d", "spend_sum_30d",
                         "spend_sum_90d", "orders_count_14d", "spend_sum_14d", "overdue_ratio", "orders_trend_90d",
                         "spend_trend_90d", "spend_share_90d_of_365d"}


def segments(*args: str, **env: str):
    """`segments ...` in process (as the user runs it), with the module's MLflow and any extra environment."""
    from serving.cli import app

    with environment(**env):
        return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def programme(tmp_path_factory):
    from features.pipeline import load_validated
    from features.synthetic.generator import generate_tables, write_tables

    data = generate_tables(1500, 24, seed=3, end="2026-07-01")
    folder = tmp_path_factory.mktemp("monitoring_data")
    write_tables(data, folder)
    return SimpleNamespace(data=data, folder=folder, validation=load_validated(folder))


@pytest.fixture(scope="module")
def trained(programme, tmp_path_factory):
    """Churn and value trained as of 2026-04-01 and registered (version 1, champion) in a temp MLflow."""
    from mlflow import MlflowClient

    from training import train as training
    from training.tracking import log_training_run

    root = tmp_path_factory.mktemp("monitoring_mlflow")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for name in ("segments-churn", "segments-value", "segments-monitoring"):  # artifacts in the temp folder too
        client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())
    with environment(**env):
        shared = training.TrainingData(programme.validation, TRAINED_AS_OF, str(programme.folder))
        records = {"churn": training.train_churn(shared, SMALL["churn"], HORIZON),
                   "value": training.train_value(shared, SMALL["value"], HORIZON)}
        logged = {kind: log_training_run(record) for kind, record in records.items()}
    return SimpleNamespace(root=root, env=env, records=records, logged=logged)


@pytest.fixture(scope="module")
def scored(trained, programme, tmp_path_factory):
    """`segments score` as of 2026-04-01: the scores file and the prediction log it kept."""
    folder = tmp_path_factory.mktemp("monitoring_scores")
    result = segments("score", "--data", programme.folder, "--as-of", "2026-04-01", "--out", folder / "scores.parquet",
                      "--predictions", folder / "log", **trained.env)
    assert result.exit_code == 0, result.output
    return SimpleNamespace(scores=pd.read_parquet(folder / "scores.parquet"), scores_path=folder / "scores.parquet",
                           log=folder / "log")


def monitor_json(data, log, as_of=MONITOR_AS_OF, *extra, env) -> dict:
    result = segments("monitor", "--data", data, "--as-of", f"{as_of:%Y-%m-%d}", "--predictions", log, "--json",
                      *extra, **env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    return {**body, "by_name": {r["name"]: r for r in body["results"]}}


@pytest.fixture(scope="module")
def monitored(trained, programme, scored):
    return monitor_json(programme.folder, scored.log, env=trained.env)


# ---------------------------------------------------------------------------------------------------------------
# PSI


@pytest.fixture(scope="module")
def reference_features(programme):
    return make_snapshot(programme.validation, datetime(2026, 1, 1), HORIZON, with_outcomes=False).features


def test_psi_of_a_frame_against_its_own_profile_is_zero_and_stable(reference_features):
    profile = json.loads(json.dumps(reference_profile(reference_features)))  # JSON-ready, as logged to MLflow
    assert set(profile["columns"]) == set(reference_features.columns) - {"customer_id"}
    for entry in profile["columns"].values():  # every row in exactly one bin, the missing share included
        assert sum(entry["shares"]) + entry.get("other", 0.0) + entry["missing"] == pytest.approx(1.0)
    table = psi(profile, reference_features)
    assert table["psi"].abs().max() < 1e-9
    assert set(table["status"]) == {"stable"}


def test_planted_feature_drift_is_flagged_on_exactly_those_features(reference_features):
    profile = reference_profile(reference_features)
    before = reference_features.copy()
    drifted = reference_features.copy()
    drifted["spend_sum_365d"] = drifted["spend_sum_365d"] * 3  # prices tripled
    drifted["days_since_last_order"] = drifted["days_since_last_order"] + 60  # everyone two months more lapsed
    drifted["region"] = pd.array(["north"] * len(drifted), dtype="string")  # a category takes everyone
    drifted.loc[drifted.index[::2], "aov_365d"] = np.nan  # half the values lost upstream
    table = psi(profile, drifted).set_index("feature")
    planted = ["spend_sum_365d", "days_since_last_order", "region", "aov_365d"]
    assert set(table.index[table["status"] == "drifting"]) == set(planted)
    assert (table.loc[planted, "psi"] > PSI_DRIFTING).all()
    assert table.drop(index=planted)["psi"].abs().max() < 1e-9  # untouched columns did not move
    pd.testing.assert_frame_equal(reference_features, before)  # inputs are never changed
    absent = psi(profile, drifted.drop(columns="gender")).set_index("feature")
    assert absent.loc["gender", "status"] == "absent"


# ---------------------------------------------------------------------------------------------------------------
# The prediction log and its retention


class _FixedChurn:
    """A stand-in churn model: a fixed probability per row, 90-day horizon."""

    config = SimpleNamespace(horizon_days=90)

    def predict_columns(self, features, encoded=None):
        return {"churn_probability": np.linspace(0, 1, len(features)), "churn_band": ["low"] * len(features)}


def test_prediction_log_keeps_model_versions_and_retention_prunes_old_files(tmp_path):
    from serving.predictions import log_predictions, prediction_index, prune_predictions, read_predictions
    from training.bundle import ScoringBundle

    bundle = ScoringBundle({"segments-churn": _FixedChurn()}, {"segments-churn": "7"})
    features = pd.DataFrame({"customer_id": ["C1", "C2", "C3"]})
    scores = bundle.score(features).assign(segments=[[], [], []])  # extra columns are not logged
    for as_of in (datetime(2025, 1, 1), datetime(2025, 12, 31), datetime(2026, 3, 1)):
        log_predictions(tmp_path, scores, bundle, features, as_of)
    log_predictions(tmp_path, scores, bundle, features, datetime(2026, 3, 1))  # the same as_of again replaces
    index = prediction_index(tmp_path)
    assert len(index) == 3 and set(index["version"]) == {"7"} and set(index["horizon_days"]) == {90}
    rows = read_predictions(index["path"].iloc[-1])
    assert list(rows.columns) == ["customer_id", "churn_probability", "churn_band", "model_name", "version", "kind",
                                  "as_of", "horizon_days", "written_at"]
    assert rows["churn_probability"].tolist() == [0.0, 0.5, 1.0] and set(rows["model_name"]) == {"segments-churn"}
    pruned = prune_predictions(tmp_path, datetime(2026, 3, 1) - timedelta(days=400))  # the default retention
    assert [p.name for p in pruned] == ["segments-churn__v7__2025-01-01T000000.parquet"]
    assert list(prediction_index(tmp_path)["as_of"]) == [pd.Timestamp("2025-12-31"), pd.Timestamp("2026-03-01")]


def test_prediction_log_from_a_scores_file_equals_the_log_from_the_frame(tmp_path):
    """A batch score logs from its output file, read a batch at a time (the population's scores are never held):
    the same rows as logging the frame, extra columns of the file left out."""
    from features.pipeline import write_frame_batches
    from serving.predictions import log_predictions, read_predictions
    from training.bundle import ScoringBundle

    bundle = ScoringBundle({"segments-churn": _FixedChurn()}, {"segments-churn": "7"})
    features = pd.DataFrame({"customer_id": [f"C{i}" for i in range(5)]})
    scores = bundle.score(features).assign(reasons=["{}"] * 5)
    file, rows = write_frame_batches([scores.iloc[:2], scores.iloc[2:]], tmp_path / "scores.parquet")
    assert rows == 5 and pq.ParquetFile(file).num_row_groups == 2
    written_at = datetime(2026, 3, 2, 8, 30, 15, 123456)
    [from_file] = log_predictions(tmp_path / "from_file", file, bundle, features, datetime(2026, 3, 1), written_at)
    [from_frame] = log_predictions(tmp_path / "from_frame", scores, bundle, features, datetime(2026, 3, 1), written_at)
    pd.testing.assert_frame_equal(read_predictions(from_file), read_predictions(from_frame))
    assert read_predictions(from_file)["customer_id"].tolist() == [f"C{i}" for i in range(5)]
    assert pq.read_schema(from_file).metadata == pq.read_schema(from_frame).metadata


# ---------------------------------------------------------------------------------------------------------------
# Realised performance, decay, drift, through the CLI


def test_score_logs_each_model_with_its_version_and_leaves_the_scores_unchanged(scored, trained):
    from serving.predictions import prediction_index

    index = prediction_index(scored.log)
    assert set(zip(index["model_name"], index["version"], strict=True)) == {("segments-churn", "1"),
                                                                             ("segments-value", "1")}
    assert set(index["as_of"]) == {pd.Timestamp(TRAINED_AS_OF)} and set(index["horizon_days"]) == {HORIZON}
    assert list(scored.scores.columns) == ["customer_id", "churn_probability", "churn_band", "expected_purchases",
                                           "expected_spend"]  # the scores file is what it always was
    churn = pd.read_parquet(index.loc[index["model_name"] == "segments-churn", "path"].iloc[0])
    assert churn["churn_probability"].tolist() == scored.scores["churn_probability"].tolist()


def test_a_score_that_fails_midway_leaves_the_earlier_scores_and_log_as_they_were(scored, trained, programme,
                                                                                     tmp_path, monkeypatch):
    """Scores are written a batch at a time: a run that fails after its first batch (a model raising, injected) must
    leave the scores file of the earlier run and its prediction log byte for byte, and nothing half-written beside."""
    from training.bundle import ScoringBundle

    out, log = tmp_path / "scores.parquet", tmp_path / "log"
    shutil.copy(scored.scores_path, out)
    shutil.copytree(scored.log, log)
    before = {path.name: path.read_bytes() for path in [out, *log.iterdir()]}
    calls = []

    def second_batch_fails(self, features):
        calls.append(len(features))
        if len(calls) == 2:
            raise RuntimeError("the model failed on the second batch")
        return original(self, features)

    original = ScoringBundle.score_in_chunks
    monkeypatch.setattr(ScoringBundle, "score_in_chunks", second_batch_fails)
    from features import pipeline

    batches = pipeline.feature_batches  # several batches out of the generated programme: 100 customers each
    monkeypatch.setattr(pipeline, "feature_batches", lambda validation, as_of: batches(validation, as_of, 100))
    result = segments("score", "--data", programme.folder, "--as-of", "2026-04-01", "--out", out, "--predictions", log,
                      **trained.env)
    assert result.exit_code != 0 and len(calls) == 2
    assert {path.name: path.read_bytes() for path in [out, *log.iterdir()]} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "scores.parquet"]  # no temporary file left


def test_refresh_logs_the_same_predictions_as_score(trained, programme, scored, tmp_path):
    from serving.predictions import prediction_index

    log = tmp_path / "log"
    result = segments("refresh", "--data", programme.folder, "--as-of", "2026-04-01", "--db",
                      f"sqlite:///{tmp_path / 'segments.db'}", "--predictions", log, **trained.env)
    assert result.exit_code == 0, result.output
    for path in prediction_index(log)["path"]:
        logged = pd.read_parquet(path)
        name = logged["model_name"].iloc[0]
        expected = pd.read_parquet(next(scored.log.glob(f"{name}__*.parquet")))
        pd.testing.assert_frame_equal(logged.drop(columns="written_at"), expected.drop(columns="written_at"))


def test_realised_performance_equals_metrics_from_the_training_labels(monitored, scored, programme, trained):
    """The monitor's realised ROC-AUC and Spearman are those of the logged scores against make_snapshot outcomes;
    the stable models are not flagged."""
    churn, value = monitored["by_name"]["segments-churn"], monitored["by_name"]["segments-value"]
    outcomes = make_snapshot(programme.validation, TRAINED_AS_OF, HORIZON).outcomes
    joined = scored.scores.merge(outcomes, on="customer_id", validate="one_to_one")
    eligible = joined[joined["eligible"]]
    assert churn["realised_as_of"] == TRAINED_AS_OF.isoformat() and churn["realised_customers"] == len(eligible)
    assert churn["realised"]["roc_auc"] == pytest.approx(
        roc_auc_score(eligible["churned"].astype(int), eligible["churn_probability"]), abs=1e-12)
    assert value["realised"]["spearman_spend"] == pytest.approx(
        spearmanr(joined["spend_next"], joined["expected_spend"]).statistic, abs=1e-12)
    assert value["realised"]["mae_spend"] == pytest.approx((joined["spend_next"] - joined["expected_spend"]).abs().mean())
    assert churn["training_metric"] == pytest.approx(trained.records["churn"].evaluation.metrics["roc_auc"])
    for result in (churn, value):
        assert result["status"] == "ok", result["reasons"]
        assert result["score_drift"]["drifting"] == 0
        assert result["trained_as_of"] == TRAINED_AS_OF.isoformat() and result["age_days"] == HORIZON


def test_monitor_results_go_to_mlflow_and_beside_the_log(monitored, scored, trained):
    from mlflow import MlflowClient

    client = MlflowClient(trained.env["MLFLOW_TRACKING_URI"], registry_uri=trained.env["MLFLOW_TRACKING_URI"])
    churn = monitored["by_name"]["segments-churn"]
    run = client.get_run(churn["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "segments-monitoring"
    assert run.data.tags["registered_model"] == "segments-churn" and run.data.tags["model_version"] == "1"
    assert run.data.metrics["realised.roc_auc"] == pytest.approx(churn["realised"]["roc_auc"])
    assert "monitoring/feature_psi.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "monitoring")}
    tags = client.get_model_version("segments-churn", "1").tags  # the latest health (another test may be later)
    assert tags["monitoring.as_of"] == MONITOR_AS_OF.isoformat()
    assert client.get_run(tags["monitoring.run_id"]).data.tags["status"] == tags["monitoring.status"]
    history = health_history(client, "segments-churn")
    assert history.loc[history["run_id"] == churn["run_id"], "realised.roc_auc"].item() == pytest.approx(
        churn["realised"]["roc_auc"])
    status = json.loads((scored.log / "monitoring.json").read_text())
    assert status["models"]["segments-churn"]["1"]["status"] == "ok"


def test_the_model_report_shows_health_over_time(monitored, trained):
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from serving.reports.model_pages import health_section

    client = MlflowClient(trained.env["MLFLOW_TRACKING_URI"], registry_uri=trained.env["MLFLOW_TRACKING_URI"])
    churn = monitored["by_name"]["segments-churn"]
    training_auc = client.get_run(client.get_model_version("segments-churn", "1").run_id).data.metrics["roc_auc"]
    health = health_section(client, SimpleNamespace(name="segments-churn", kind="churn",
                                                    metrics={"roc_auc": training_auc}))
    row = next(r for r in health["rows"] if r["monitor_as_of"] == MONITOR_AS_OF.date().isoformat())
    assert row["version"] == "1" and row["status"] == churn["status"]
    assert row["realised"] == pytest.approx(churn["realised"]["roc_auc"])
    assert health["chart"].startswith("<svg") and "version 1" in health["chart"]
    assert f"{training_auc:.2f}" in health["chart"]  # the training figure is drawn as the reference line
    nothing = health_section(client, SimpleNamespace(name="segments-lookalike-nobody", kind="lookalike", metrics={}))
    assert nothing["rows"] == [] and nothing["chart"] == ""  # never monitored: the page says so instead


def test_shuffled_scores_are_decaying_and_old_files_are_pruned(trained, programme, scored, tmp_path):
    """Planted decay: the logged churn probabilities shuffled across customers keep their distribution (no score
    drift) but lose their ranking; the value model, untouched, stays ok. A file older than the retention is pruned
    before anything is judged."""
    from serving.predictions import log_predictions, prediction_index
    from training.bundle import ScoringBundle

    log = tmp_path / "log"
    shutil.copytree(scored.log, log)
    (log / "monitoring.json").unlink(missing_ok=True)  # written by an earlier test of the module, if it ran
    path = prediction_index(log).query("model_name == 'segments-churn'")["path"].item()
    table = pq.read_table(path)
    column = table.schema.get_field_index("churn_probability")
    shuffled = np.random.default_rng(0).permutation(table["churn_probability"].to_numpy())
    pq.write_table(table.set_column(column, "churn_probability", pa.array(shuffled)), path)  # metadata kept
    bundle = ScoringBundle({"segments-old": _FixedChurn()}, {"segments-old": "1"})
    old = pd.DataFrame({"customer_id": ["C000001"]})
    log_predictions(log, bundle.score(old), bundle, old, MONITOR_AS_OF - timedelta(days=401))

    result = monitor_json(programme.folder, log, MONITOR_AS_OF, "--retention-days", "400", env=trained.env)
    assert [p.rsplit("/", 1)[-1] for p in result["pruned"]] == ["segments-old__v1__2025-05-25T000000.parquet"]
    churn = result["by_name"]["segments-churn"]
    assert churn["status"] == "decaying", churn["reasons"]
    assert churn["realised"]["roc_auc"] < churn["training_metric"] - 0.05
    assert churn["reasons"][0].startswith("decaying: realised roc_auc")
    assert churn["score_drift"]["drifting"] == 0  # the same scores, only in the wrong customers
    assert result["by_name"]["segments-value"]["status"] == "ok"
    assert set(result["by_name"]) == {"segments-churn", "segments-value"}


def test_planted_drift_after_training_is_caught_in_scores_and_features(trained, programme, tmp_path):
    """Planted drift: the till feed stops for the two months before the scores (no purchase recorded from
    2026-02-01 to 2026-04-01, after the evaluation as_of the reference describes). Scored and monitored on that
    data, both models' outputs drift, and the recency and frequency features are named."""
    drifted = tmp_path / "data"
    shutil.copytree(programme.folder, drifted)
    transactions = pd.read_parquet(drifted / "transactions.parquet")
    outage = transactions["timestamp"].between(OUTAGE[0], OUTAGE[1], inclusive="left")
    transactions[~outage].to_parquet(drifted / "transactions.parquet", index=False)
    log = tmp_path / "log"
    result = segments("score", "--data", drifted, "--as-of", "2026-04-01", "--out", tmp_path / "scores.parquet",
                      "--predictions", log, **trained.env)
    assert result.exit_code == 0, result.output

    monitored = monitor_json(drifted, log, env=trained.env)
    churn, value = monitored["by_name"]["segments-churn"], monitored["by_name"]["segments-value"]
    assert "drifting" in churn["flags"], json.dumps(churn, indent=1)
    assert churn["score_drift"]["top"][0]["feature"] == "churn_probability"
    assert churn["score_drift"]["max_psi"] > PSI_DRIFTING
    assert value["score_drift"]["max_psi"] > PSI_MODERATE and value["status"] != "ok", json.dumps(value, indent=1)
    for judged in (churn, value):  # the customers scored as lapsed did buy: both also decay (the outage is over)
        assert judged["status"] == "decaying"
        assert judged["feature_drift"]["drifting"] >= 3
        assert {t["feature"] for t in judged["feature_drift"]["top"]} <= RECENCY_AND_FREQUENCY, judged["feature_drift"]


def test_before_the_horizon_has_passed_the_monitor_waits(trained, programme, scored, monitored, tmp_path):
    """Monitored as of 2026-05-01, the scores of 2026-04-01 wait for their outcomes (drift is judged meanwhile); a
    monitor at an earlier date than the last one does not replace the health it recorded."""
    from mlflow import MlflowClient
    from rich.console import Console

    from serving.cli.model_commands import monitor_table

    log = tmp_path / "log"
    shutil.copytree(scored.log, log)  # with the monitoring.json of the 2026-06-30 monitor
    result = monitor_json(programme.folder, log, datetime(2026, 5, 1), env=trained.env)
    churn = result["by_name"]["segments-churn"]
    assert churn["realised"] is None and churn["waiting_until"] == MONITOR_AS_OF.isoformat()
    assert churn["status"] == "ok" and churn["score_drift"] is not None
    status = json.loads((log / "monitoring.json").read_text())
    assert status["models"]["segments-churn"]["1"]["monitor_as_of"] == MONITOR_AS_OF.isoformat()
    client = MlflowClient(trained.env["MLFLOW_TRACKING_URI"], registry_uri=trained.env["MLFLOW_TRACKING_URI"])
    assert client.get_model_version("segments-churn", "1").tags["monitoring.as_of"] == MONITOR_AS_OF.isoformat()
    assert client.get_run(churn["run_id"]).data.tags["monitor_as_of"] == "2026-05-01T00:00:00"  # its run is kept
    console = Console(width=250, record=True)
    console.print(monitor_table(result["results"], datetime(2026, 5, 1)))
    assert "waiting until 2026-06-30" in console.export_text()


def test_bad_input_is_a_clear_error_without_traceback(trained, programme, tmp_path):
    missing = segments("monitor", "--data", programme.folder, "--as-of", "2026-06-30", "--predictions",
                       tmp_path / "nowhere", **trained.env)
    assert missing.exit_code == 2 and "no prediction log folder" in missing.output
    (tmp_path / "empty").mkdir()
    empty = segments("monitor", "--data", programme.folder, "--as-of", "2026-06-30", "--predictions",
                     tmp_path / "empty", **trained.env)
    assert empty.exit_code == 2 and "no predictions as of 2026-06-30" in empty.output
    bad_date = segments("monitor", "--data", programme.folder, "--as-of", "June", "--predictions", tmp_path / "empty")
    assert bad_date.exit_code == 2 and "is not a date" in bad_date.output
    for result in (missing, empty, bad_date):
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


# ---------------------------------------------------------------------------------------------------------------
# The service: stale and drifting models are warnings in /v1/info and /v1/ready


def _service(tmp_path, models: dict):
    """The service's route methods on a hand-made ready state (no model store needed for the status routes)."""
    from serving.http.service import SegmentsService
    from serving.segments.store import SegmentStore
    from serving.state import ServingState

    service = object.__new__(SegmentsService.inner)
    service.state = ServingState(tmp_path, manifest={"as_of": "2026-07-01T00:00:00", "models": models},
                                 scorer=SimpleNamespace(explainers={}))
    # a real (empty) store that answers readiness, and an event path with no segments
    rules = SimpleNamespace(evaluated=type("Evaluated", (list,), {"definitions_hash": "none"})(),
                            thresholds_as_of=None, not_evaluated={})
    service.max_batch, service.store = 10, SegmentStore(f"sqlite:///{tmp_path / 'segments.db'}")
    service.events = SimpleNamespace(segment_rules=lambda: rules, history_problem=lambda: None)
    service.segments_problem, service._segments_tried = None, 0.0
    return service


def test_info_and_ready_say_when_a_served_model_is_stale_or_decaying(tmp_path, monkeypatch):
    models = {"segments-churn": {"version": "1", "bento_tag": "segments-churn:x", "trained_as_of": "2026-04-01T00:00:00"},
              "segments-value": {"version": "1", "bento_tag": "segments-value:y", "trained_as_of": "2026-04-01T00:00:00"}}
    log = tmp_path / "log"
    log.mkdir()
    monitoring = {"models": {"segments-churn": {"1": {"status": "decaying", "monitor_as_of": "2026-06-30T00:00:00",
                                                      "reasons": ["decaying: realised roc_auc 0.51 is below 0.90"]},
                                                "2": {"status": "ok"}}}}
    (log / "monitoring.json").write_text(json.dumps(monitoring))
    monkeypatch.setenv("SEGMENTS_PREDICTION_LOG", str(log))
    service = _service(tmp_path, models)

    monkeypatch.setenv("SEGMENTS_MAX_MODEL_AGE_DAYS", "1")  # anything trained before yesterday is stale
    info = service.info()
    health = info["models"]["segments-churn"]["health"]
    assert health["stale"] is True and health["trained_as_of"] == "2026-04-01T00:00:00" and health["age_days"] > 1
    assert health["monitoring"]["status"] == "decaying"
    ready = service.ready()
    assert ready["ready"] is True  # a plain dict: 200, stale is a warning, not an outage
    assert any("segments-churn v1 is stale" in w for w in ready["warnings"])
    assert any("segments-churn v1 is decaying" in w for w in ready["warnings"])
    assert ready["warnings"] == info["warnings"]

    monkeypatch.setenv("SEGMENTS_MAX_MODEL_AGE_DAYS", "100000")
    info = service.info()
    value = info["models"]["segments-value"]["health"]
    assert value["stale"] is False and value["max_age_days"] == 100000 and value["monitoring"] is None
    assert service.ready()["warnings"] == info["warnings"] == [w for w in info["warnings"] if "is decaying" in w]
    assert len(info["warnings"]) == 1  # only the decaying model is left to warn about

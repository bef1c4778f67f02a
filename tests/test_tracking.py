"""MLflow for real (SQLite store in a temp folder): runs, registry round trip, the promotion gate both ways."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from features.catalog import FEATURE_SET_VERSION, FEATURES_BY_NAME
from training import train as training
from training.bundle import ScoringBundle
from training.tracking import log_training_run, promote, registered_name

AS_OF = datetime(2026, 7, 1)
WEAK = {"num_leaves": 2, "n_estimators": 3, "min_data_in_leaf": 200}
PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return mlflow.MlflowClient(uri, registry_uri=uri)


@pytest.fixture(scope="module")
def shared(generated_validation, generated):
    return training.TrainingData(generated_validation, AS_OF, str(generated[1]))


def test_run_logs_config_data_window_metrics_plots_and_native_model(tracking, shared):
    record = training.train_churn(shared, WEAK, horizon_days=90)
    logged = log_training_run(record)
    run = tracking.get_run(logged.run_id)
    assert run.data.params["config.horizon_days"] == "90"
    assert run.data.params["data.evaluation_as_of"] == "2026-04-02 00:00:00"
    assert run.data.params["feature_set_version"] == FEATURE_SET_VERSION
    assert len(run.data.tags["git_commit"]) in (40, len("unknown"))
    assert {"roc_auc", "baseline.recency.roc_auc", "baseline.bgnbd.roc_auc"} <= set(run.data.metrics)
    assert run.data.metrics["roc_auc"] == pytest.approx(record.evaluation.metrics["roc_auc"])
    artifacts = {a.path for a in tracking.list_artifacts(logged.run_id, "plots")}
    assert {"plots/calibration.png", "plots/lift.png", "plots/shap_beeswarm.png", "plots/shap_dependence.png",
            "plots/shap_waterfall.png"} <= artifacts
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{logged.name}/{logged.version}"))
    files = {p.name for p in model_dir.rglob("*") if p.is_file()}
    assert not any(f.endswith((".pkl", ".pickle")) for f in files) and "python_model.pkl" not in files
    assert any(f.endswith(".txt") for f in files)  # the LightGBM text model
    assert logged.aliases == ("challenger", "champion")  # the first version is also the champion


def test_registry_round_trip_gives_identical_scores(tracking, shared):
    record = training.train_churn(shared, WEAK, horizon_days=90)
    log_training_run(record)
    bundle = ScoringBundle.from_registry()
    features = shared.current_features
    served = bundle.score(features)
    direct = record.model.predict(features).reset_index(drop=True)
    pd.testing.assert_series_equal(served["churn_probability"], direct["churn_probability"])
    assert bundle.versions == {registered_name("churn"): "1"}


def test_promotion_gate_both_ways(tracking, shared):
    name = registered_name("churn")
    log_training_run(training.train_churn(shared, WEAK, horizon_days=90))          # v1: champion by default
    log_training_run(training.train_churn(shared, {**WEAK, "n_estimators": 1}, 90))  # v2: weaker
    refused = promote(name, "churn")
    assert not refused.promoted and "does not beat" in refused.reason
    assert tracking.get_model_version_by_alias(name, "champion").version == 1

    log_training_run(training.train_churn(shared, {}, horizon_days=90))            # v3: the default, stronger
    accepted = promote(name, "churn")
    assert accepted.promoted, accepted.reason
    assert tracking.get_model_version_by_alias(name, "champion").version == 3


def test_promotion_refuses_runs_evaluated_on_different_data(tracking, shared, generated_validation, generated):
    name = registered_name("churn")
    log_training_run(training.train_churn(shared, WEAK, horizon_days=90))
    earlier = training.TrainingData(generated_validation, datetime(2026, 6, 1), str(generated[1]))
    log_training_run(training.train_churn(earlier, WEAK, horizon_days=90))  # refused for its data, whatever its score
    result = promote(name, "churn")
    assert not result.promoted and "not comparable" in result.reason


def test_mlproject_train_entry_point(tmp_path, generated):
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT")}  # set by set_experiment
    from serving_setup import tracking_in

    # `mlflow run` runs the entry point in the project folder: the experiments keep their artifacts in tmp_path
    env = {**inherited, "MLFLOW_TRACKING_URI": tracking_in(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "run", str(PROJECT), "-e", "train", "--env-manager", "local",
         "-P", "kind=clusters", "-P", f"data={generated[1]}", "-P", "as_of=2026-07-01"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    assert client.get_model_version_by_alias(registered_name("clusters"), "champion").version == 1


def segments_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed `segments` command, on the test's MLflow store (MLFLOW_TRACKING_URI set by `tracking`)."""
    return subprocess.run([str(Path(sys.executable).parent / "segments"), *args], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "COLUMNS": "200"})


# A weak look-alike sees only region and gender: a few shallow rounds on behaviour can already find every held-out
# best member in the top 10% (recall 1.0, as the default model), and then neither beats the other.
PROFILE_ONLY = tuple(name for name in FEATURES_BY_NAME if name not in ("region", "gender"))


@pytest.mark.parametrize(("kind", "seed", "weak", "strong"), [
    # value's default early-stops up to 1000 rounds at learning rate 0.05 for each of its two boosters: ~55 s here
    ("value", None, {"num_leaves": 2, "n_estimators": 2, "min_data_in_leaf": 400},
     {"learning_rate": 0.2, "n_estimators": 200}),
    ("lookalike", "best_members", {"num_boost_round": 2, "num_leaves": 2, "min_data_in_leaf": 400,
                                   "exclude_features": PROFILE_ONLY}, {}),
])
def test_segments_promote_both_ways_for_value_and_lookalike(tracking, shared, kind, seed, weak, strong):
    """v1 weak (champion as the first), v2 strong (the default, or value's in fewer rounds): promoted; v3 weak
    again: kept (exit 1), champion unchanged."""
    name = registered_name(kind, seed)
    seed_option = ["--seed-segment", seed] if seed else []
    for overrides in (weak, strong):
        log_training_run(training.train_kind(kind, shared, overrides, 90, seed))
    promoted = segments_cli("promote", kind, *seed_option)
    assert promoted.returncode == 0 and "promoted:" in promoted.stdout, promoted.stdout + promoted.stderr
    assert tracking.get_model_version_by_alias(name, "champion").version == 2
    log_training_run(training.train_kind(kind, shared, weak, 90, seed))
    kept = segments_cli("promote", kind, *seed_option)
    assert kept.returncode == 1 and "does not beat" in kept.stderr, kept.stdout + kept.stderr
    assert tracking.get_model_version_by_alias(name, "champion").version == 2


def test_segments_promote_clusters_and_score_from_the_registry(tracking, shared, generated):
    """Clusters through `segments promote` (the reported decision is what the registry holds), then `segments score`
    from the registry gives exactly the in-process bundle's scores of every champion."""
    name = registered_name("clusters")
    log_training_run(training.train_kind("clusters", shared, {}, 90))
    log_training_run(training.train_kind("clusters", shared, {"k_range": (3, 3)}, 90))
    result = segments_cli("promote", "clusters")
    assert result.returncode in (0, 1) and "stability_ari" in result.stdout + result.stderr
    expected = 2 if result.returncode == 0 else 1
    assert tracking.get_model_version_by_alias(name, "champion").version == expected

    log_training_run(training.train_kind("churn", shared, WEAK, 90))
    scored = segments_cli("score", "--data", str(generated[1]), "--as-of", "2026-07-01", "--out", "scores.parquet")
    assert scored.returncode == 0, scored.stdout + scored.stderr
    from_cli = pd.read_parquet("scores.parquet")
    in_process = ScoringBundle.from_registry().score(shared.current_features)
    assert {"churn_probability", "cluster_id", "cluster_name"} <= set(from_cli.columns)
    pd.testing.assert_frame_equal(from_cli, in_process, check_dtype=False, check_categorical=False)

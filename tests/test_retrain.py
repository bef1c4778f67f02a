"""`segments retrain` as a user runs it: the served champion is re-judged beside the challenger on the newest window,
and promoted over only on a significant win (MLflow for real, SQLite in a temp folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import mlflow
import pytest
from sklearn.metrics import roc_auc_score

from training.labels import make_snapshot
from training.tracking import registered_name

SEGMENTS = shutil.which("segments", path=str(Path(sys.executable).parent)) or "segments"
NAME = registered_name("churn")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # this process reads the registry the commands write
    mlflow.set_registry_uri(uri)
    # weak trees alone (the candidates and the textbook term would rescue them)
    (tmp_path / "weak.yaml").write_text("churn: {num_leaves: 2, n_estimators: 3, min_data_in_leaf: 400, "
                                        "candidate: lightgbm, textbook_weight: 0}\n")
    return tmp_path


def segments(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "220", "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    result = subprocess.run([SEGMENTS, *args], capture_output=True, text=True, cwd=workdir, env=env, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_retrain_rejudges_the_champion_and_promotes_only_a_significant_win(workdir, generated, generated_validation):
    data = str(generated[1])
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    segments(workdir, "train", "churn", "--data", data, "--as-of", "2026-04-01", "--config", "weak.yaml")

    first = segments(workdir, "retrain", "--data", data, "--as-of", "2026-07-01", "--kind", "churn")
    assert "Retrain: champion and challenger on the newest window" in first.stdout
    assert "v2 promoted" in first.stdout and "challenger beats the champion" in first.stdout
    assert client.get_model_version_by_alias(NAME, "champion").version == 2
    run = client.get_run(client.get_model_version(NAME, "2").run_id)
    assert run.data.tags["rejudge.champion_version"] == "1"
    assert run.data.metrics["rejudge.margin_ci_low"] > 0
    # the champion's figure is its real ROC-AUC on the window the challenger was evaluated on (as of 2026-04-02)
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}/1").unwrap_python_model().model
    x, y = make_snapshot(generated_validation, datetime(2026, 4, 2), 90).churn_frame()
    assert run.data.metrics["rejudge.champion_roc_auc"] == pytest.approx(roc_auc_score(y, champion.predict_proba(x)))

    again = segments(workdir, "retrain", "--data", data, "--as-of", "2026-07-01", "--kind", "churn")
    assert "v2 kept" in again.stdout
    assert client.get_model_version_by_alias(NAME, "champion").version == 2
    assert client.get_model_version_by_alias(NAME, "challenger").version == 3
    # v2 was refitted on labels up to 2026-07-01: it has seen the whole window it is judged on, and the result says so
    assert "optimistic" in again.stdout and "90 days of this window" in again.stdout


def test_retrain_refuses_kinds_it_cannot_judge(workdir, generated):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    result = subprocess.run([SEGMENTS, "retrain", "--data", str(generated[1]), "--as-of", "2026-07-01", "--kind",
                             "clusters"], capture_output=True, text=True, cwd=workdir, env=env, timeout=300, check=False)
    assert result.returncode == 2 and "retrain takes churn and value" in result.stderr
    assert not (workdir / "mlflow.db").exists()

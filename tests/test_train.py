"""Training runs on real data with a transactions-only contract (CDNOW)."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest

from features.pipeline import load_validated
from features.synthetic.cdnow import import_cdnow
from training import train as training


@pytest.fixture(scope="module")
def cdnow(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cdnow")
    import_cdnow(folder)
    return training.TrainingData(load_validated(folder), datetime(1998, 7, 1), str(folder))


def test_clusters_use_the_default_behaviours_the_data_has(cdnow):
    record = training.train_clusters(cdnow, {"bootstrap_rounds": 2, "k_range": (3, 5)})
    absent = record.data["features_not_in_data"]
    assert "app_open_count_90d" in absent and "online_share_365d" in absent  # no events, no channel column
    assert set(record.config.features).isdisjoint(absent) and len(record.config.features) >= 5
    scores = record.model.predict(cdnow.current_features)
    assert len(scores) == 23570 and scores["cluster_name"].notna().all()


def test_unknown_config_fields_are_clear_errors():
    with pytest.raises(ValueError, match="unknown ClusterConfig fields"):
        from training.estimators.clusters import ClusterConfig

        training.make_config(ClusterConfig, {"n_clusters": 4})


def test_a_programme_too_small_for_lightgbm_is_served_bgnbd_and_says_so(tmp_path):
    """Issue 11, item 7: below the churn model's minimum of churners the answer is not a refusal: BG/NBD is fitted
    (no labels needed), served with the same outputs, evaluated out of time with a bootstrap interval, and the run
    says it is the fallback (its tags, which `segments train`, the report and /v1/info show)."""
    from features.synthetic.generator import generate_tables, write_tables
    from serving.state import served_candidate

    write_tables(generate_tables(30, 24, seed=5, end=datetime(2026, 7, 1)), tmp_path)
    data = training.TrainingData(load_validated(tmp_path), datetime(2026, 7, 1), str(tmp_path))
    record = training.train_churn(data, {}, 90)
    assert record.model.candidate_ == "bgnbd" and record.model.booster_ is None
    reason = record.extra_tags["served_reason"]
    assert record.extra_tags["served_candidate"] == "bgnbd"
    assert reason.startswith("Served: BG/NBD (textbook), the fallback for a programme too small for LightGBM (only ")
    assert record.evaluation.notes[0] == reason
    metrics = record.evaluation.metrics
    assert metrics["roc_auc_ci_low"] <= metrics["roc_auc"] <= metrics["roc_auc_ci_high"]
    assert metrics["roc_auc_ci_high"] - metrics["roc_auc_ci_low"] > 0.05  # a few dozen customers: a wide interval
    scores = record.model.predict(data.current_features)
    assert scores["churn_probability"].between(0, 1).all() and scores["churn_band"].notna().all()

    run = SimpleNamespace(data=SimpleNamespace(tags=record.extra_tags))
    assert served_candidate(run) == {"served_candidate": "bgnbd", "served_reason": reason}  # what /v1/info shows


def test_model_fits_use_the_threads_the_environment_asks_for(monkeypatch):
    from training.estimators.churn import ChurnConfig
    from training.estimators.clusters import ClusterConfig
    from training.runtime import DEFAULT_THREADS, fit_threads

    monkeypatch.delenv("SEGMENTS_THREADS", raising=False)
    assert fit_threads() == DEFAULT_THREADS == ChurnConfig().num_threads == 2
    monkeypatch.setenv("SEGMENTS_THREADS", "3")
    assert ChurnConfig().num_threads == ClusterConfig().num_threads == 3
    assert ChurnConfig(num_threads=1).num_threads == 1  # a run's own setting still wins
    for wrong in ("0", "two", "-1", "1.5", "²"):
        monkeypatch.setenv("SEGMENTS_THREADS", wrong)
        with pytest.raises(ValueError, match=f"SEGMENTS_THREADS must be a whole number of threads.*{wrong!r}"):
            ChurnConfig()

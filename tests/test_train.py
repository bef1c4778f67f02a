"""Training runs on real data with a transactions-only contract (CDNOW)."""

from __future__ import annotations

from datetime import datetime

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

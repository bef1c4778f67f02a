"""The scoring bundle: the champion models, pinned by registry version, applied to a feature table.

Batch scoring (`segments score`) and the service use this one class, so their outputs cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.catalog import FEATURE_SET_VERSION
from training.tracking import CHAMPION, kind_of, load_model, registered_names


@dataclass
class ScoringBundle:
    """Fitted models by registered name, with the registry version each was loaded at."""

    models: dict[str, object] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_registry(cls, alias: str = CHAMPION) -> ScoringBundle:
        bundle = cls()
        for name in registered_names():
            try:
                bundle.models[name], bundle.versions[name] = load_model(name, alias)
            except LookupError:
                continue  # a name without this alias (e.g. only a challenger) is not served
        if not bundle.models:
            raise LookupError(f"no model has the alias '{alias}': train models first (segments train all ...)")
        for name, model in bundle.models.items():
            version = getattr(model, "feature_set_version_", FEATURE_SET_VERSION)
            if version != FEATURE_SET_VERSION:
                raise ValueError(f"{name} v{bundle.versions[name]} was trained on feature set {version}, this code "
                                 f"builds {FEATURE_SET_VERSION}: retrain it")
        return bundle

    def score(self, features: pd.DataFrame, encoded: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """Per customer: churn_probability, churn_band, expected_purchases, expected_spend,
        lookalike_<seed>_score / _percentile per seed, cluster_id, cluster_name (for the models present).

        `encoded`: model name -> the rows already through that model's `encoder_.matrix` (the service encodes
        once per model and request, for scores and reasons alike).
        """
        return pd.DataFrame(self.score_columns(features, encoded))

    def score_columns(self, features: pd.DataFrame, encoded: dict[str, np.ndarray] | None = None) -> dict:
        """`score`'s columns, name -> array, before they become a frame: a response of one customer reads them as
        they are (building the frame and reading it back cost ~0.7 ms, more than five of the six models)."""
        # Columns gathered as arrays (positional, whatever the index): a concat per model cost more than the models
        # for one customer.
        columns = {"customer_id": features["customer_id"].array}
        for name in scoring_order(self.models):
            for column, values in self.models[name].predict_columns(features, (encoded or {}).get(name)).items():
                columns[score_column(name, column)] = values
        return columns

    def score_in_chunks(self, features: pd.DataFrame, rows: int = 200_000) -> pd.DataFrame:
        """`score` on `rows` customers at a time, the same values (every model scores each row alone): a batch of a
        million customers never holds every model's encoded matrix at once (~0.6 GB per model)."""
        if len(features) <= rows:
            return self.score(features)
        return pd.concat([self.score(features.iloc[start:start + rows])
                          for start in range(0, len(features), rows)], ignore_index=True)


def scoring_order(names) -> list[str]:
    """The order models add their columns to a score table: per-seed (look-alike) models last, each by name."""
    return sorted(names, key=lambda n: (kind_of(n)[1] is not None, n))


def score_column(name: str, column: str) -> str:
    """The score table's name of a column `predict` of model `name` returns (a look-alike's gets its seed)."""
    seed = kind_of(name)[1]
    return column.replace("lookalike_", f"lookalike_{seed}_", 1) if seed is not None else column

"""From a feature table to a numeric model matrix, with the vocabulary fitted once and shipped with the model.

Every model (churn, value, look-alike, cluster surrogate) takes the same matrix: numeric features as float64,
booleans as 0/1, and each text feature (favourite category, channel, tier, region, ...) as the integer code of its
value in a vocabulary learned at fit time (unknown or missing values are NaN). The vocabulary is JSON, so a scored
customer's matrix never depends on who else is in the batch.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from features.catalog import FEATURES_BY_NAME

MAX_CATEGORIES = 50  # the rarest values beyond this fold into "unknown": keeps trees and explanations readable


class FeatureEncoder(TransformerMixin, BaseEstimator):
    """Feature table -> float matrix (a DataFrame with the catalog's feature names as columns).

    Attributes (after fit):
        feature_names_: model input columns, in order.
        categories_: text feature -> its values, in code order.
    """

    def __init__(self, max_categories: int = MAX_CATEGORIES):
        self.max_categories = max_categories

    def fit(self, features: pd.DataFrame, y=None) -> FeatureEncoder:
        self.feature_names_ = [c for c in features.columns if c in FEATURES_BY_NAME]
        self.categories_ = {}
        for name in self.feature_names_:
            if FEATURES_BY_NAME[name].dtype == "string":
                counts = features[name].dropna().astype(str).value_counts()
                top = counts.sort_index().sort_values(ascending=False, kind="stable").head(self.max_categories)
                self.categories_[name] = sorted(top.index)
        return self

    def transform(self, features: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_")
        missing = [c for c in self.feature_names_ if c not in features.columns]
        if missing:
            raise ValueError(f"feature table lacks columns the model was trained on: {', '.join(missing)}")
        # One conversion for all numeric columns: per-column conversion dominated single-customer scoring.
        numeric = [n for n in self.feature_names_ if n not in self.categories_]
        try:
            values = features[numeric].to_numpy(dtype="float64", na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"non-numeric values in numeric features: {exc}") from exc
        out = pd.DataFrame(values, index=features.index, columns=numeric)
        for name, vocabulary in self.categories_.items():
            codes = {value: float(i) for i, value in enumerate(vocabulary)}
            out[name] = features[name].astype("object").map(codes).astype("float64")
        return out[self.feature_names_]

    @property
    def categorical_features(self) -> list[str]:
        return [n for n in self.feature_names_ if n in self.categories_]

    def to_json(self) -> str:
        check_is_fitted(self, "feature_names_")
        return json.dumps({"max_categories": self.max_categories, "feature_names": self.feature_names_,
                           "categories": self.categories_}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeatureEncoder:
        state = json.loads(text)
        encoder = cls(max_categories=state["max_categories"])
        encoder.feature_names_ = state["feature_names"]
        encoder.categories_ = state["categories"]
        return encoder


def check_feature_set(features: pd.DataFrame, model_version: str) -> None:
    """A feature table of another feature-set version must not be scored (its columns may mean other things).

    Checked when the table carries its version (`to_feature_frame` sets `attrs["feature_set_version"]`).
    """
    version = features.attrs.get("feature_set_version")
    if version is not None and version != model_version:
        raise ValueError(f"feature table has feature set {version}, the model was trained on {model_version}: "
                         f"rebuild the features with the matching version of the code or retrain")

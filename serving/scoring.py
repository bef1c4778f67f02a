"""Scores, predictive segments and reasons for feature rows: the one code path of the service and batch scoring.

`Scorer.results(features, explain, top_k)` returns one JSON-ready dict per row (the `ScoredCustomer` shape); the
service returns them as they are and `segments score` writes the same values to Parquet, so the two cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from serving.explain import (
    DEFAULT_TOP_K,
    AttributeMap,
    Target,
    exp_effect,
    sigmoid_effect,
    softmax_own_effect,
    top_reasons,
)
from serving.treeshap import contribution_engine
from training.scoring import ScoringBundle, kind_of

# Predictive segments over model outputs, declared here until the segment rule language (DESIGN.md section 7) lands.
LOOKALIKE_TOP_PERCENTILE = 90.0
PREDICTIVE_SEGMENTS = {
    "churn_risk_<band>": "churn band low, medium or high (calibrated probability; thresholds from the churn config)",
    "lookalike_<seed>_top10": f"look-alike percentile >= {LOOKALIKE_TOP_PERCENTILE:g} for the seed segment",
    "cluster_<id>": "the behavioural cluster",
}


class ModelExplainer:
    """Exact TreeSHAP reasons of one model, built once per model (engine, attribute map, target words)."""

    def __init__(self, name: str, model):
        self.name, self.model = name, model
        kind, seed = kind_of(name)
        self.kind, self.seed = kind, seed
        self.encoder = model.encoder_
        if kind == "churn":
            booster, self.target = model.booster_, Target("churn", "churn risk", "log-odds", "probability")
        elif kind == "value":
            booster = model.boosters_["spend"]
            self.target = Target("value", "expected spend", "log of expected spend", "currency")
        elif kind == "lookalike":
            booster = model.booster_
            self.target = Target(f"lookalike_{seed}", f"likeness to {seed}", "log-odds", "probability")
        elif kind == "clusters":
            booster = model.booster_
            self.target = Target("cluster", "fit to own cluster", "log-odds (own class)", "probability")
        else:
            raise ValueError(f"{name}: no explanation for model kind {kind!r}")
        self.booster = booster
        self.engine = contribution_engine(booster)
        self.attribute_map = AttributeMap(self.encoder.feature_names_)
        self.n_inputs = len(self.encoder.feature_names_)

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        return self.encoder.transform(features).to_numpy(dtype=np.float64)

    def contributions(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(contributions rows x inputs, base value per row) of the explained score; they add up to its margin.

        For clusters the explained score is the surrogate's class score of each row's own (assigned) cluster.
        """
        values = self.engine(self.matrix(features))
        if self.kind == "clusters":
            own = self.model.assign(features)
            values = values.reshape(len(features), -1, self.n_inputs + 1)[np.arange(len(features)), own]
        return values[:, :-1], values[:, -1]

    def margin(self, features: pd.DataFrame) -> np.ndarray:
        """The explained score computed by LightGBM's plain prediction (what contributions must add up to)."""
        raw = self.booster.predict(self.matrix(features), raw_score=True)
        if self.kind == "clusters":
            return raw[np.arange(len(features)), self.model.assign(features)]
        return raw

    def explain(self, features: pd.DataFrame, typical: dict, top_k: int = DEFAULT_TOP_K) -> list[list[dict]]:
        contributions, base = self.contributions(features)
        margin = base + contributions.sum(axis=1)
        if self.kind == "churn" or self.kind == "lookalike":
            effect = sigmoid_effect
        elif self.kind == "value":
            effect = exp_effect
        else:
            raw = self.booster.predict(self.matrix(features), raw_score=True)
            own = self.model.assign(features)
            others = raw.copy()
            others[np.arange(len(raw)), own] = -np.inf
            effect = softmax_own_effect(np.log(np.exp(others - raw.max(axis=1, keepdims=True)).sum(axis=1))
                                        + raw.max(axis=1))
        return top_reasons(self.target, self.attribute_map, contributions, margin, effect, features, typical, top_k)


@dataclass
class Scorer:
    """A scoring bundle with its explainers and the population's typical values (fitted at build time)."""

    bundle: ScoringBundle
    typical: dict

    def __post_init__(self):
        self.explainers = {name: ModelExplainer(name, model) for name, model in sorted(self.bundle.models.items())}

    @property
    def seeds(self) -> list[str]:
        return sorted(seed for name in self.bundle.models if (seed := kind_of(name)[1]) is not None)

    def score_frame(self, features: pd.DataFrame) -> pd.DataFrame:
        """The bundle's flat score columns plus `segments` (list of predictive segment names) per row."""
        scores = self.bundle.score(features)
        scores["segments"] = [segments_of(row, self.seeds) for row in scores.to_dict(orient="records")]
        return scores

    def explanations(self, features: pd.DataFrame, top_k: int = DEFAULT_TOP_K) -> list[dict[str, list[dict]]]:
        """Per row: model key (churn, value, cluster, lookalike_<seed>) -> its top-k reasons."""
        rows = features.reset_index(drop=True)
        per_model = {e.target.key: e.explain(rows, self.typical, top_k) for e in self.explainers.values()}
        return [{key: reasons[i] for key, reasons in per_model.items()} for i in range(len(rows))]

    def results(self, features: pd.DataFrame, explain: bool = False, top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """One JSON-ready dict per row, in the `serving.schemas.ScoredCustomer` shape."""
        if features.empty:
            return []
        flat = self.score_frame(features).to_dict(orient="records")
        items = [nest(row, self.seeds) for row in flat]
        if explain:
            for item, reasons in zip(items, self.explanations(features, top_k), strict=True):
                item["reasons"] = reasons
        return items


def segments_of(row: dict, seeds: list[str]) -> list[str]:
    """The predictive segments of one flat score row (see PREDICTIVE_SEGMENTS)."""
    out = []
    if row.get("churn_band") is not None:
        out.append(f"churn_risk_{row['churn_band']}")
    for seed in seeds:
        if row.get(f"lookalike_{seed}_percentile", 0.0) >= LOOKALIKE_TOP_PERCENTILE:
            out.append(f"lookalike_{seed}_top10")
    if row.get("cluster_id") is not None:
        out.append(f"cluster_{int(row['cluster_id'])}")
    return out


def nest(row: dict, seeds: list[str]) -> dict:
    """A flat score row -> the nested response item."""
    item = {"customer_id": str(row["customer_id"]), "churn": None, "value": None, "lookalike": {}, "cluster": None,
            "segments": list(row.get("segments", [])), "reasons": None, "error": None}
    if "churn_probability" in row:
        item["churn"] = {"probability": float(row["churn_probability"]), "band": str(row["churn_band"])}
    if "expected_spend" in row:
        item["value"] = {"expected_purchases": float(row["expected_purchases"]),
                         "expected_spend": float(row["expected_spend"])}
    for seed in seeds:
        item["lookalike"][seed] = {"score": float(row[f"lookalike_{seed}_score"]),
                                   "percentile": float(row[f"lookalike_{seed}_percentile"])}
    if "cluster_id" in row:
        item["cluster"] = {"id": int(row["cluster_id"]), "name": str(row["cluster_name"])}
    return item


def batch_frame(scorer: Scorer, features: pd.DataFrame, explain: bool, top_k: int = DEFAULT_TOP_K) -> pd.DataFrame:
    """What `segments score` writes: the flat scores, `segments`, and with `explain` a `reasons` column (JSON text,
    the service's `reasons` object of the same customer)."""
    out = scorer.score_frame(features)
    if explain:
        out["reasons"] = [json.dumps(r, sort_keys=True) for r in scorer.explanations(features, top_k)]
    return out

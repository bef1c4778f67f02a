"""Scores, segments and reasons for feature rows: the one code path of the service and batch scoring.

`Scorer.results(features, explain, top_k, rules)` returns one JSON-ready dict per row (the `ScoredCustomer` shape);
the service returns them as they are and `segments score` writes the same values to Parquet, so the two cannot
disagree. `segments` are the served segment definitions (features/segments.yaml or SEGMENTS_DEFINITIONS) the row
satisfies, evaluated by `serving.segments.refresh.SegmentRules` with the same `evaluate` as a refresh and the event path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.outputs import nested
from serving.explain.reasons import (
    DEFAULT_TOP_K,
    AttributeMap,
    Target,
    exp_effect,
    identity_effect,
    sigmoid_effect,
    softmax_own_effect,
    top_reasons,
)
from serving.segments.refresh import SegmentRules
from training.bundle import ScoringBundle
from training.encoding import FeatureArrays
from training.tracking import kind_of


class ModelExplainer:
    """Exact TreeSHAP reasons of one model, built once per model (engine, attribute map, target words). What is
    explained, in which words and through which link, is the model's own declaration (`model.explanation()`)."""

    def __init__(self, name: str, model):
        self.name, self.model = name, model
        self.kind, self.seed = model.kind, kind_of(name)[1]
        self.encoder = model.encoder_
        declared = model.explanation()
        if declared.link not in LINKS:
            raise ValueError(f"{name}: no reasons for a {declared.link!r} link; known: {', '.join(LINKS)}")
        self.declared, self.link, self.own_class, self.extra = declared, declared.link, declared.own_class, declared.extra
        self.target = Target(declared.key, declared.subject, declared.scale, declared.unit)
        self.engine = declared.contributions
        self.attribute_map = AttributeMap(self.encoder.feature_names_)
        self.n_inputs = len(self.encoder.feature_names_)

    def matrix(self, features: pd.DataFrame | FeatureArrays) -> np.ndarray:
        return self.encoder.matrix(features)

    def contributions(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
        """(contributions rows x inputs, base value per row) of the explained score; they add up to its margin.

        For a softmax link (clusters) the explained score is each row's own class (the model's `own_class`).
        `encoded`: the rows already through `matrix` (encoded once per request, shared with the scores).
        """
        X = self.matrix(features) if encoded is None else encoded
        return self._contributions(X, self._own(features, X))

    def margin(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> np.ndarray:
        """The explained score computed by LightGBM's plain prediction (what contributions must add up to)."""
        X = self.matrix(features) if encoded is None else encoded
        raw = self.declared.trees_margin(X)
        own = self._own(features, X)
        if own is not None:
            return raw[np.arange(len(X)), own]
        return raw if self.extra is None else raw + self.extra(X).sum(axis=1)

    def explain(self, features: pd.DataFrame, typical: dict, top_k: int = DEFAULT_TOP_K,
                encoded: np.ndarray | None = None) -> list[list[dict]]:
        X = self.matrix(features) if encoded is None else encoded
        own = self._own(features, X)
        contributions, base = self._contributions(X, own)
        margin = base + contributions.sum(axis=1)
        if self.link == "softmax":
            raw = self.declared.trees_margin(X)
            others = raw.copy()
            others[np.arange(len(raw)), own] = -np.inf
            effect = softmax_own_effect(np.log(np.exp(others - raw.max(axis=1, keepdims=True)).sum(axis=1))
                                        + raw.max(axis=1))
        else:
            effect = LINKS[self.link]
        return top_reasons(self.target, self.attribute_map, contributions, margin, effect, features, typical, top_k)

    def _own(self, features: pd.DataFrame, X: np.ndarray) -> np.ndarray | None:
        """Each row's explained class (softmax link only): the class whose score is explained."""
        return None if self.own_class is None else self.own_class(features, X)

    def _contributions(self, X: np.ndarray, own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        values = self.engine(X) if own is None else self.declared.contributions(X, classes=own)
        return values[:, :-1], values[:, -1]


# How a margin becomes the shown score, per declared link (softmax: the own class among all, built per request).
LINKS = {"logistic": sigmoid_effect, "log": exp_effect, "identity": identity_effect, "softmax": None}


@dataclass
class Scorer:
    """A scoring bundle with its explainers and the population's typical values (fitted at build time)."""

    bundle: ScoringBundle
    typical: dict

    def __post_init__(self):
        self.explainers = {name: ModelExplainer(name, model) for name, model in sorted(self.bundle.models.items())}
        self.seeds = sorted(seed for name in self.bundle.models if (seed := kind_of(name)[1]) is not None)

    def encode(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        """Model name -> the rows through its encoder, from one conversion of the frame: done once per request and
        shared by scores and reasons (without `encoded`, each model converts and encodes the frame itself)."""
        arrays = FeatureArrays.for_encoders(features, [e.encoder for e in self.explainers.values()])
        return {name: explainer.matrix(arrays) for name, explainer in self.explainers.items()}

    def score_frame(self, features: pd.DataFrame, encoded: dict[str, np.ndarray] | None = None,
                    rules: SegmentRules | None = None) -> pd.DataFrame:
        """The bundle's flat score columns plus `segments` (names of the `rules`' segments the row is in; empty
        without rules) per row."""
        scores = self.bundle.score(features, encoded)
        scores["segments"] = pd.Series(self._segments(features, scores, rules), index=scores.index, dtype=object)
        return scores

    def explanations(self, features: pd.DataFrame, top_k: int = DEFAULT_TOP_K,
                     encoded: dict[str, np.ndarray] | None = None) -> list[dict[str, list[dict]]]:
        """Per row: model key (churn, value, cluster, lookalike_<seed>) -> its top-k reasons."""
        if features.empty:  # LightGBM's contributions of no rows divide by zero
            return []
        encoded = encoded if encoded is not None else self.encode(features)
        per_model = {e.target.key: e.explain(features, self.typical, top_k, encoded[name])
                     for name, e in self.explainers.items()}
        return [{key: reasons[i] for key, reasons in per_model.items()} for i in range(len(features))]

    def results(self, features: pd.DataFrame, explain: bool = False, top_k: int = DEFAULT_TOP_K,
                rules: SegmentRules | None = None) -> list[dict]:
        """One JSON-ready dict per row, in the `serving.http.schemas.ScoredCustomer` shape (`segments` empty without
        `rules`)."""
        if features.empty:
            return []
        encoded = self.encode(features)
        scores = self.bundle.score_columns(features, encoded)
        items = [nest({**row, "segments": names}, self.seeds)
                 for row, names in zip(records(scores), self._segments(features, scores, rules), strict=True)]
        if explain:
            for item, reasons in zip(items, self.explanations(features, top_k, encoded), strict=True):
                item["reasons"] = reasons
        return items

    def _segments(self, features: pd.DataFrame, scores, rules: SegmentRules | None) -> list[list[str]]:
        """Names of the `rules`' segments each row is in (empty without rules); `scores`: the bundle's score frame
        or its columns."""
        if rules is None:
            return [[] for _ in range(len(features))]
        return rules.segments_of(features, scores, self.bundle)


def records(columns) -> list[dict]:
    """`frame.to_dict(orient="records")` (Python scalars) without its per-cell cost: one `tolist` per column.
    `columns`: a frame, or name -> array (`ScoringBundle.score_columns`)."""
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*(columns[c].tolist() for c in names))]


def nest(row: dict, seeds: list[str]) -> dict:
    """A flat score row -> the nested response item (its groups from the declared outputs)."""
    return {"customer_id": str(row["customer_id"]), **nested(row, seeds), "segments": list(row.get("segments", [])),
            "reasons": None, "error": None}


def batch_frame(scorer: Scorer, features: pd.DataFrame, explain: bool, rules: SegmentRules,
                top_k: int = DEFAULT_TOP_K) -> pd.DataFrame:
    """What `segments score` writes: the flat scores, `segments` (as the service evaluates them with the same
    `rules`), and with `explain` a `reasons` column (JSON text, the service's `reasons` object of the customer)."""
    encoded = scorer.encode(features) if explain else None
    out = scorer.score_frame(features, encoded, rules)
    if explain:
        out["reasons"] = [json.dumps(r, sort_keys=True) for r in scorer.explanations(features, top_k, encoded)]
    return out

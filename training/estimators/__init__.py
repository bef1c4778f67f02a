"""The model kinds: one estimator class each (churn, value, look-alike, clusters, uplift; `base` holds what they
share),
looked up by kind here and nowhere else. Imports are lazy: each kind pulls in its own stack.

A new model kind is one module here with an `Estimator` subclass, a row in ESTIMATORS, and its outputs in
features/outputs.py.
"""

from __future__ import annotations

from importlib import import_module

ESTIMATORS = {
    "churn": ("training.estimators.churn", "ChurnModel"),
    "value": ("training.estimators.value", "ValueModel"),
    "lookalike": ("training.estimators.lookalike", "LookalikeModel"),
    "clusters": ("training.estimators.clusters", "ClusterModel"),
    "uplift": ("training.estimators.uplift", "UpliftModel"),
}
KINDS = tuple(ESTIMATORS)


def model_class(kind: str):
    """The estimator class of a kind (churn, value, lookalike, clusters, uplift)."""
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown model kind '{kind}': use one of {', '.join(KINDS)}")
    module, name = ESTIMATORS[kind]
    return getattr(import_module(module), name)

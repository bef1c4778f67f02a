"""The model kinds and their classes, looked up by name (imports are lazy: each kind pulls in its own stack)."""

from __future__ import annotations

from importlib import import_module

MODEL_CLASSES = {
    "churn": ("training.churn", "ChurnModel"),
    "value": ("training.value", "ValueModel"),
    "lookalike": ("training.lookalike", "LookalikeModel"),
    "clusters": ("training.clusters", "ClusterModel"),
}
KINDS = tuple(MODEL_CLASSES)


def model_class(kind: str):
    """The model class of a kind (churn, value, lookalike, clusters)."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind '{kind}': use one of {', '.join(KINDS)}")
    module, name = MODEL_CLASSES[kind]
    return getattr(import_module(module), name)

"""What a logged model and the bento need outside this repository: our packages as code, and pinned requirements.

Versions are the installed ones, which `make env` takes from uv.lock (`uv sync --frozen`): a model or a bento asks
for exactly the versions it was built and tested with, so an environment built from its own requirements (`mlflow
models serve`, `spark_udf`, `bentoml serve` of the bento) runs the code it was trained with. Tested by building such
environments from the package index (tests/test_portable.py).
"""

from __future__ import annotations

import re
from importlib import import_module
from importlib.metadata import requires, version
from pathlib import Path

PROJECT = "loyalty-segments"
# What loading and running any model kind imports (training.pyfunc_model -> training.estimators.<kind> ->
# features.catalog, training.plots; lifetimes for the textbook candidates).
MODEL_DISTRIBUTIONS = ("mlflow", "lightgbm", "scikit-learn", "scipy", "pandas", "numpy", "pyarrow", "matplotlib",
                       "ibis-framework[duckdb]", "duckdb", "pyyaml", "lifetimes")
# Our packages a model's code needs (copied into the logged model as MLflow code paths).
MODEL_PACKAGES = ("features", "training")


def pinned(distributions: tuple[str, ...]) -> list[str]:
    """`name[extras]==installed version` per distribution."""
    return [f"{name}=={version(_bare(name))}" for name in distributions]


def service_requirements() -> list[str]:
    """Every runtime dependency the project declares (pyproject.toml; optional extras left out), pinned: what the
    bento runs the service, the reports and the store with."""
    declared = [r for r in requires(PROJECT) or [] if "extra ==" not in r]
    return pinned(tuple(re.match(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?", r).group(0) for r in declared))


def package_dirs(packages: tuple[str, ...] = MODEL_PACKAGES) -> list[str]:
    """The folders of our packages, as MLflow code paths."""
    return [str(Path(import_module(package).__file__).parent) for package in packages]


def _bare(name: str) -> str:
    return re.sub(r"\[.*\]$", "", name)

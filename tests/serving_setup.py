"""Shared by the serving tests: small real models trained, registered in a temp MLflow, and built into a serve folder.

Small configs (the tests are about plumbing and exactness, not quality); the churn model keeps its default 7-leaf
trees so that the fast exact TreeSHAP path is exercised.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

AS_OF = datetime(2026, 7, 1)
SMALL = {
    "churn": {"n_estimators": 40},
    "value": {"n_estimators": 15, "num_leaves": 7},
    "lookalike": {"num_boost_round": 15, "num_leaves": 7},
    "clusters": {"k_range": (3, 4), "bootstrap_rounds": 2, "n_init": 2, "surrogate_num_boost_round": 10,
                 "surrogate_num_leaves": 7, "sample_size": 1500},
    "uplift": {"n_estimators": 40, "score_rounds": 30, "cv_folds": 2},
}


@contextmanager
def environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def use_bentoml_home(home: Path) -> None:
    """Point BentoML's model store at `home`, also when BentoML was imported already in this process."""
    os.environ["BENTOML_HOME"] = str(home)
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    models = Path(home) / "models"
    models.mkdir(parents=True, exist_ok=True)
    # BentoML caches the home and the store on first use: replace both (tests use one store per module).
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store_dir.set(str(models))
    BentoMLContainer.model_store.set(ModelStore(str(models)))


def train_small(validation, data_folder: Path) -> dict:
    """The five model kinds, small (SMALL), trained as of AS_OF: the records and the current feature table.

    Trained once per test process (conftest's `small_models`); the records are read, never changed, by logging and
    building."""
    from training import train as training

    shared = training.TrainingData(validation, AS_OF, str(data_folder))
    records = [training.train_churn(shared, SMALL["churn"], 90), training.train_value(shared, SMALL["value"], 90),
               training.train_lookalike(shared, SMALL["lookalike"], "best_members"),
               training.train_clusters(shared, SMALL["clusters"]), training.train_uplift(shared, SMALL["uplift"])]
    return {"records": records, "features": shared.current_features}


def tracking_in(root: Path) -> str:
    """An MLflow store in `root` whose experiments keep their run artifacts in `root` too (not in ./mlruns of the
    working folder, the checkout). Returns its tracking URI."""
    from mlflow import MlflowClient

    from training.estimators import KINDS
    from training.tracking import experiment_name

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for kind in KINDS:
        if client.get_experiment_by_name(experiment_name(kind)) is None:
            client.create_experiment(experiment_name(kind), artifact_location=(root / "mlruns" / kind).as_uri())
    return uri


_BUILDS: dict[int, dict] = {}  # id(small_models) -> the build: one per test process


def build_served(root: Path, validation, small_models: dict) -> dict:
    """The small models (`train_small`) registered in an MLflow and built into a serve folder (`segments build`'s
    logic), once per test process: the serving modules only read the registry, the serve folder and BentoML's store,
    and building them took ~25 s a module. Each caller gets its own segment store in `root`
    (SEGMENTS_DB_URL). Returns paths and env."""
    built = _BUILDS.get(id(small_models))
    if built is None:
        built = _BUILDS[id(small_models)] = _build(root / "build", validation, small_models)
    return {**built, "env": {**built["env"], "SEGMENTS_DB_URL": f"sqlite:///{root / 'segments.db'}"}}


def _build(root: Path, validation, small_models: dict) -> dict:
    from training.tracking import log_training_run

    env = {"MLFLOW_TRACKING_URI": tracking_in(root), "BENTOML_HOME": str(root / "bentoml"),
           "SEGMENTS_SERVE_DIR": str(root / "serve")}
    with environment(MLFLOW_TRACKING_URI=env["MLFLOW_TRACKING_URI"]):
        use_bentoml_home(root / "bentoml")
        for record in small_models["records"]:
            log_training_run(record)
        from serving.state import build

        manifest = build(validation, AS_OF, root / "serve")
    return {"env": env, "manifest": manifest, "serve_dir": root / "serve", "records": small_models["records"],
            "features": small_models["features"]}


def fresh_environment(root: Path, requirements: Path) -> Path:
    """A virtual environment holding only `requirements` (from the package index, or uv's cache of it) and none of
    this project's code: what a model or the bento gets on another machine. Returns its bin folder."""
    import shutil
    import subprocess
    import sys

    uv = [shutil.which("uv")] if shutil.which("uv") else ["python3", "-m", "uv"]
    venv = root / "venv"
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=300)
    installed = subprocess.run([*uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r",
                                str(requirements)], capture_output=True, text=True, timeout=1200, check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv / "bin"

"""The process settings every `segments` command needs before MLflow or BentoML import, in a module that imports
nothing heavy: the command calls it before it knows which command runs (`training.tracking` imports SciPy and
took ~1 s at each start)."""

from __future__ import annotations

import logging
import os
import warnings


def configure_runtime() -> None:
    """No outside network calls at run time (MLflow and BentoML telemetry off, set before they import), and
    MLflow's own progress bars and info chatter kept out of our progress display. The `segments` command and the
    notebooks call it first."""
    for name, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "1",
                        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(name, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)  # "no pip in the venv": uv made it
    warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")


DEFAULT_THREADS = 2


def fit_threads() -> int:
    """Threads one model fit uses (LightGBM; KMeans' OpenMP): SEGMENTS_THREADS, else DEFAULT_THREADS. Each model
    config's `num_threads` defaults to it. Fewer threads can fit faster: a value model's trees on 14,000 rows took 15 ms
    each with 2 threads and 10 ms with 1 (OMP_WAIT_POLICY=PASSIVE, as in the tests), and the training-heavy tests, two
    workers sharing 2 cores, 196 s with 2 threads a fit and 158 s with 1."""
    value = os.environ.get("SEGMENTS_THREADS", "").strip()
    if not value:
        return DEFAULT_THREADS
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ValueError(f"SEGMENTS_THREADS must be a whole number of threads, 1 or more; got {value!r}")
    return int(value)

"""MLflow "models from code" entry: loads a saved model folder (native LightGBM text + JSON) by kind.

MLflow copies this file into each logged model and runs it at load time, so no pickle of our classes is ever
stored. `predict` takes a feature table (the catalog's columns) and returns the model's scores.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class SegmentsModel(PythonModel):
    """Wraps one of our models (churn, value, lookalike, clusters) for the MLflow pyfunc interface."""

    def load_context(self, context) -> None:
        from training.estimators import model_class

        self.kind = context.model_config["kind"]
        self.model = model_class(self.kind).load(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.predict(model_input)


mlflow.models.set_model(SegmentsModel())

"""Charts for data scientists' MLflow runs and notebooks: the SHAP plots of a fitted model (beeswarm, dependence of
its strongest input, waterfall of its highest-scored customer), drawn by the `shap` library on the explained
booster every estimator declares (`Estimator.explanation()`), the same values the service's reasons sum."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.catalog import FEATURES_BY_NAME

SHAP_SAMPLE = 500  # rows explained for the plots: enough for a beeswarm, ~0.1 s of TreeSHAP


def shap_explanation(model, features: pd.DataFrame, sample: int = SHAP_SAMPLE, seed: int = 0):
    """A `shap.Explanation` of `model`'s explained score on up to `sample` rows of `features` (a seeded sample).

    Inputs are named by their catalog labels; for a softmax model (clusters) each row's own class is explained.
    """
    import shap

    declared = model.explanation()
    rows = features.sample(n=min(sample, len(features)), random_state=seed) if len(features) > sample else features
    X = model.encoder_.matrix(rows)
    explainer = shap.TreeExplainer(declared.booster)
    with warnings.catch_warnings():  # shap's note that binary LightGBM output changed shape: we read the array
        warnings.filterwarnings("ignore", message=".*binary classifier.*", category=UserWarning)
        values = np.asarray(explainer.shap_values(X))
    base = np.asarray(explainer.expected_value, dtype=float)
    if values.ndim == 3:  # (rows, inputs, classes): the own class of each row
        own = declared.own_class(rows, X)
        values, base = values[np.arange(len(X)), :, own], base[own]
    names = [FEATURES_BY_NAME[f].label if f in FEATURES_BY_NAME else f for f in model.encoder_.feature_names_]
    return shap.Explanation(values=values, base_values=np.broadcast_to(base, len(X)).copy(), data=X,
                            feature_names=names), declared


def shap_figures(model, features: pd.DataFrame) -> dict[str, Figure]:
    """name -> Figure: shap_beeswarm, shap_dependence (strongest input) and shap_waterfall (highest margin)."""
    import matplotlib.pyplot as plt
    import shap

    explanation, declared = shap_explanation(model, features)
    margin_words = f"{declared.subject} ({declared.scale})"
    figures = {}
    strongest = int(np.abs(explanation.values).mean(axis=0).argmax())
    top = int((explanation.values.sum(axis=1) + explanation.base_values).argmax())
    for name, draw in (("shap_beeswarm", lambda: shap.plots.beeswarm(explanation, max_display=15, show=False)),
                       ("shap_dependence", lambda: shap.plots.scatter(explanation[:, strongest], show=False)),
                       ("shap_waterfall", lambda: shap.plots.waterfall(explanation[top], max_display=12,
                                                                        show=False))):
        plt.figure()
        draw()
        figure = plt.gcf()
        figure.suptitle(f"SHAP: {margin_words}", fontsize=10)
        figures[name] = figure
        plt.close(figure)  # kept as an object; pyplot forgets it
    return figures

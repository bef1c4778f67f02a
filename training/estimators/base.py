"""What every model kind shares: the estimator base (parameters, fitted-state guard, native save/load metadata) and
what a model declares about its explanation.

An estimator follows scikit-learn's conventions where they fit: parameters are keyword arguments (or one config
object) stored as they are, `get_params` / `set_params` read and change them, learned state is set by `fit` and
ends in `_`, `predict` returns the model's declared outputs, a model used before `fit` or `load` raises
`NotFittedError`. Each kind saves in native formats (LightGBM text, JSON) with a `model.json` of metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from features.catalog import FEATURE_SET_VERSION
from training.evaluation import paired_bootstrap


@dataclass(frozen=True)
class Explanation:
    """What a model's reasons explain: TreeSHAP of `booster` on the model's encoded inputs.

    key, subject, scale, unit: the target in words (e.g. "churn", "churn risk", "log-odds", "probability");
    link: how the booster's margin becomes the shown score ("logistic", "log" or "softmax": the own class's
    probability among all classes); `own_class(features, X)` picks each row's explained class for "softmax";
    `extra(X)`: the contributions of a part of the margin that is not the booster's (rows x inputs + base value,
    added to the booster's TreeSHAP; e.g. churn's textbook term), None when the margin is the booster's alone.
    """

    booster: lgb.Booster | None  # None: the margin is `extra`'s alone (a textbook candidate)
    key: str
    subject: str
    scale: str
    unit: str
    link: str
    own_class: Any = None
    extra: Any = None

    def contributions(self, X: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Exact contributions of the explained margin per encoded row: LightGBM's TreeSHAP of the booster (the
        values `shap.TreeExplainer` gives; per class side by side for a multiclass booster) plus `extra`.

        `classes`: one class per row of a multiclass booster: only that class's values (rows x inputs + base value),
        each from its class's trees alone, so 1/classes of the work (the service explains each row's own cluster).
        """
        if classes is not None:
            if self.extra is not None:  # an extra term has no per-class values to add: never silently dropped
                raise ValueError("per-class contributions of a model with an extra margin term are not defined")
            return _per_class_contributions(self._class_boosters, X, classes)
        if self.booster is None:
            return self.extra(X)
        values = np.asarray(self.booster.predict(X, pred_contrib=True))
        return values if self.extra is None else values + self.extra(X)

    def trees_margin(self, X: np.ndarray) -> np.ndarray:
        """The booster's raw margin per row (classes side by side for multiclass); zeros without a booster."""
        return np.zeros(len(X)) if self.booster is None else self.booster.predict(X, raw_score=True)

    @functools.cached_property
    def _class_boosters(self) -> list[lgb.Booster]:
        return class_boosters(self.booster)


def class_boosters(booster: lgb.Booster) -> list[lgb.Booster]:
    """A multiclass booster as one single-output booster per class, holding that class's trees (tree i belongs to
    class i % classes in LightGBM's model text): each one's TreeSHAP is exactly that class's part of the whole's."""
    text = booster.model_to_string()
    head, rest = text.split("\nTree=0\n", 1)
    trees = ("Tree=0\n" + rest.split("\nend of trees", 1)[0]).split("\n\n\n")
    k = booster.num_model_per_iteration()
    if k < 2 or len(trees) % k:
        raise ValueError(f"not a multiclass model of whole iterations: {k} trees per iteration, {len(trees)} trees")
    header = re.sub(r"(?m)^num_class=\d+$", "num_class=1", head)
    header = re.sub(r"(?m)^num_tree_per_iteration=\d+$", "num_tree_per_iteration=1", header)
    header = re.sub(r"(?m)^objective=.*$", "objective=regression", header)
    header = re.sub(r"(?m)^tree_sizes=.*\n", "", header)  # byte sizes of the trees: renumbered, they differ
    out = []
    for c in range(k):
        own = [re.sub(r"\ATree=\d+", f"Tree={j}", tree) for j, tree in enumerate(trees[c::k])]
        out.append(lgb.Booster(model_str=header + "\n" + "\n\n\n".join(own) + "\n\n\nend of trees\n"))
    return out


def _per_class_contributions(boosters: list[lgb.Booster], X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = np.empty((len(X), X.shape[1] + 1))
    for c in np.unique(classes):
        rows = classes == c
        out[rows] = boosters[c].predict(X[rows], pred_contrib=True)
    return out


@dataclass(frozen=True)
class Chart:
    """An evaluation chart of the model report, redrawn from the run's logged tables: `draw(tables, horizon, seed)`
    returns the figure (`seed`: the look-alike's seed in words)."""

    section: str
    title: str
    caption: str
    draw: Any
    square: bool = False


@dataclass(frozen=True)
class ReportPage:
    """What a kind's model report page shows, in a marketer's words (serving/reports/model_pages.py reads it).

    title, nav_label ("{seed}" is the look-alike's seed in words); purpose ("{horizon}", "{seed}", "{what}": the
    seed's description); shown_metrics (the quality table's rows); population (who the drivers are computed on:
    "active" = the churn population, customers who bought in the last year, else everyone); subject (what the
    drivers explain, None = the explanation's own words); risk (drivers read as risk); contrast (compare the top
    drivers with the population, look-alikes); evaluated (the evaluation date's caption); target_label and
    target_percent (the data-window table's target column); charts (needing `chart_tables` logged); file (the
    page's file, None = model-<kind>[-<seed>].html); page ("model" or "clusters": the page template).
    """

    title: str
    nav_label: str
    purpose: str
    shown_metrics: tuple[str, ...]
    population: str = "all"
    subject: str | None = None
    risk: bool = False
    contrast: bool = False
    evaluated: str = "evaluation date (out of time: after the training data)"
    target_label: str = "Mean"
    target_percent: bool = False
    chart_tables: tuple[str, ...] = ()
    charts: tuple[Chart, ...] = ()
    file: str | None = None
    page: str = "model"


class Estimator:
    """Base of the model kinds. Subclasses set `kind`, `config_class` and `fitted_attribute`, and implement `fit`,
    `predict_columns`, `explanation`, `save` and `load`."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    fitted_attribute: ClassVar[str] = "booster_"
    # The metric a challenger must beat the champion on (higher is better).
    primary_metric: ClassVar[str]
    # Out-of-time metrics shown first by `segments train` (the first is the primary metric of promotion).
    headline_metrics: ClassVar[tuple[str, ...]] = ()
    # Kinds whose baselines are served candidates (churn, value): candidate -> words, and the figure that chooses.
    candidate_names: ClassVar[dict[str, str]] = {}
    candidate_metric: ClassVar[str] = ""
    # A registered model of this kind is named per seed segment (look-alikes): `segments train` asks for one.
    needs_seed: ClassVar[bool] = False
    report: ClassVar[ReportPage]

    def __init__(self, config=None, **params):
        base = config if config is not None else self.config_class()
        self.config = dataclasses.replace(base, **params) if params else base

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters (every config field), as scikit-learn's `get_params`."""
        return {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}

    def set_params(self, **params) -> Estimator:
        """Change parameters (unknown names are an error, as in scikit-learn); returns self."""
        unknown = set(params) - {f.name for f in dataclasses.fields(self.config)}
        if unknown:
            raise ValueError(f"invalid parameters for {type(self).__name__}: {sorted(unknown)}")
        self.config = dataclasses.replace(self.config, **params)
        return self

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != getattr(self.config_class(), k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def require_fitted(self) -> None:
        """Raise scikit-learn's NotFittedError (a ValueError) before `fit` or `load`."""
        if not hasattr(self, self.fitted_attribute):
            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit() or load() first")

    def predict(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> pd.DataFrame:
        """Feature table -> the model's declared outputs (features/outputs.py), same index.

        `encoded`: the rows already through the model's `encoder_.matrix` (the service encodes once per request)."""
        return pd.DataFrame(self.predict_columns(features, encoded), index=features.index)

    def predict_columns(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> dict[str, Any]:
        """`predict`'s columns as arrays, in order (the scoring bundle gathers them without a frame per model:
        building six one-row frames cost as much as the models for one customer)."""
        raise NotImplementedError

    def explanation(self) -> Explanation:
        raise NotImplementedError

    def settings_from_backtest(self, evaluation) -> dict:
        """Config values this model chooses out of time on the backtest's evaluation snapshot (called by the
        training protocol after the backtest fit; the served refit is fitted with them). None by default."""
        return {}

    def served(self, backtest: Estimator, fallback: list[str]) -> dict[str, str]:
        """Which candidate this fitted model serves and why ({"candidate", "reason"}, logged as the run's tags
        served_candidate and served_reason), given the backtest model (its `candidates_` table, when it chose) and
        why a fallback was fitted, if it was. Empty for a kind without candidates."""
        if not self.candidate_names:
            return {}
        name = self.candidate_names[self.candidate_]
        if fallback:
            reason = (f"Served: {name}, the fallback for a programme too small for LightGBM "
                      f"({fallback[0].split(' among ')[0]}).")
        elif getattr(backtest, "candidates_", None) is not None:
            reason = served_reason(backtest.candidates_, self.candidate_metric)
        else:
            reason = f"Served: {name}, as configured."
        return {"candidate": self.candidate_, "reason": reason}

    # -- native save and load: model.json metadata shared by every kind

    def metadata(self, **dates: list[datetime] | datetime) -> dict:
        """What model.json records for any kind: kind, feature-set version, config, training dates, versions."""
        def iso(value):
            return [d.isoformat() for d in value] if isinstance(value, list) else value.isoformat()

        return {"kind": self.kind, "feature_set_version": FEATURE_SET_VERSION,
                "config": dataclasses.asdict(self.config), "lightgbm_version": lgb.__version__,
                "feature_names": self.encoder_.feature_names_, **{name: iso(value) for name, value in dates.items()}}

    def save_native(self, directory: Path, boosters: dict[str, lgb.Booster], state: dict,
                    state_file: str = "model.json", encoder_file: str = "encoder.json") -> Path:
        """What every kind saves: each booster as LightGBM text (`boosters`: file name -> booster), the encoder as
        JSON, and `state_file` with `metadata()` (kind, config, versions) plus `state`. Returns the folder."""
        self.require_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, booster in boosters.items():
            booster.save_model(str(directory / file_name))
        (directory / encoder_file).write_text(self.encoder_.to_json())
        write_json(directory / state_file, {**self.metadata(), **state})
        return directory

    @classmethod
    def load_native(cls, directory: Path, booster_files: list[str], state_file: str = "model.json",
                    encoder_file: str = "encoder.json") -> tuple[Estimator, dict, dict[str, lgb.Booster]]:
        """Read what `save_native` wrote: (the model with its config, encoder and feature-set version set, the
        saved state, the boosters by file name)."""
        from training.encoding import FeatureEncoder

        directory = Path(directory)
        model, state = cls.from_metadata(directory / state_file)
        boosters = {name: lgb.Booster(model_file=str(directory / name)) for name in booster_files}
        model.encoder_ = FeatureEncoder.from_json((directory / encoder_file).read_text())
        model.feature_set_version_ = state["feature_set_version"]
        return model, state, boosters

    @classmethod
    def from_metadata(cls, path: Path) -> tuple[Estimator, dict]:
        """(an unfitted estimator with the saved config, the metadata) from a model.json of this kind."""
        meta = json.loads(Path(path).read_text())
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {meta.get('kind')!r} model, not {cls.kind!r}")
        return cls(config_from_dict(cls.config_class, meta["config"])), meta


def candidate_table(names: dict[str, str], metric, y: np.ndarray, options: dict[tuple[str, float], np.ndarray],
                    scores: dict[tuple[str, float], float], chosen: tuple[str, float]) -> pd.DataFrame:
    """One row per candidate of `names` that has options (its best option; options are keyed (candidate, setting),
    e.g. churn's textbook weight): candidate, name, setting, value (the choosing figure on the backtest's
    evaluation snapshot), served, and the served option's margin over it with a paired-bootstrap 95% interval."""
    rows = []
    for candidate, name in names.items():
        keys = [key for key in options if key[0] == candidate]
        if not keys:
            continue
        key = chosen if chosen in keys else max(keys, key=lambda k: (scores[k], -k[1]))
        low, high = (0.0, 0.0) if key == chosen else paired_bootstrap(metric, y, options[chosen], options[key])
        rows.append({"candidate": candidate, "name": name, "setting": key[1], "value": scores[key],
                     "served": key == chosen, "served_margin": scores[chosen] - scores[key],
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def served_reason(table: pd.DataFrame, metric_words: str) -> str:
    """One sentence for reports and `segments train`: which candidate is served and why, with its margin over the
    best other one and the interval (a `candidate_table`)."""
    served = table.loc[table["served"]].iloc[0]
    others = table.loc[~table["served"]]
    if others.empty:
        return f"Served: {served['name']} (no other candidate could be fitted)."
    runner = others.loc[others["value"].idxmax()]
    return (f"Served: {served['name']}, the best of {len(table)} candidates on the backtest's out-of-time "
            f"{metric_words} ({served['value']:.4f}; {runner['name']} {runner['value']:.4f}, margin "
            f"{runner['served_margin']:+.4f}, 95% interval {runner['ci_low']:+.4f} to {runner['ci_high']:+.4f}).")


def config_from_dict(config_cls, values: dict):
    """Rebuild a frozen config dataclass from JSON (lists back to tuples; unknown keys are an error)."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} fields in the saved model: {', '.join(unknown)}")
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True))

"""`segments monitor`: the prediction log judged against what happened, and drift against the training reference.

For each model version in the prediction log (`serving.predictions`), as of the monitor's `--as-of` T:
- realised performance (churn, value) on the newest logged as_of P with P + horizon <= T: the outcomes over
  [P, P + horizon) come from `training.labels.make_snapshot`, the labels of training, and the metrics from
  `training.evaluation`. It is compared with the out-of-time metric logged at training (roc_auc, spearman_spend):
  more than `training.monitoring.DECAY_TOLERANCE` below is "decaying". When no logged as_of has a complete horizon
  yet, the version is "waiting until" the first date one will.
- drift on the newest logged as_of L <= T: the PSI of each of the model's input features (rebuilt from --data at L)
  against the training run's reference profile (`monitoring/reference_profile.json`, the evaluation features), and
  the PSI of each logged output against the same model's outputs on the reference rows (the evaluation features
  rebuilt from --data at the run's evaluation as_of and scored by the registered version). Outputs above 0.25 make
  the model "drifting"; drifting features are listed as the likely cause, but alone do not change the status: a
  feature can move (tenure grows with the programme) without moving the scores, and then the segments and
  decisions built on them do not move either.
- stale: the model's training as_of more than max_age_days before T.

One MLflow run per monitored version (experiment `segments-monitoring`, tags registered_model and model_version),
the latest health as tags of the model version, and `monitoring.json` beside the log for the service. Retention:
files whose as_of is more than `retention_days` before T are deleted first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from features.build import FeatureQuery
from features.io import replace_atomically
from features.time import utc_now
from serving.health import DEFAULT_MAX_MODEL_AGE_DAYS
from serving.predictions import (
    DEFAULT_RETENTION_DAYS,
    STATUS_FILE,
    prediction_index,
    prune_predictions,
    read_predictions,
)
from training.bundle import ScoringBundle
from training.labels import make_snapshot
from training.monitoring import (
    PSI_DRIFTING,
    REALISED,
    age_days,
    drift_summary,
    model_status,
    psi,
    reference_profile,
    result_json,
)
from training.tracking import log_monitoring, training_reference


class MonitorInputError(ValueError):
    """Nothing to monitor, or input that cannot be monitored (a missing folder, an empty log)."""


@dataclass
class MonitorRun:
    """The results of one monitor invocation: one dict per model version (JSON-ready) and its tables."""

    as_of: datetime
    folder: Path
    pruned: list[Path]
    results: list[dict]
    tables: dict[tuple[str, str], dict[str, pd.DataFrame]] = field(default_factory=dict)


class Monitor:
    """Judges model versions as of `as_of` on validated tables; feature tables and outcomes are built once per date."""

    def __init__(self, validation, as_of: datetime, max_age_days: float, client=None,
                 progress: Callable[[str], None] = lambda message: None):
        self.validation, self.as_of, self.max_age_days = validation, as_of, max_age_days
        self.client, self.progress = client, progress
        self.query = FeatureQuery(validation.columns)
        self._features: dict[datetime, pd.DataFrame] = {}
        self._outcomes: dict[tuple[datetime, int], pd.DataFrame] = {}

    def features(self, at: datetime) -> pd.DataFrame:
        if at not in self._features:
            self.progress(f"features as of {at:%Y-%m-%d}")
            self._features[at] = make_snapshot(self.validation, at, 0, self.query, with_outcomes=False).features
        return self._features[at]

    def outcomes(self, at: datetime, horizon: int) -> pd.DataFrame:
        """Outcomes over [at, at + horizon), the training labels (ValueError when the data ends before)."""
        if (at, horizon) not in self._outcomes:
            self.progress(f"outcomes over the {horizon} days after {at:%Y-%m-%d}")
            snapshot = make_snapshot(self.validation, at, horizon, self.query)
            self._features.setdefault(at, snapshot.features)
            self._outcomes[(at, horizon)] = snapshot.outcomes
        return self._outcomes[(at, horizon)]

    def judge(self, name: str, version: str, logged: pd.DataFrame) -> tuple[dict, dict[str, pd.DataFrame]]:
        """One model version's result from its rows of the prediction index (all as_of <= the monitor's)."""
        logged = logged.sort_values("as_of", kind="stable")
        kind = str(logged["kind"].iloc[-1])
        horizon = logged["horizon_days"].iloc[-1]
        horizon = None if pd.isna(horizon) else int(horizon)
        notes: list[str] = []
        tables: dict[str, pd.DataFrame] = {}
        reference, model = self._reference(name, version, notes)

        realised = realised_as_of = waiting_until = None
        customers_judged = None
        if horizon is not None and kind in REALISED:
            ends = logged["as_of"] + pd.Timedelta(days=horizon)
            matured = logged[ends <= pd.Timestamp(self.as_of)]
            if matured.empty:
                waiting_until = ends.min().to_pydatetime()
            else:
                newest = matured.iloc[-1]
                realised_as_of = newest["as_of"].to_pydatetime()
                try:
                    outcomes = self.outcomes(realised_as_of, horizon)
                except ValueError as exc:
                    notes.append(f"realised performance not judged: {exc}")
                else:
                    self.progress(f"realised performance of {name} v{version} as of {realised_as_of:%Y-%m-%d}")
                    judged = REALISED[kind](read_predictions(newest["path"]), outcomes)
                    realised, customers_judged = judged.metrics, judged.n_customers
                    tables.update(judged.tables)

        drift_row = logged.iloc[-1]
        drift_as_of = drift_row["as_of"].to_pydatetime()
        current = read_predictions(drift_row["path"])
        feature_drift = score_drift = None
        if reference is not None and reference.evaluation_as_of is not None:
            self.progress(f"drift of {name} v{version} as of {drift_as_of:%Y-%m-%d}")
            profile = reference.profile
            if profile is None:
                notes.append("the training run has no reference profile (trained before monitoring): rebuilt from "
                             f"--data as of {reference.evaluation_as_of:%Y-%m-%d}")
                profile = reference_profile(self.features(reference.evaluation_as_of))
            inputs = getattr(getattr(model, "encoder_", None), "feature_names_", None)
            if inputs is not None:
                profile = {**profile, "columns": {k: v for k, v in profile["columns"].items() if k in set(inputs)}}
            tables["feature_psi"] = psi(profile, self.features(drift_as_of))
            feature_drift = drift_summary(tables["feature_psi"])
            if model is not None:
                scored = ScoringBundle({name: model}, {name: version}).score(self.features(reference.evaluation_as_of))
                outputs = [c for c in scored.columns if c != "customer_id" and c in current.columns]
                tables["score_psi"] = psi(reference_profile(scored[outputs]), current[outputs])
                score_drift = drift_summary(tables["score_psi"])

        metric = reference.metric if reference is not None else None
        training_metric = reference.metric_value if reference is not None else None
        realised_metric = (realised or {}).get(metric) if metric else None
        trained_as_of = reference.trained_as_of if reference is not None else None
        age = age_days(trained_as_of, self.as_of)
        status, reasons = model_status(realised_metric, training_metric, score_drift, age, self.max_age_days,
                                       metric or "metric")
        if feature_drift and feature_drift["drifting"] and not (score_drift and score_drift["drifting"]):
            notes.append(f"{feature_drift['drifting']} input feature(s) drifting, outputs not (PSI <= {PSI_DRIFTING}): "
                         + ", ".join(f"{t['feature']} {t['psi']:.2f}" for t in feature_drift["top"]))
        result = {
            "name": name, "version": str(version), "kind": kind, "monitor_as_of": self.as_of.isoformat(),
            "status": status, "flags": [r.split(":", 1)[0] for r in reasons], "reasons": reasons, "notes": notes,
            "trained_as_of": trained_as_of.isoformat() if trained_as_of else None, "age_days": age,
            "max_age_days": self.max_age_days, "horizon_days": horizon,
            "realised_as_of": realised_as_of.isoformat() if realised_as_of else None,
            "waiting_until": waiting_until.isoformat() if waiting_until else None,
            "realised": realised, "realised_customers": customers_judged, "metric": metric,
            "realised_metric": realised_metric, "training_metric": training_metric,
            "drift_as_of": drift_as_of.isoformat(), "customers": len(current),
            "feature_drift": feature_drift, "score_drift": score_drift,
            "training_run_id": reference.run_id if reference is not None else None,
            "predictions": [str(p) for p in logged["path"]],
        }
        return result_json(result), tables

    def _reference(self, name: str, version: str, notes: list[str]):
        """(TrainingReference, the registered model) of a version; None for what the registry cannot give."""
        if self.client is None:
            notes.append("no MLflow registry: drift and decay are not judged")
            return None, None
        try:
            reference = training_reference(self.client, name, version)
        except Exception as exc:  # noqa: BLE001 - a version missing from the registry is a note, not a crash
            notes.append(f"{name} v{version} not found in the registry ({type(exc).__name__}): drift and decay are "
                         "not judged")
            return None, None
        try:
            import mlflow

            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().model
        except Exception as exc:  # noqa: BLE001 - without the model, feature drift is still judged
            notes.append(f"{name} v{version} could not be loaded ({type(exc).__name__}): score drift not judged")
            model = None
        return reference, model


def run_monitor(validation, as_of: datetime, folder: Path, retention_days: int = DEFAULT_RETENTION_DAYS,
                max_age_days: float = DEFAULT_MAX_MODEL_AGE_DAYS, client=None, log_to_mlflow: bool = True,
                progress: Callable[[str], None] = lambda message: None) -> MonitorRun:
    """Prune the log to the retention, judge every model version in it as of `as_of`, log each result to MLflow
    (when `client` is given and `log_to_mlflow`), and write `monitoring.json` beside the log.

    `client`: `training.tracking.client()`, which also points MLflow's global tracking and registry URIs at the same
    store (models are loaded by `models:/NAME/VERSION`); None judges realised performance only.

    Raises MonitorInputError when the folder is missing or holds no prediction at or before `as_of`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MonitorInputError(f"no prediction log folder {folder}: score first (segments score or segments refresh "
                                "log their predictions there), or point --predictions / SEGMENTS_PREDICTION_LOG at it")
    pruned = prune_predictions(folder, as_of - timedelta(days=retention_days))
    index = prediction_index(folder)
    index = index[index["as_of"] <= pd.Timestamp(as_of)]
    if index.empty:
        raise MonitorInputError(f"no predictions as of {as_of:%Y-%m-%d} or earlier in {folder}"
                                + (f" ({len(pruned)} file(s) older than {retention_days} days pruned)" if pruned else "")
                                + ": run segments score or segments refresh first")
    monitor = Monitor(validation, as_of, max_age_days, client, progress)
    run = MonitorRun(as_of, folder, pruned, [])
    for (name, version), rows in index.groupby(["model_name", "version"], sort=True):
        result, tables = monitor.judge(name, str(version), rows)
        if client is not None and log_to_mlflow and result["training_run_id"] is not None:
            try:
                result["run_id"] = log_monitoring(client, result, tables)
            except Exception as exc:  # noqa: BLE001 - the result is still printed and written
                result["notes"].append(f"not logged to MLflow: {type(exc).__name__}: {exc}")
        result.setdefault("run_id", None)
        run.results.append(result)
        run.tables[(name, str(version))] = tables
    write_status(folder, run)
    return run


def write_status(folder: Path, run: MonitorRun) -> Path:
    """Merge the run's results into monitoring.json, written atomically: per model name and version, a result
    replaces the previous one unless that one is of a later monitor as_of (a backfill keeps the newer health);
    versions not monitored this time keep theirs."""
    path = Path(folder) / STATUS_FILE
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    models = previous.get("models", {})
    for result in run.results:
        kept = models.setdefault(result["name"], {})
        if str(kept.get(result["version"], {}).get("monitor_as_of", "")) <= result["monitor_as_of"]:
            kept[result["version"]] = result
    status = {"written_at": utc_now().isoformat(timespec="seconds"),
              "models": models}
    replace_atomically(path, lambda partial: partial.write_text(json.dumps(status, indent=1, default=str)))
    return path

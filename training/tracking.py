"""MLflow tracking and registry: the one module that logs runs, registers models and moves aliases.

Tracking defaults to a SQLite file in the working folder (`sqlite:///mlflow.db`); `MLFLOW_TRACKING_URI` overrides.
One experiment per model kind; one registered model per kind (per seed for look-alikes) with the aliases
`champion` and `challenger`. Models are logged from code (`training/pyfunc_model.py`) with their native files as
artifacts, so nothing of ours is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features.catalog import FEATURE_SET_VERSION
from features.time import naive_utc
from training.monitoring import MONITORING_EXPERIMENT, REFERENCE_ARTIFACT, monitoring_metrics
from training.packaging import MODEL_DISTRIBUTIONS, package_dirs, pinned

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CHAMPION, CHALLENGER = "champion", "challenger"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def primary_metric(kind: str) -> str | None:
    """The metric a challenger must beat the champion on (higher is better): the estimator's declaration."""
    from training.estimators import KINDS, model_class

    return model_class(kind).primary_metric if kind in KINDS else None


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite file in the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def client():
    """An MlflowClient on the configured tracking and registry URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def experiment_name(kind: str) -> str:
    return f"segments-{kind}"


def registered_name(kind: str, seed: str | None = None) -> str:
    """Registered model name: one per kind, one per seed segment for look-alikes."""
    return f"segments-{kind}" + (f"-{seed}" if seed else "")


LOOKALIKE_PREFIX = "segments-lookalike-"


def kind_of(name: str) -> tuple[str, str | None]:
    """(kind, seed) of a registered model name: segments-churn -> (churn, None), segments-lookalike-x -> (lookalike, x)."""
    if name.startswith(LOOKALIKE_PREFIX):
        return "lookalike", name[len(LOOKALIKE_PREFIX):]
    return name.removeprefix("segments-"), None


def git_commit() -> str:
    """The commit of the code that trained the model ('unknown' outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class TrainingRecord:
    """Everything one training run logs.

    Attributes:
        kind: churn, value, lookalike or clusters.
        model: the fitted model (has `save(dir)` and `score(features)`).
        config: its typed config (a dataclass).
        evaluation: an Evaluation (metrics, baselines, figures, tables).
        data: data window and dates: source, fingerprint, as_of (training cut-off), evaluation_as_of,
            training_as_of (list), horizon_days, ...
        sample_features: a few feature rows, for the signature and the input example.
        seed: the seed segment name (look-alikes only).
        backtest: churn and value: the model fitted for the out-of-time evaluation (`model` is its refit).
    """

    kind: str
    model: Any
    config: Any
    evaluation: Any
    data: dict[str, Any]
    sample_features: pd.DataFrame
    seed: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    backtest: Any = None

    @property
    def evaluation_key(self) -> str:
        """Identifies the out-of-time evaluation: two runs are comparable only when their keys are equal."""
        keyed = {k: self.data.get(k) for k in ("fingerprint", "evaluation_as_of", "horizon_days")}
        keyed["seed"] = self.data.get("seed_definition")
        return hashlib.sha1(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    name: str
    version: str
    aliases: tuple[str, ...]


def _flat_params(config: Any, data: dict[str, Any]) -> dict[str, str]:
    params = {f"config.{k}": v for k, v in dataclasses.asdict(config).items()}
    params.update({f"data.{k}": v for k, v in data.items()})
    params["feature_set_version"] = FEATURE_SET_VERSION
    return {k: json.dumps(v, default=str) if isinstance(v, list | tuple | dict) else str(v)
            for k, v in params.items()}


def plain_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Feature rows with plain numpy dtypes (MLflow's schema inference does not take pandas' nullable ones)."""
    out = frame.copy()
    for name in out.columns:
        dtype = str(out[name].dtype)
        if dtype == "boolean":
            out[name] = out[name].astype("float64")
        elif dtype in ("string", "str"):
            out[name] = out[name].astype("object").where(out[name].notna(), None)
    return out


def _log_evaluation(evaluation: Any) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in evaluation.metrics.items()})
    for baseline, metrics in evaluation.baselines.items():
        mlflow.log_metrics({f"baseline.{baseline}.{k}": float(v) for k, v in metrics.items()})
    for name, figure in evaluation.figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")
    for name, table in evaluation.tables.items():
        mlflow.log_text(table.to_csv(index=False), f"tables/{name}.csv")
    mlflow.log_dict({"metrics": evaluation.metrics, "baselines": evaluation.baselines,
                     "n_customers": evaluation.n_customers, "as_of": str(evaluation.as_of)}, "evaluation.json")


def _log_shap_plots(record: TrainingRecord) -> None:
    """SHAP plots of the registered model on the evaluation rows (plots/shap_*.png), for data scientists."""
    import mlflow

    from training.plots import shap_figures

    for name, figure in shap_figures(record.model, record.sample_features).items():
        mlflow.log_figure(figure, f"plots/{name}.png")


def log_training_run(record: TrainingRecord) -> LoggedModel:
    """Log one run (config, data window, metrics with baselines, plots, model) and register the model.

    The new version gets the `challenger` alias; the first version of a name also becomes `champion`.
    """
    import mlflow

    mlflow_client = client()
    mlflow.set_experiment(experiment_name(record.kind))
    name = registered_name(record.kind, record.seed)
    sample = plain_dtypes(record.sample_features.head(5).reset_index(drop=True))
    with mlflow.start_run(run_name=f"{record.kind}-{record.data.get('as_of', '')}") as run:
        mlflow.set_tags({"kind": record.kind, "git_commit": git_commit(), "feature_set_version": FEATURE_SET_VERSION,
                         "evaluation_key": record.evaluation_key, **record.extra_tags})
        mlflow.log_params(_flat_params(record.config, record.data))
        mlflow.log_dict(dataclasses.asdict(record.config), "config.json")
        _log_evaluation(record.evaluation)
        _log_shap_plots(record)
        from training.monitoring import reference_profile  # the training reference of `segments monitor`
        mlflow.log_dict(reference_profile(record.sample_features), "monitoring/reference_profile.json")
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            record.model.save(model_dir)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PYFUNC_CODE), artifacts={"model_dir": str(model_dir)},
                model_config={"kind": record.kind}, registered_model_name=name,
                signature=_signature(sample, record.model.predict(record.sample_features.head(5))),
                input_example=sample, pip_requirements=pinned(MODEL_DISTRIBUTIONS), code_paths=package_dirs())
    version = str(info.registered_model_version)
    aliases = [CHALLENGER]
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    if _alias_version(mlflow_client, name, CHAMPION) is None:
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
        aliases.append(CHAMPION)
    return LoggedModel(run.info.run_id, name, version, tuple(aliases))


def _signature(model_input: pd.DataFrame, model_output: pd.DataFrame):
    """The model signature; MLflow's hint about integer columns does not apply (counts are never missing)."""
    import warnings

    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Hint: Inferred schema contains integer column")
        return infer_signature(model_input, model_output)


def _alias_version(mlflow_client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str


def promote(name: str, kind: str) -> Promotion:
    """Move `challenger` to `champion` only if it beats the champion on the same out-of-time evaluation."""
    mlflow_client = client()
    challenger = _alias_version(mlflow_client, name, CHALLENGER)
    champion = _alias_version(mlflow_client, name, CHAMPION)
    if challenger is None:
        return Promotion(False, f"{name} has no challenger: train one first (segments train {kind} ...)")
    if champion is None or champion.version == challenger.version:
        if champion is None:
            mlflow_client.set_registered_model_alias(name, CHAMPION, challenger.version)
            return Promotion(True, f"{name} v{challenger.version} is champion (there was none)")
        return Promotion(False, f"{name} v{challenger.version} is already the champion")
    runs = {role: mlflow_client.get_run(v.run_id) for role, v in (("champion", champion), ("challenger", challenger))}
    keys = {role: run.data.tags.get("evaluation_key") for role, run in runs.items()}
    if keys["champion"] != keys["challenger"]:
        return Promotion(False, (
            f"not comparable: champion v{champion.version} and challenger v{challenger.version} were evaluated on "
            f"different data or dates (evaluation keys {keys['champion']} vs {keys['challenger']}); train the "
            "challenger with the same --data, --as-of and --horizon as the champion"))
    metric = primary_metric(kind)
    scores = {role: run.data.metrics.get(metric) for role, run in runs.items()}
    if scores["challenger"] is None or scores["champion"] is None:
        return Promotion(False, f"metric {metric} missing from a run: {scores}")
    if scores["challenger"] <= scores["champion"]:
        return Promotion(False, (
            f"challenger v{challenger.version} {metric}={scores['challenger']:.4f} does not beat champion "
            f"v{champion.version} {metric}={scores['champion']:.4f} on the same evaluation; champion kept"))
    make_champion(name, challenger.version)
    return Promotion(True, (
        f"challenger v{challenger.version} {metric}={scores['challenger']:.4f} beats champion "
        f"v{champion.version} {metric}={scores['champion']:.4f}: v{challenger.version} is now champion"))


def make_champion(name: str, version: str) -> None:
    """Serve `version`: it takes the `champion` alias and leaves `challenger`."""
    mlflow_client = client()
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    if (challenger := _alias_version(mlflow_client, name, CHALLENGER)) is not None and challenger.version == version:
        mlflow_client.delete_registered_model_alias(name, CHALLENGER)


def log_rejudging(run_id: str, champion_version: str | None, champion_value: float | None, metric: str,
                  ci: tuple[float, float] | None, decision: str) -> None:
    """Record a retrain's re-judging of the champion in the challenger's run (metrics and a decision tag)."""
    mlflow_client = client()
    if champion_value is not None:
        mlflow_client.log_metric(run_id, f"rejudge.champion_{metric}", champion_value)
        mlflow_client.log_metric(run_id, "rejudge.margin_ci_low", ci[0])
        mlflow_client.log_metric(run_id, "rejudge.margin_ci_high", ci[1])
        mlflow_client.set_tag(run_id, "rejudge.champion_version", champion_version)
    mlflow_client.set_tag(run_id, "rejudge.decision", decision)


def load_model(name: str, alias: str = CHAMPION):
    """Our model object behind `models:/name@alias`, with its registry version (no latest references)."""
    import mlflow

    mlflow_client = client()
    version = _alias_version(mlflow_client, name, alias)
    if version is None:
        raise LookupError(f"no model {name}@{alias} in the registry at {tracking_uri()}: run segments train first")
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    except ModuleNotFoundError as exc:  # its wrapper imports a module an older layout had (training.models)
        raise ValueError(f"{name} version {version.version} was registered by an older version of this project "
                         f"and cannot be loaded by this one ({exc}): train it again (segments retrain, or segments "
                         "train then segments promote)") from None
    return pyfunc.unwrap_python_model().model, str(version.version)


def registered_names(prefix: str = "segments-") -> list[str]:
    """Registered model names of this project."""
    return sorted(m.name for m in client().search_registered_models() if m.name.startswith(prefix))


# ---------------------------------------------------------------------------------------------------------------
# Monitoring's MLflow edges: what a version was trained on, one run per monitored version, the history of them


@dataclass(frozen=True)
class TrainingReference:
    """What a registered model version was trained and judged on (from its training run).

    `profile` is the logged reference profile of the evaluation features (None for runs logged before it existed);
    `metric` / `metric_value` the primary out-of-time metric; dates are naive UTC.
    """

    name: str
    version: str
    run_id: str
    kind: str
    trained_as_of: datetime | None
    evaluation_as_of: datetime | None
    horizon_days: int | None
    metric: str | None
    metric_value: float | None
    profile: dict | None


def training_reference(client, name: str, version: str) -> TrainingReference:
    """Read a registered version's training run: as_of dates, horizon, primary metric and reference profile."""
    from mlflow.exceptions import MlflowException

    model_version = client.get_model_version(name, str(version))
    run = client.get_run(model_version.run_id)
    params = run.data.params
    kind = run.data.tags.get("kind") or kind_of(name)[0]
    metric = primary_metric(kind)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            profile = json.loads(Path(client.download_artifacts(run.info.run_id, REFERENCE_ARTIFACT, tmp)).read_text())
        except (MlflowException, OSError):  # a run logged before monitoring existed: the caller rebuilds it
            profile = None
    horizon = params.get("data.horizon_days")
    return TrainingReference(
        name=name, version=str(version), run_id=run.info.run_id, kind=kind,
        trained_as_of=_param_time(params.get("data.as_of")),
        evaluation_as_of=_param_time(params.get("data.evaluation_as_of")),
        horizon_days=int(horizon) if horizon not in (None, "", "None") else None,
        metric=metric, metric_value=run.data.metrics.get(metric) if metric else None, profile=profile)


def _param_time(value: str | None) -> datetime | None:
    if value in (None, "", "None"):
        return None
    return naive_utc(datetime.fromisoformat(value))


def log_monitoring(client, result: dict, tables: dict[str, pd.DataFrame]) -> str:
    """Log one monitored model version: a run in the experiment `segments-monitoring` tagged with the registered
    name and version, and its health as tags of the model version (monitoring.status, .as_of, .run_id, .reasons,
    .<primary metric>; unless the version already carries a result of a later monitor as_of). Returns the run id.

    `result` is one entry of the monitor's result (serving.monitor: name, version, kind, monitor_as_of, status,
    realised metrics, drift summaries, ...); `tables` are logged as CSV (feature_psi, score_psi, lift, ...).
    """
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(MONITORING_EXPERIMENT)
    tags = {"registered_model": result["name"], "model_version": str(result["version"]), "kind": result["kind"],
            "monitor_as_of": result["monitor_as_of"], "status": result["status"],
            "realised_as_of": result.get("realised_as_of") or "", "drift_as_of": result.get("drift_as_of") or ""}
    run = client.create_run(experiment_id, run_name=f"{result['name']}-v{result['version']}-{result['monitor_as_of'][:10]}",
                            tags=tags)
    run_id = run.info.run_id
    for name, value in monitoring_metrics(result).items():
        client.log_metric(run_id, name, value)
    for name, table in tables.items():
        client.log_text(run_id, table.to_csv(index=False), f"monitoring/{name}.csv")
    client.log_text(run_id, json.dumps(result, indent=1, default=str), "monitoring/result.json")
    client.set_terminated(run_id)
    version_tags = {"monitoring.status": result["status"], "monitoring.as_of": result["monitor_as_of"],
                    "monitoring.run_id": run_id, "monitoring.reasons": "; ".join(result["reasons"]) or "none"}
    if result.get("realised_metric") is not None:
        version_tags[f"monitoring.{result['metric']}"] = f"{result['realised_metric']:.4f}"
    current = client.get_model_version(result["name"], str(result["version"])).tags.get("monitoring.as_of")
    if current is None or current <= result["monitor_as_of"]:  # a backfill at an older date keeps the newer health
        for key, value in version_tags.items():
            client.set_model_version_tag(result["name"], str(result["version"]), key, value[:5000])
    return run_id


def health_history(client, registered_name: str) -> pd.DataFrame:
    """The monitoring runs of a registered model over time, for a chart of its health.

    One row per model version and monitor as_of (the latest run when the same as_of was monitored twice), oldest
    first: monitor_as_of, version, status, realised_as_of, drift_as_of, run_id, then every metric of the run
    (realised.roc_auc, training.roc_auc, psi_score_max, features_drifting, ...). Empty without monitoring runs.
    """
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    columns = ["monitor_as_of", "version", "status", "realised_as_of", "drift_as_of", "run_id"]
    if experiment is None:
        return pd.DataFrame(columns=columns)
    rows = []
    page_token = None
    while True:
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.registered_model = '{registered_name}'",
                                  max_results=1000, page_token=page_token)
        for run in runs:
            tags = run.data.tags
            rows.append({"monitor_as_of": pd.Timestamp(tags.get("monitor_as_of")), "version": tags.get("model_version"),
                         "status": tags.get("status"),
                         "realised_as_of": pd.Timestamp(tags["realised_as_of"]) if tags.get("realised_as_of") else pd.NaT,
                         "drift_as_of": pd.Timestamp(tags["drift_as_of"]) if tags.get("drift_as_of") else pd.NaT,
                         "run_id": run.info.run_id, "_start": run.info.start_time, **run.data.metrics})
        page_token = runs.token
        if not page_token:
            break
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).sort_values(["monitor_as_of", "version", "_start"], kind="stable")
    table = table.drop_duplicates(["monitor_as_of", "version"], keep="last").drop(columns="_start")
    return table.reset_index(drop=True)

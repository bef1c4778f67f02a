"""Training runs: from validated tables and a cut-off date to fitted, evaluated models ready to log.

`as_of` is the training cut-off: nothing at or after it is read, labels included.

Churn and value follow DESIGN.md section 8, "backtest, then refit", in one run:
- backtest: the recipe (features, settings, early stopping, calibration) is fitted on snapshots whose outcome windows
  end by `as_of - horizon` and evaluated out of time on the snapshot `as_of - horizon` (its outcomes end at as_of).
  These are the figures every report and the promotion gate quote;
- refit: the same recipe fitted again one horizon later, on the freshest labelled snapshots (the newest one's
  outcome window ends at `as_of`). This model is registered and served. Registering the backtest model instead
  served customers as they were 3 to 6 months before the data ends: on CDNOW (as_of 1997-10-01, 90 days) its
  39-week ROC-AUC was 0.668 against 0.769 for the refit (bench/README.md).
Look-alike and cluster models are fitted on the feature table as of `as_of`. Uplift models learn from past
campaigns with a holdout whose windows end by `as_of`, backtested on the latest ones (training.estimators.uplift).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path

import yaml

from features.build import FeatureQuery
from features.errors import InsufficientDataError, NothingToLearnError
from features.validate import ValidationResult
from training.estimators import KINDS as MODEL_KINDS
from training.labels import DEFAULT_HORIZON_DAYS, Snapshot, data_fingerprint, make_snapshot
from training.sampling import DEFAULT_MAX_CUSTOMERS, draw_sample
from training.tracking import TrainingRecord

CONFIG_SECTIONS = ("churn", "value", "lookalike", "clusters", "uplift")


def load_config_file(path: Path | None) -> dict[str, dict]:
    """A YAML file with optional sections churn, value, lookalike, clusters, uplift: {field: value}."""
    if path is None:
        return {}
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the config file {path}: {exc}") from exc
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise ValueError(f"{path}: expected sections of fields, e.g. 'churn: {{num_leaves: 15}}'")
    unknown = set(values) - set(CONFIG_SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; use {', '.join(CONFIG_SECTIONS)}")
    return values


def make_config(config_cls, overrides: dict, **fixed):
    """A config dataclass from its defaults, a file's section and fixed CLI values; unknown fields are errors."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} fields {sorted(unknown)}; known: {', '.join(sorted(names))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in {**overrides, **fixed}.items() if k in names}
    return config_cls(**values)


class TrainingData:
    """Validated tables plus the snapshots the runs share, built once (churn and value use the same ones)."""

    def __init__(self, validation: ValidationResult, as_of: datetime, source: str,
                 progress: Callable[[str], None] = lambda message: None,
                 max_customers: int = DEFAULT_MAX_CUSTOMERS):
        self.as_of, self.source, self.progress = as_of, source, progress
        progress("counting customers")
        self.sample = draw_sample(validation, as_of, max_customers)
        if self.sample is not None:
            progress(f"training on a stratified sample of {self.sample.kept:,} of {self.sample.customers:,} customers")
        self.validation = validation if self.sample is None else self.sample.validation
        self.query = FeatureQuery(validation.columns)
        self._snapshots: dict[tuple[datetime, int], Snapshot] = {}

    @cached_property
    def fingerprint(self) -> str:
        return data_fingerprint(self.validation)

    def snapshot(self, as_of: datetime, horizon_days: int, with_outcomes: bool = True) -> Snapshot:
        key = (as_of, horizon_days if with_outcomes else 0)
        if key not in self._snapshots:
            self.progress(f"features as of {as_of:%Y-%m-%d}")
            self._snapshots[key] = make_snapshot(self.validation, as_of, horizon_days, self.query, with_outcomes)
        return self._snapshots[key]

    @cached_property
    def current_features(self):
        """The feature table as of the cut-off (no outcomes): what look-alikes and clusters are fitted on."""
        return self.snapshot(self.as_of, 0, with_outcomes=False).features

    def base_data(self, **extra) -> dict:
        sample = {} if self.sample is None else {"customer_sample": self.sample.summary()}
        return {"source": self.source, "fingerprint": self.fingerprint, "as_of": self.as_of, **sample, **extra}


def _snapshots(data: TrainingData, end_as_of: datetime, horizon_days: int, config) -> list[Snapshot]:
    """Training snapshots whose outcome windows end by `end_as_of` (`snapshot_dates`)."""
    from training.estimators.churn import snapshot_dates

    dates = snapshot_dates(end_as_of, horizon_days, config.n_snapshots, config.step_days)
    return [data.snapshot(d, horizon_days) for d in dates]


def _train_over_horizon(kind: str, config_cls, model_cls, evaluate, data: TrainingData, overrides: dict,
                        horizon_days: int) -> TrainingRecord:
    """Churn and value share one protocol: backtest the recipe out of time, then refit it on the freshest
    labelled snapshots (the module docstring). The record carries the refit model and the backtest's evaluation."""
    from training.estimators.churn import data_window

    config = make_config(config_cls, overrides, horizon_days=horizon_days)
    evaluation_as_of = data.as_of - timedelta(days=horizon_days)
    backtest_train = _snapshots(data, evaluation_as_of, horizon_days, config)
    evaluation = data.snapshot(evaluation_as_of, horizon_days)
    data.progress(f"backtest: fitting {kind} on snapshots up to {backtest_train[-1].as_of:%Y-%m-%d}")
    fallback: list[str] = []
    backtest, config = _fit_or_fall_back(model_cls, config, backtest_train, fallback)
    chosen = backtest.settings_from_backtest(evaluation)  # e.g. churn's candidate and weight; the refit uses them
    config = dataclasses.replace(config, **chosen)
    data.progress(f"backtest: evaluating {kind} out of time as of {evaluation_as_of:%Y-%m-%d}")
    result = evaluate(backtest, evaluation, backtest_train, data.validation)
    if chosen:
        result.notes.append(f"{', '.join(f'{k}={v}' for k, v in chosen.items())} chosen on this backtest's "
                            "evaluation snapshot (from a few values), so the figures above are slightly optimistic")
    served_train = _snapshots(data, data.as_of, horizon_days, config)
    data.progress(f"refitting {kind} on the freshest labelled snapshots (up to {served_train[-1].as_of:%Y-%m-%d})")
    model, config = _fit_or_fall_back(model_cls, config, served_train, fallback)
    result.tables["served_data_window"] = data_window(served_train, None, model, model_cls.target)
    if getattr(backtest, "candidates_", None) is not None:
        result.tables["candidates"] = backtest.candidates_
    served = model.served(backtest, fallback)
    if served:
        result.notes.insert(0, served["reason"])
    return TrainingRecord(kind, model, config, result, data.base_data(
        evaluation_as_of=evaluation.as_of, backtest_training_as_of=[s.as_of for s in backtest_train],
        training_as_of=[s.as_of for s in served_train], horizon_days=horizon_days), evaluation.features,
        backtest=backtest, extra_tags={f"served_{k}": v for k, v in served.items()})


def _fit_or_fall_back(model_cls, config, snapshots: list[Snapshot], fallback: list[str]):
    """(fitted model, its config). Too little data for the model: the kind's fallback (`fallback_settings`, e.g.
    churn's BG/NBD), with why appended to `fallback`; a kind without one refuses as before."""
    try:
        return model_cls(config).fit(snapshots), config
    except InsufficientDataError as exc:
        if not hasattr(model_cls, "fallback_settings"):
            raise
        config = dataclasses.replace(config, **model_cls.fallback_settings(exc))
        fallback.append(str(exc))
        return model_cls(config).fit(snapshots), config


def train_churn(data: TrainingData, overrides: dict, horizon_days: int) -> TrainingRecord:
    from training.estimators.churn import ChurnConfig, ChurnModel, evaluate_churn

    return _train_over_horizon("churn", ChurnConfig, ChurnModel, evaluate_churn, data, overrides, horizon_days)


def train_value(data: TrainingData, overrides: dict, horizon_days: int) -> TrainingRecord:
    from training.estimators.value import ValueConfig, ValueModel, evaluate_value

    return _train_over_horizon("value", ValueConfig, ValueModel, evaluate_value, data, overrides, horizon_days)


def train_lookalike(data: TrainingData, overrides: dict, seed_segment: str,
                    horizon_days: int = DEFAULT_HORIZON_DAYS) -> TrainingRecord:
    """A look-alike of a seed segment, fitted on the seed at the cut-off.

    Two evaluations, both logged: recall of held-out seed members (at as_of), and, for rule seeds, out of time
    (`evaluate_entries`): a look-alike of the seed as of `as_of - horizon` ranks the customers outside it then, and
    the share of its top 10% that entered the seed by as_of is the headline (tag and id-list seeds have no history
    of membership: recall only, with a note).
    """
    from training.estimators.lookalike import (
        LookalikeConfig,
        LookalikeModel,
        evaluate_entries,
        evaluate_lookalike,
    )
    from training.seeds import resolve_seed

    config = make_config(LookalikeConfig, overrides)
    features = data.current_features
    seed_ids, definition = resolve_seed(seed_segment, features, data.validation)
    name = definition["name"]
    data.progress(f"evaluating look-alike of '{name}' on held-out seed members")
    result = evaluate_lookalike(config, features, seed_ids, name, as_of=data.as_of, definition=definition)
    entries_as_of = data.as_of - timedelta(days=horizon_days)
    if definition["kind"] != "rule":
        result.notes.append(f"no out-of-time evaluation: a {definition['kind']} seed has no history of membership")
    else:
        data.progress(f"evaluating look-alike of '{name}' out of time: who joined the seed after "
                      f"{entries_as_of:%Y-%m-%d}")
        before = data.snapshot(entries_as_of, 0, with_outcomes=False).features
        try:
            seed_before, _ = resolve_seed(seed_segment, before, data.validation)
            metrics, baselines, reach = evaluate_entries(config, before, seed_before, seed_ids, name, definition)
        except InsufficientDataError as exc:
            result.notes.append(f"no out-of-time evaluation as of {entries_as_of:%Y-%m-%d}: {exc}")
        else:
            result.metrics.update(metrics)
            for baseline, values in baselines.items():
                result.baselines.setdefault(baseline, {}).update(values)
            result.tables["entries_reach"] = reach
    data.progress(f"fitting look-alike of '{name}' on all {len(seed_ids)} seed members")
    model = LookalikeModel(config).fit(features, seed_ids, name, definition)
    return TrainingRecord("lookalike", model, config, result, data.base_data(
        evaluation_as_of=data.as_of, entries_as_of=entries_as_of, horizon_days=horizon_days, seed=name,
        seed_definition=definition), features, seed=name)


def train_clusters(data: TrainingData, overrides: dict) -> TrainingRecord:
    from training.estimators.clusters import ClusterConfig, ClusterModel, evaluate_clusters

    config = make_config(ClusterConfig, overrides)
    features = data.current_features
    # Data without events or channels (e.g. CDNOW) lacks some default behaviours: cluster on the ones present.
    absent = [f for f in config.features if f not in features.columns]
    if absent:
        config = dataclasses.replace(config, features=tuple(f for f in config.features if f not in absent))
    data.progress("choosing k and fitting clusters")
    model = ClusterModel(config).fit(features)
    result = evaluate_clusters(config, features, as_of=data.as_of, model=model)
    return TrainingRecord("clusters", model, config, result, data.base_data(
        evaluation_as_of=data.as_of, features_not_in_data=absent), features)


def train_uplift(data: TrainingData, overrides: dict) -> TrainingRecord:
    """An uplift model from past campaigns: backtested on the latest `evaluation_campaigns` (fitted on the campaigns
    whose windows end before they start), then refitted on every labelled campaign (the served model)."""
    from training.estimators.uplift import (
        MIN_EVALUATION_ROWS_PER_ARM,
        UpliftConfig,
        UpliftModel,
        campaign_audiences,
        campaign_rows,
        check_arms,
        evaluate_uplift,
        sample_audience,
    )

    config = make_config(UpliftConfig, overrides)
    data.progress("finding past campaigns with a holdout")
    audience, conflicting = campaign_audiences(data.validation.con, data.as_of, config.window_days,
                                               config.lookback_days)
    starts = audience.drop_duplicates("campaign_id").set_index("campaign_id")["start"]
    if starts.empty:
        raise NothingToLearnError(
            f"no campaign with a holdout whose {config.window_days}-day window ends by {data.as_of:%Y-%m-%d} (and "
            f"that started in the {config.lookback_days} days before): uplift is learnt from campaigns whose "
            "audience has contacted customers (events with its campaign_id, e.g. email_sent) and held-out ones "
            "(campaign_holdout events)")
    if len(starts) <= config.evaluation_campaigns:
        raise InsufficientDataError(
            f"{len(starts)} campaigns with a holdout, and evaluation_campaigns={config.evaluation_campaigns} are held "
            "out for the out-of-time evaluation: at least one more is needed to train on")
    sampled = sample_audience(audience, config.max_rows, config.seed)
    rows = campaign_rows(sampled, lambda start: data.snapshot(start, config.window_days))
    evaluation_ids = list(starts.index[-config.evaluation_campaigns:])
    first_evaluated = starts[evaluation_ids].min()
    train_ids = [c for c, start in starts.items() if start + timedelta(days=config.window_days) <= first_evaluated]
    if not train_ids:
        raise InsufficientDataError(f"no campaign's window ends before the first evaluation campaign starts "
                                    f"({first_evaluated:%Y-%m-%d}): lower evaluation_campaigns or add campaigns")
    train_rows, evaluation_rows = rows.subset(train_ids), rows.subset(evaluation_ids)
    check_arms(evaluation_rows, MIN_EVALUATION_ROWS_PER_ARM, "evaluation campaigns")
    data.progress(f"backtest: fitting uplift on {len(train_ids)} campaigns, evaluating on {len(evaluation_ids)}")
    backtest = UpliftModel(config).fit(train_rows)
    result = evaluate_uplift(backtest, train_rows, evaluation_rows)
    if conflicting:
        result.notes.append(f"{conflicting} audience members both contacted and held out by one campaign were left "
                            "out")
    if len(sampled) < len(audience):
        result.notes.append(f"{len(sampled):,} of {len(audience):,} audience rows used (max_rows={config.max_rows:,}: "
                            "each row kept with the same probability)")
    data.progress(f"refitting uplift on all {len(starts)} campaigns")
    model = UpliftModel(config).fit(rows)
    return TrainingRecord("uplift", model, config, result, data.base_data(
        evaluation_as_of=result.as_of, horizon_days=config.window_days, training_campaigns=train_ids,
        evaluation_campaigns=evaluation_ids, served_campaigns=list(starts.index), audience_rows=len(audience),
        rows_used=len(sampled)), evaluation_rows.features, backtest=backtest)


def train_kind(kind: str, data: TrainingData, overrides: dict, horizon_days: int,
               seed_segment: str | None = None) -> TrainingRecord:
    """One training run of `kind` (a look-alike needs its seed segment)."""
    if kind not in TRAINERS:
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")
    record = TRAINERS[kind](data, overrides, horizon_days, seed_segment)
    if data.sample is not None:
        record.evaluation.notes.insert(0, data.sample.note)
        record.evaluation.tables["customer_sample"] = data.sample.strata
    return record


# The training protocol of each kind (estimators say how to fit; these say on which data and how it is judged).
TRAINERS = {
    "churn": lambda data, overrides, horizon, _: train_churn(data, overrides, horizon),
    "value": lambda data, overrides, horizon, _: train_value(data, overrides, horizon),
    "lookalike": lambda data, overrides, horizon, seed: train_lookalike(data, overrides, seed, horizon),
    "clusters": lambda data, overrides, _horizon, _seed: train_clusters(data, overrides),
    "uplift": lambda data, overrides, _horizon, _seed: train_uplift(data, overrides),
}

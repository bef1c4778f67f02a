"""Model commands for data scientists: train (with baselines, logged to MLflow), promote, retrain (re-judge the
champion on the newest window) and monitor (realised performance and drift of what was served)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from serving.cli.common import (
    DataOpt,
    HorizonOpt,
    MaxBadOpt,
    PredictionsOpt,
    console,
    date_option,
    fail,
    out,
    status_bar,
    validated,
)
from training.estimators import KINDS as MODEL_KINDS
from training.sampling import DEFAULT_MAX_CUSTOMERS

ConfigOpt = Annotated[Path | None, typer.Option(help="YAML with sections churn/value/lookalike/clusters/uplift.")]
MaxCustomersOpt = Annotated[int, typer.Option(
    min=0, help="Train on a stratified sample of at most this many customers (groups by recency x orders keep equal "
                "shares; recorded in the run); 0: every customer. The models score everyone.")]


def _config_and_data(config: Path | None, data: Path, max_bad_share: float):
    """What training commands start with: the config file's sections and the validated tables (clear errors for
    both). Our runs go to their own experiments, also under `mlflow run` (which sets MLFLOW_RUN_ID)."""
    from training.train import load_config_file

    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        overrides = load_config_file(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    return overrides, validated(data, max_bad_share)


def _train(shared, kind: str, overrides: dict, horizon: int, seed: str | None, optional: bool):
    """(the run or None, whether it was skipped), the reason printed when none: too little data or a bad setting
    (a failure), or, when `optional` (`train all`), data that holds nothing this kind learns from
    (NothingToLearnError: skipped, not a failure)."""
    from features.errors import InsufficientDataError, NothingToLearnError
    from training.train import train_kind

    try:
        return train_kind(kind, shared, overrides.get(kind, {}), horizon, seed), False
    except NothingToLearnError as exc:
        if not optional:
            raise typer.BadParameter(str(exc), param_hint="--data") from None
        console.print(f"[yellow]{kind} skipped:[/] {exc}")
        return None, True
    except (InsufficientDataError, ValueError) as exc:
        console.print(f"[bold red]{kind}{f' ({seed})' if seed else ''} not trained:[/] {exc}")
        return None, False


def train(
    kind: Annotated[str, typer.Argument(help="churn, value, lookalike, clusters, uplift or all (all skips uplift "
                                                  "when the data has no campaign with a holdout).")],
    data: DataOpt,
    as_of: Annotated[datetime, date_option(
        "--as-of", "Training cut-off: nothing at or after it is read, labels included. Churn and value are "
                   "evaluated out of time on the snapshot --as-of minus --horizon.")],
    horizon: HorizonOpt = 90,
    seed_segment: Annotated[list[str], typer.Option(
        help="Look-alike seed: a built-in name (best_members, loyalty_members), 'rule:<query>', 'tag:<tag>' "
             "or 'ids:<file>'. Repeat for several.")] = ["best_members"],  # noqa: B006
    config: ConfigOpt = None,
    max_bad_share: MaxBadOpt = 0.05,
    max_customers: MaxCustomersOpt = DEFAULT_MAX_CUSTOMERS,
) -> None:
    """Train, evaluate against baselines, log to MLflow and register models (new versions become challengers)."""
    from training.tracking import log_training_run, tracking_uri
    from training.train import TrainingData

    if kind not in (*MODEL_KINDS, "all"):
        raise typer.BadParameter(f"use one of {', '.join(MODEL_KINDS)} or all", param_hint="KIND")
    from training.estimators import model_class

    planned = [(one, seed) for one in (MODEL_KINDS if kind == "all" else [kind])
               for seed in (seed_segment if model_class(one).needs_seed else [None])]
    overrides, validation = _config_and_data(config, data, max_bad_share)
    runs, skipped = [], 0
    with status_bar() as say:
        shared = TrainingData(validation, as_of, str(data), progress=say, max_customers=max_customers)
        for one, seed in planned:
            record, was_skipped = _train(shared, one, overrides, horizon, seed, optional=kind == "all")
            skipped += was_skipped
            if record is not None:
                say(f"logging {one} to MLflow")
                runs.append((record, log_training_run(record)))
    _print_runs(runs)
    out.print(f"Tracking: {tracking_uri()}  (browse: mlflow ui --backend-store-uri {tracking_uri()})")
    if len(runs) + skipped < len(planned):
        raise typer.Exit(1)


def _print_runs(runs) -> None:
    from training.grading import grade_model

    table = Table("model", "version", "aliases", "metric", "model", "baselines", title="Trained (out-of-time metrics)")
    for record, logged in runs:
        ev = record.evaluation
        for i, metric in enumerate(m for m in type(record.model).headline_metrics if m in ev.metrics):
            baselines = ", ".join(f"{b} {m[metric]:.3f}" for b, m in ev.baselines.items() if metric in m)
            head = (logged.name, logged.version, ", ".join(logged.aliases)) if i == 0 else ("", "", "")
            table.add_row(*head, metric, f"{ev.metrics[metric]:.3f}", baselines or "-")
    out.print(table)
    for record, logged in runs:
        graded = grade_model(record.kind, record.evaluation.metrics, record.evaluation.baselines)
        out.print(f"{logged.name} v{logged.version}: {graded.sentence}")
        trained = record.data.get("training_as_of")
        if trained:
            out.print(f"  served model refitted on snapshots {trained[0]:%Y-%m-%d} .. {trained[-1]:%Y-%m-%d}; "
                      f"figures above are the backtest's, as of {record.data['evaluation_as_of']:%Y-%m-%d}")
        for note in record.evaluation.notes:
            out.print(f"  note: {note}")


def promote(
    kind: Annotated[str, typer.Argument(help="churn, value, clusters, uplift, or lookalike (with --seed-segment).")],
    seed_segment: Annotated[str | None, typer.Option(help="Seed name, for a look-alike model.")] = None,
) -> None:
    """Make the challenger the champion, only if it beats the champion on the same out-of-time evaluation."""
    from training.estimators import model_class
    from training.tracking import promote as promote_model
    from training.tracking import registered_name

    if kind not in MODEL_KINDS:
        raise typer.BadParameter(f"use {', '.join(MODEL_KINDS)}", param_hint="KIND")
    needs_seed = model_class(kind).needs_seed
    if needs_seed and not seed_segment:
        raise typer.BadParameter(f"a {kind} model needs --seed-segment NAME", param_hint="--seed-segment")
    result = promote_model(registered_name(kind, seed_segment if needs_seed else None), kind)
    (out if result.promoted else console).print(("[green]promoted:[/] " if result.promoted else "[yellow]kept:[/] ")
                                                + result.reason)
    if not result.promoted:
        raise typer.Exit(1)


def retrain(
    data: DataOpt,
    as_of: Annotated[datetime, date_option("--as-of", "The new training cut-off (as for segments train).")],
    kind: Annotated[list[str], typer.Option(help="churn and/or value (repeat); default both.")] = ["churn", "value"],  # noqa: B006
    horizon: HorizonOpt = 90,
    config: ConfigOpt = None,
    max_bad_share: MaxBadOpt = 0.05,
    max_customers: MaxCustomersOpt = DEFAULT_MAX_CUSTOMERS,
) -> None:
    """Train challengers, re-judge the served champions beside them on the newest window, promote only on a
    significant win, and say what happened in one table."""
    from training.retrain import RETRAINED_KINDS, rejudge
    from training.tracking import CHAMPION, load_model, log_rejudging, log_training_run, make_champion
    from training.tracking import registered_name as name_of
    from training.train import TrainingData

    unknown = sorted(set(kind) - set(RETRAINED_KINDS))
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: retrain takes {' and '.join(RETRAINED_KINDS)} (look-alikes "
                                 "and clusters: segments train, then segments promote)", param_hint="--kind")
    overrides, validation = _config_and_data(config, data, max_bad_share)
    results, failed = [], False
    with status_bar() as say:
        shared = TrainingData(validation, as_of, str(data), progress=say, max_customers=max_customers)
        for one in kind:
            name = name_of(one)
            try:
                champion, champion_version = load_model(name, CHAMPION)
            except LookupError:
                champion, champion_version = None, None
            record, _ = _train(shared, one, overrides, horizon, None, optional=False)
            if record is None:
                failed = True
                continue
            say(f"logging the {one} challenger to MLflow")
            logged = log_training_run(record)
            say(f"re-judging the {one} champion on the newest window")
            evaluation = shared.snapshot(record.data["evaluation_as_of"], horizon)
            result = rejudge(one, name, evaluation, record.backtest, logged.version, champion, champion_version)
            if result.promoted:
                make_champion(name, logged.version)
            log_rejudging(logged.run_id, champion_version, result.champion_value, result.metric, result.ci,
                          result.reason)
            results.append(result)
    _print_rejudgings(results)
    if failed:
        raise typer.Exit(1)


def _print_rejudgings(results) -> None:
    table = Table("model", "window (as of)", "metric", "champion", "challenger", "margin (95% interval)",
                  "decision", title="Retrain: champion and challenger on the newest window")
    for r in results:
        champion = f"v{r.champion_version} {r.champion_value:.4f}" if r.champion_version else "none"
        margin = (f"{r.margin:+.4f} ({r.ci[0]:+.4f} to {r.ci[1]:+.4f})" if r.ci else "-")
        decision = f"v{r.challenger_version} promoted" if r.promoted else f"v{r.champion_version} kept"
        table.add_row(r.name, f"{r.evaluation_as_of:%Y-%m-%d}", r.metric, champion,
                      f"v{r.challenger_version} {r.challenger_value:.4f}", margin, decision)
    out.print(table)
    for r in results:
        out.print(f"{r.name}: {r.reason}")


def monitor(
    data: DataOpt,
    as_of: Annotated[datetime, date_option(
        "--as-of", "The monitor's date: logged predictions whose horizon has ended by then are judged against "
                   "what customers did; retention and model age count back from it.")],
    predictions: PredictionsOpt = None,
    retention_days: Annotated[int, typer.Option(
        min=1, help="Delete logged predictions whose as_of is more than this many days before --as-of.")] = 400,
    max_age_days: Annotated[float | None, typer.Option(
        min=1, help="A model trained on data older than this many days before --as-of is stale (default: "
                    "SEGMENTS_MAX_MODEL_AGE_DAYS, else 120).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    max_bad_share: MaxBadOpt = 0.05,
) -> None:
    """Judge every model version in the prediction log: realised performance once its horizon has passed (churn:
    ROC-AUC, calibration error, top-decile lift; value: Spearman and MAE of spend) against its out-of-time metric at
    training, feature and score drift (PSI against the training reference: < 0.1 stable, 0.1-0.25 moderate,
    > 0.25 drifting) and age. Logs a run per version to the MLflow experiment segments-monitoring, tags the model
    version with its latest health, and writes monitoring.json beside the log for the service."""
    from serving.health import max_model_age_days
    from serving.monitor import MonitorInputError, run_monitor
    from serving.predictions import prediction_folder
    from training.tracking import client

    folder = prediction_folder(predictions)
    if not folder.is_dir():
        fail(f"no prediction log folder {folder}: segments score and segments refresh log their predictions there "
             "(--predictions, SEGMENTS_PREDICTION_LOG)")
    validation = validated(data, max_bad_share)
    limit = max_age_days if max_age_days is not None else max_model_age_days()
    try:
        with status_bar("Reading the prediction log") as say:
            run = run_monitor(validation, as_of, folder, retention_days, limit, client(), progress=say)
    except MonitorInputError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"as_of": as_of.isoformat(), "predictions": str(folder),
                          "pruned": [str(p) for p in run.pruned], "results": run.results}, indent=1, default=str))
        return
    out.print(monitor_table(run.results, as_of))
    for result in run.results:
        for line in [*result["reasons"], *result["notes"]]:
            out.print(f"  {result['name']} v{result['version']}: {escape(line)}")
    if run.pruned:
        out.print(f"{len(run.pruned)} logged file(s) older than {retention_days} days pruned")
    logged = sum(r["run_id"] is not None for r in run.results)
    out.print(f"{logged} of {len(run.results)} model version(s) logged to the MLflow experiment segments-monitoring; "
              f"latest status: {folder / 'monitoring.json'}")


STATUS_STYLE = {"ok": "green", "decaying": "bold red", "drifting": "bold yellow", "stale": "yellow"}


def monitor_table(results: list[dict], as_of: datetime) -> Table:
    """One row per model version: dates, horizon, customers, realised metrics, drift summary, status."""
    from training.monitoring import HEADLINE_METRICS as REALISED_METRICS

    table = Table("model", "version", "predicted as_of", "horizon", "customers", "realised (training)", "drift",
                  "status", title=f"Model monitoring as of {as_of:%Y-%m-%d}")
    table.columns[0].no_wrap = True
    for r in results:
        dates = (r["realised_as_of"] or r["drift_as_of"])[:10]
        if r["realised_as_of"] and r["realised_as_of"] != r["drift_as_of"]:
            dates += f" (drift: {r['drift_as_of'][:10]})"
        if r["realised"]:
            realised = ", ".join(_metric_text(r, m) for m in REALISED_METRICS.get(r["kind"], ()) if m in r["realised"])
        elif r["waiting_until"]:
            realised = f"waiting until {r['waiting_until'][:10]}"
        else:
            realised = "-"
        style = STATUS_STYLE.get(r["status"], "")
        table.add_row(r["name"], r["version"], dates, f"{r['horizon_days']}d" if r["horizon_days"] else "-",
                      f"{r['realised_customers'] or r['customers']:,}", realised, _drift_text(r),
                      f"[{style}]{r['status']}[/]" if style else r["status"])
    return table


def _metric_text(result: dict, metric: str) -> str:
    text = f"{metric} {result['realised'][metric]:.3f}" if result["realised"][metric] is not None else f"{metric} -"
    if metric == result["metric"] and result["training_metric"] is not None:
        text += f" ({result['training_metric']:.3f})"
    return text


def _drift_text(result: dict) -> str:
    features, scores = result["feature_drift"], result["score_drift"]
    if features is None and scores is None:
        return "-"
    parts = []
    if scores is not None:
        parts.append(f"scores PSI {scores['max_psi']:.2f}" if scores["max_psi"] is not None else "scores -")
    if features is not None:
        parts.append(f"features {features['drifting']} drifting, {features['moderate']} moderate")
        parts += [f"{t['feature']} {t['psi']:.2f}" for t in features["top"]]
    return "; ".join(parts)


COMMANDS = {"train": train, "promote": promote, "retrain": retrain, "monitor": monitor}

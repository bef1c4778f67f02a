"""The `segments` console command: the data and training commands of `training.cli` plus batch scoring and
serving (build, serve, score). It lives in serving/ because imports flow features <- training <- serving and these
commands need all three."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from training.cli import (
    AsOfOpt,
    DataOpt,
    MaxBadOpt,
    app,
    configure_runtime,
    console,
    fail_cleanly,
    load_validated_for,
    out,
    parse_as_of,
    step,
)

PredictionsOpt = Annotated[Path | None, typer.Option(
    "--predictions", help="Prediction log folder: every score is kept there with its model version for segments "
                          "monitor (default: SEGMENTS_PREDICTION_LOG, else ./predictions).")]


def keep_predictions(folder: Path, scores, bundle, features, as_of: datetime) -> None:
    """Log the scores to the prediction log. A failure is a warning: the command's own output is already written
    and must never be lost or changed because of the log."""
    from serving.predictions import log_predictions

    try:
        paths = log_predictions(folder, scores, bundle, features, as_of)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the scores stand; say so and go on
        console.print(f"[yellow]warning:[/] predictions not logged to {folder}: {type(exc).__name__}: {exc}")
        return
    console.print(f"Predictions of {len(paths)} model(s) logged to {folder} (segments monitor reads them)")


@app.command()
def score(
    data: DataOpt,
    as_of: AsOfOpt,
    out_file: Annotated[Path, typer.Option("--out", help="Parquet file to write the scores to.")],
    alias: Annotated[str, typer.Option(help="Registry alias of the models to use.")] = "champion",
    max_bad_share: MaxBadOpt = 0.05,
    explain: Annotated[bool, typer.Option(help="Add each customer's top reasons per model (needs --serve-dir).")] = False,
    serve_dir: Annotated[Path | None, typer.Option(help="Score with the models pinned in this serve folder "
                                                        "(segments build), exactly as the service does.")] = None,
    segments_file: Annotated[Path | None, typer.Option(
        "--segments", help="With --serve-dir: the segments YAML to evaluate (default: SEGMENTS_DEFINITIONS, as "
                           "the service, else the shipped one).")] = None,
    db: Annotated[str | None, typer.Option(
        help="With --serve-dir: membership store whose last refresh gives the `in top N%` thresholds (default: "
             "SEGMENTS_DB_URL; without a store or a refresh in it they are fitted on the scored customers).")]
    = None,
    predictions: PredictionsOpt = None,
) -> None:
    """Score every customer known at --as-of with the registered champion models (or a serve folder's, with the
    customers' segments as the service evaluates them)."""
    from features.pipeline import build_feature_table
    from serving.predictions import prediction_folder
    from training.scoring import ScoringBundle

    if explain or serve_dir is not None:
        definitions = segments_file or os.environ.get("SEGMENTS_DEFINITIONS")
        return score_served(data, as_of, out_file, serve_dir, explain, max_bad_share,
                            Path(definitions) if definitions else None, db or os.environ.get("SEGMENTS_DB_URL"),
                            prediction_folder(predictions))
    with fail_cleanly():
        with step("Validating"):
            validation = load_validated_for(data, max_bad_share)
        with step(f"Building features as of {as_of:%Y-%m-%d}"):
            features = build_feature_table(validation, as_of).table
    try:
        with step("Loading champion models"):
            bundle = ScoringBundle.from_registry(alias)
    except (LookupError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    with step(f"Scoring {len(features):,} customers"):
        scores = bundle.score(features)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        scores.to_parquet(out_file, index=False)
    out.print("Models: " + ", ".join(f"{n} v{v}" for n, v in sorted(bundle.versions.items())))
    out.print(f"[green]{len(scores):,} customers x {scores.shape[1] - 1} scores[/] -> {out_file}")
    keep_predictions(prediction_folder(predictions), scores, bundle, features, as_of)


# ---------------------------------------------------------------------------------------------------------------
# Serving: `build` (the serve folder and BentoML store), `serve` (the HTTP service), and batch scoring through the
# service's own code (`score --serve-dir/--explain`).

ServeDirOpt = Annotated[Path, typer.Option("--serve-dir", help="The serve folder (manifest, feature table, typical "
                                                               "values); SEGMENTS_SERVE_DIR for the service.")]


def use_bentoml_home() -> Path:
    """BENTOML_HOME (the model store), by default ./bentoml; set before BentoML is imported."""
    home = Path(os.environ.get("BENTOML_HOME") or "bentoml").resolve()
    os.environ["BENTOML_HOME"] = str(home)
    return home


@app.command()
def build(
    data: DataOpt,
    as_of: Annotated[datetime, typer.Option(
        "--as-of", parser=parse_as_of, metavar="YYYY-MM-DD",
        help="As_of of the feature table the service looks ids up in (and of the typical values).")],
    serve_dir: ServeDirOpt = Path("serve"),
    alias: Annotated[str, typer.Option(help="Registry alias of the models to serve.")] = "champion",
    max_bad_share: MaxBadOpt = 0.05,
    bento: Annotated[bool, typer.Option(help="Also package code, serve folder and models as the bento "
                                              "'segments' (offline), to run with `bentoml serve segments:latest`.")]
    = False,
) -> None:
    """Prepare serving: import the champion models at their pinned versions from MLflow into the BentoML store,
    and write the serve folder (feature table as of --as-of, typical values, manifest)."""
    home = use_bentoml_home()
    from serving.state import build as build_state

    with fail_cleanly(), step("Validating"):
        validation = load_validated_for(data, max_bad_share)
    try:
        with step("Importing models and building the serve folder"):
            manifest = build_state(validation, as_of, serve_dir, alias)
    except LookupError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    table = Table("model", "version", "BentoML tag", title=f"Serve folder {serve_dir} (as of {as_of:%Y-%m-%d})")
    for name, entry in sorted(manifest["models"].items()):
        table.add_row(name, entry["version"], entry["bento_tag"])
    out.print(table)
    out.print(f"{manifest['customers']:,} customers in the feature table; BentoML store: {home}")
    out.print(f"Serve it: segments serve --serve-dir {serve_dir}")
    if bento:
        from serving.bento import build_bento

        with step("Building the bento"):
            tag = build_bento(serve_dir, manifest)
        out.print(f"Bento {tag} in {home}: BENTOML_HOME={home} bentoml serve {tag}")


@app.command()
def serve(
    serve_dir: ServeDirOpt = Path("serve"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    segments_file: Annotated[Path | None, typer.Option("--segments", help="Segments YAML the event path evaluates "
                                                                          "(default: the shipped one).")] = None,
    db: Annotated[str | None, typer.Option(help="Membership store URL (default: SEGMENTS_DB_URL, else "
                                                "./segments.db).")] = None,
    reports: Annotated[Path, typer.Option(help="Folder of reports (segments report) served read-only at "
                                               "/reports/.")] = Path("reports"),
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Prediction log folder whose monitoring.json (segments monitor) /v1/info and /v1/ready "
                              "report (default: SEGMENTS_PREDICTION_LOG, else ./predictions).")] = None,
) -> None:
    """Start the scoring service (bentoml serve serving.service:SegmentsService). SEGMENTS_API_KEY, when set, is
    required on every request; SEGMENTS_MAX_BATCH caps the batch size (default 10,000). Posted events update the
    membership store that `segments refresh` writes. /v1/ready and /v1/info warn about models older than
    SEGMENTS_MAX_MODEL_AGE_DAYS (default 120) and those the last `segments monitor` found decaying or drifting."""
    import sys

    use_bentoml_home()
    if not (serve_dir / "manifest.json").exists():
        console.print(f"[bold red]error:[/] no manifest.json in {serve_dir}: run segments build first")
        raise typer.Exit(2)
    os.environ["SEGMENTS_SERVE_DIR"] = str(serve_dir.resolve())
    if db or not os.environ.get("SEGMENTS_DB_URL"):  # a relative SQLite path must not depend on the worker's cwd
        os.environ["SEGMENTS_DB_URL"] = db or f"sqlite:///{Path('segments.db').resolve()}"
    if segments_file is not None:
        os.environ["SEGMENTS_DEFINITIONS"] = str(segments_file.resolve())
    os.environ["SEGMENTS_REPORTS_DIR"] = str(reports.resolve())
    from serving.predictions import ENV_FOLDER, prediction_folder

    os.environ[ENV_FOLDER] = str(prediction_folder(predictions).resolve())  # not relative to a worker's cwd
    bentoml = Path(sys.executable).with_name("bentoml")
    os.execv(str(bentoml), [str(bentoml), "serve", "serving.service:SegmentsService", "--host", host,
                            "--port", str(port)])


def score_served(data: Path, as_of: datetime, out_file: Path, serve_dir: Path | None, explain: bool,
                 max_bad_share: float, segments_file: Path | None = None, db: str | None = None,
                 predictions: Path | None = None) -> None:
    """Batch scoring with a serve folder's models and typical values, through the service's scoring code; the
    segments are the service's too (same definitions, same evaluation, thresholds of the store's last refresh)."""
    use_bentoml_home()
    from features.pipeline import build_feature_table
    from serving.scoring import batch_frame
    from serving.state import load_state

    if serve_dir is None:
        console.print("[bold red]error:[/] --explain needs --serve-dir (the typical values the reasons compare "
                      "with are fitted by segments build)")
        raise typer.Exit(2)
    with step("Loading the served models"):
        state = load_state(serve_dir)
    if not state.ready:
        console.print("[bold red]error:[/] " + "; ".join(state.problems))
        raise typer.Exit(2)
    with fail_cleanly():
        with step("Validating"):
            validation = load_validated_for(data, max_bad_share)
        with step(f"Building features as of {as_of:%Y-%m-%d}"):
            features = build_feature_table(validation, as_of).table
    rules = batch_segment_rules(segments_file, features, state.scorer.bundle, db)
    with step(f"Scoring {len(features):,} customers" + (" with reasons" if explain else "")):
        scores = batch_frame(state.scorer, features, explain, rules)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        scores.to_parquet(out_file, index=False)
    out.print("Models: " + ", ".join(f"{n} v{v}" for n, v in sorted(state.versions.items())))
    out.print(f"Segments: {len(rules.evaluated.names())} evaluated; `in top N%` thresholds: "
              f"{rules.thresholds_from}")
    for name, reason in sorted(rules.not_evaluated.items()):
        out.print(f"  not evaluated: {name}: {escape(reason)}")
    out.print(f"[green]{len(scores):,} customers scored[/] -> {out_file}")
    if predictions is not None:
        keep_predictions(predictions, scores, state.scorer.bundle, features, as_of)


def batch_segment_rules(segments_file: Path | None, features, bundle, db: str | None):
    """The service's segment rules for batch scoring: thresholds of the store's last refresh when `db` is given and
    has one, else fitted on the scored population (the batch sees all of it, as a refresh does)."""
    from features.segments import SegmentDefinitionError
    from serving.membership import SegmentRules, segment_values, served_segments
    from serving.segments_cli import _store

    try:
        usable, skipped = served_segments(segments_file, features, bundle)
    except SegmentDefinitionError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    last = None
    if db:
        store = _store(db)
        try:
            last = store.last_refresh()
        finally:
            store.close()
    if last is not None:
        return SegmentRules.of_refresh(usable, skipped, last)
    with step("Fitting the `in top N%` thresholds on the scored customers (no refresh in a store)"):
        return SegmentRules.fitted(usable, skipped, segment_values(features, bundle))


# ---------------------------------------------------------------------------------------------------------------
# Monitoring: the prediction log judged against what happened, and drift against the training reference.


@app.command()
def monitor(
    data: DataOpt,
    as_of: Annotated[datetime, typer.Option(
        "--as-of", parser=parse_as_of, metavar="YYYY-MM-DD",
        help="The monitor's date: logged predictions whose horizon has ended by then are judged against what "
             "customers did; retention and model age count back from it.")],
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
        console.print(f"[bold red]error:[/] no prediction log folder {folder}: segments score and segments refresh "
                      "log their predictions there (--predictions, SEGMENTS_PREDICTION_LOG)")
        raise typer.Exit(2)
    with fail_cleanly(), step("Validating"):
        validation = load_validated_for(data, max_bad_share)
    limit = max_age_days if max_age_days is not None else max_model_age_days()
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("Reading the prediction log", total=None)
            run = run_monitor(validation, as_of, folder, retention_days, limit, client(),
                              progress=lambda message: bar.update(task, description=message))
    except MonitorInputError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
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
    from training.monitoring import HEADLINE_METRICS

    table = Table("model", "version", "predicted as_of", "horizon", "customers", "realised (training)", "drift",
                  "status", title=f"Model monitoring as of {as_of:%Y-%m-%d}")
    table.columns[0].no_wrap = True
    for r in results:
        dates = (r["realised_as_of"] or r["drift_as_of"])[:10]
        if r["realised_as_of"] and r["realised_as_of"] != r["drift_as_of"]:
            dates += f" (drift: {r['drift_as_of'][:10]})"
        if r["realised"]:
            realised = ", ".join(_metric_text(r, m) for m in HEADLINE_METRICS.get(r["kind"], ()) if m in r["realised"])
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


import serving.segments_cli  # noqa: F401 - registers the segment commands on the same app


def main() -> None:
    configure_runtime()
    app()


if __name__ == "__main__":
    main()

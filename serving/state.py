"""What the service serves, built once by `segments build` and loaded once per worker.

A serve folder (SEGMENTS_SERVE_DIR, default ./serve) holds:
- manifest.json: feature-set version, as_of, the contract columns the features were built from, and per registered
  model its registry version, the BentoML model tag it was imported as (BentoML store: BENTOML_HOME) and its
  training as_of (the age the service reports is counted from it);
- features.parquet: the feature table as of as_of (what ids are looked up in), with its metadata;
- typical.json: the population's typical value of every feature at as_of (reasons compare against it);
- history.duckdb: the clean tables sorted by customer (reports read them);
- history.sqlite: the same rows indexed by customer, from which posted events rebuild a customer's features.

Models are imported from the MLflow registry at their pinned versions (`models:/NAME/VERSION`) into the BentoML model
store, so the service never reads "latest" from MLflow and runs without the tracking server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from features.build import FeatureQuery, to_feature_frame
from features.catalog import FEATURE_SET_VERSION, FEATURES_BY_NAME, Feature
from features.pipeline import feature_batches, read_feature_rows, read_feature_table, write_feature_batches
from serving.explain.reasons import typical_values
from serving.segments.events import HISTORY_FILE, RUNNER_HISTORY_FILE, write_history
from training.bundle import ScoringBundle

MANIFEST, FEATURES_FILE, TYPICAL_FILE = "manifest.json", "features.parquet", "typical.json"
DEFAULT_SERVE_DIR = "serve"
DEFAULT_BENTOML_HOME = "bentoml"


def serve_dir() -> Path:
    """SEGMENTS_SERVE_DIR, else ./serve."""
    return Path(os.environ.get("SEGMENTS_SERVE_DIR") or DEFAULT_SERVE_DIR)


def bento_name(registered: str) -> str:
    """A BentoML model name for a registered model name (lower case; BentoML's allowed characters)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in registered.lower())


def build(validation, as_of: datetime, out_dir: Path, alias: str = "champion", progress=lambda message: None) -> dict:
    """Import the `alias` models into the BentoML store at their pinned versions, write the feature table as of
    `as_of` and the population's typical values, and the manifest tying them together. Returns the manifest."""
    import bentoml

    from training.tracking import _alias_version, client, registered_names

    mlflow_client = client()
    models = {}
    for name in registered_names():
        version = _alias_version(mlflow_client, name, alias)
        if version is None:
            continue
        progress(f"importing {name} v{version.version} into the BentoML store")
        imported = bentoml.mlflow.import_model(
            bento_name(name), f"models:/{name}/{version.version}",
            labels={"registered_name": name, "registry_version": str(version.version)},
            metadata={"feature_set_version": version.tags.get("feature_set_version", FEATURE_SET_VERSION)})
        run = mlflow_client.get_run(version.run_id)
        models[name] = {"version": str(version.version), "bento_tag": str(imported.tag),
                        "trained_as_of": trained_as_of(run), "quality": quality_of(name, run),
                        **served_candidate(run)}
    if not models:
        raise LookupError(f"no model has the alias '{alias}': train models first (segments train all ...)")
    progress(f"building features as of {as_of:%Y-%m-%d}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Batch by batch, then the typical values a column at a time from the file: the population is never held whole.
    table, customers = write_feature_batches(feature_batches(validation, as_of), as_of, out_dir / FEATURES_FILE)
    (out_dir / TYPICAL_FILE).write_text(json.dumps(typical_values_of_file(table), indent=1, sort_keys=True))
    query = FeatureQuery(validation.columns)
    progress("writing the customers' history (the event path rebuilds features from it)")
    write_history(validation, query.columns, out_dir)
    manifest = {"feature_set_version": FEATURE_SET_VERSION, "as_of": as_of.isoformat(), "alias": alias,
                "columns": query.columns, "features": [f.name for f in query.features],
                "models": models, "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "customers": customers}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def typical_values_of_file(path: Path) -> dict:
    """`typical_values` of a feature table file, read one column at a time."""
    typical = {}
    for name in pq.read_schema(path).names:
        typical.update(typical_values(read_feature_rows(path, columns=[name])))
    return typical


def trained_as_of(run) -> str | None:
    """The training cut-off (`segments train --as-of`) of a model's MLflow run, ISO format; the service measures
    the model's age from it (serving.health). None when the run does not record it."""
    value = run.data.params.get("data.as_of")
    return datetime.fromisoformat(value).isoformat() if value else None


def served_candidate(run) -> dict[str, str]:
    """Which candidate a model version serves and why (churn: the model or a textbook baseline, a small
    programme's fallback included), as /v1/info shows it; empty for kinds without candidates."""
    tags = run.data.tags
    return {"served_candidate": tags["served_candidate"], "served_reason": tags.get("served_reason", "")} \
        if "served_candidate" in tags else {}


def quality_of(name: str, run) -> dict:
    """The model's grade, absolute and against its best baseline (training.grading), as /v1/info shows it."""
    from dataclasses import asdict

    from training.grading import grade_model, split_logged_metrics
    from training.tracking import kind_of

    metrics, baselines = split_logged_metrics(run.data.metrics)
    return asdict(grade_model(kind_of(name)[0], metrics, baselines))


def load_bento_model(tag: str):
    """Our model object from a BentoML-stored MLflow model (loaded from code, no pickles of ours)."""
    import bentoml

    return bentoml.mlflow.load_model(tag).unwrap_python_model().model


@dataclass
class ServingState:
    """Everything a worker serves, or why it cannot (`problems`, reported by readiness)."""

    directory: Path
    manifest: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None
    typical: dict = field(default_factory=dict)
    scorer: object | None = None
    query: FeatureQuery | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems and self.scorer is not None

    @property
    def as_of(self) -> datetime:
        return datetime.fromisoformat(self.manifest["as_of"])

    @property
    def versions(self) -> dict[str, str]:
        return {name: m["version"] for name, m in self.manifest.get("models", {}).items()}

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest.get("features", []))

    @property
    def features(self) -> list[Feature]:
        """The catalog's definitions of the served features."""
        return [FEATURES_BY_NAME[name] for name in self.feature_names]


def served_frame(table: pd.DataFrame, features: list[Feature]) -> pd.DataFrame:
    """Rows of a serve folder's feature table as the service holds them: catalog dtypes, looked up by customer_id."""
    return to_feature_frame(table, features).set_index("customer_id", drop=False)


def served_rows(state: ServingState, rows=None, columns: list[str] | None = None) -> pd.DataFrame:
    """Some rows (positions, in that order; None: all) of the serve folder's feature table file, as `served_frame`
    gives them, or with `columns` those columns as stored: a sample or a column without loading the table."""
    table = read_feature_rows(state.directory / FEATURES_FILE, rows, columns)
    return table if columns is not None else served_frame(table, state.features)


def load_state(directory: Path, rows: int | None = None) -> ServingState:
    """Load the serve folder, never raising: what is missing, incompatible or damaged (a truncated file, broken
    JSON) goes to `problems`, so a worker answers 503 with the reason instead of crashing. `rows`: only the first
    rows of the feature table (a process that never looks ids up needs its columns, not a copy of every customer)."""
    state = ServingState(Path(directory))
    try:
        _load(state, rows)
    except Exception as exc:  # noqa: BLE001 - a damaged serve folder is a readiness problem, never a crash
        state.scorer = None
        where, exc = (f"{exc.name}, ", exc.__cause__) if isinstance(exc, _DamagedFile) else ("", exc)
        state.problems.append(f"the serve folder {state.directory.resolve()} cannot be read ({where}"
                              f"{type(exc).__name__}: {str(exc)[:300]}): rebuild it (segments build)")
    return state


class _DamagedFile(Exception):
    """A file of the serve folder that cannot be read (its error is the cause), so the problem names the file."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _read(state: ServingState, name: str, reader):
    """`reader` of the serve folder's file `name`; a failure becomes a _DamagedFile naming it."""
    try:
        return reader(state.directory / name)
    except Exception as exc:
        raise _DamagedFile(name) from exc


def _load(state: ServingState, rows: int | None) -> None:
    from serving.scorer import Scorer

    path = state.directory / MANIFEST
    if not path.exists():
        state.problems.append(f"no {MANIFEST} in {state.directory.resolve()}: run segments build first")
        return
    state.manifest = _read(state, MANIFEST, lambda p: json.loads(p.read_text()))
    if state.manifest.get("feature_set_version") != FEATURE_SET_VERSION:
        state.problems.append(f"the serve folder was built for feature set {state.manifest.get('feature_set_version')}"
                              f", this code builds {FEATURE_SET_VERSION}: rebuild it (segments build)")
        return
    bundle = ScoringBundle()
    for name, entry in state.manifest["models"].items():
        try:
            model = load_bento_model(entry["bento_tag"])
        except Exception as exc:  # noqa: BLE001 - any failure to load is a readiness problem, reported by name
            state.problems.append(f"model {name} v{entry['version']} ({entry['bento_tag']}) cannot be loaded from "
                                  f"the BentoML store: {type(exc).__name__}: {exc}")
            continue
        version = getattr(model, "feature_set_version_", None)
        if version != FEATURE_SET_VERSION:
            state.problems.append(f"model {name} v{entry['version']} was trained on feature set {version}, this code "
                                  f"builds {FEATURE_SET_VERSION}: retrain it")
            continue
        bundle.models[name], bundle.versions[name] = model, entry["version"]
    table, meta = _read(state, FEATURES_FILE, lambda p: read_feature_table(p, rows))
    if meta.get("feature_set_version") != FEATURE_SET_VERSION:
        state.problems.append(f"{FEATURES_FILE} has feature set {meta.get('feature_set_version')}: rebuild it")
    state.table = served_frame(table, state.features)
    state.typical = _read(state, TYPICAL_FILE, lambda p: json.loads(p.read_text()))
    for name in (HISTORY_FILE, RUNNER_HISTORY_FILE):
        if not (state.directory / name).exists():
            state.problems.append(f"no {name} in {state.directory.resolve()} (posted events and reports read the "
                                  f"customers' history): rebuild the serve folder (segments build)")
    state.query = FeatureQuery(state.manifest["columns"], state.features)
    _ = state.query.sql  # compiled once, at start
    if bundle.models:
        state.scorer = Scorer(bundle, state.typical)

"""The prediction log: every batch score and refresh keeps what each model predicted, with the model's version.

A folder of Parquet files (SEGMENTS_PREDICTION_LOG, default ./predictions: beside the membership store
./segments.db), one per (registered model, version, as_of): customer_id, the model's output columns
(churn_probability and churn_band; expected_purchases and expected_spend; lookalike_<seed>_score and _percentile;
cluster_id and cluster_name), model_name, version, kind, as_of, horizon_days (None for models without one),
written_at. The same identity is in the file's metadata, so the log is indexed without reading the rows. Scoring the
same version at the same as_of again replaces its file (written to a temporary file and renamed: a reader never
sees half a file). `prune_predictions` deletes files whose as_of is older than the retention; `segments monitor`
reads the log (`serving.monitor`) and writes its latest result beside it (`monitoring.json`).
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.time import utc_now
from training.bundle import ScoringBundle
from training.tracking import kind_of

ENV_FOLDER = "SEGMENTS_PREDICTION_LOG"
DEFAULT_FOLDER = "predictions"
DEFAULT_RETENTION_DAYS = 400
META_KEY = b"segments_prediction"
STATUS_FILE = "monitoring.json"  # the latest monitor result, read by the service (serving.health)
INDEX_COLUMNS = ["path", "model_name", "version", "kind", "as_of", "horizon_days", "written_at", "rows"]


def prediction_folder(option: Path | None = None) -> Path:
    """The prediction log folder: the option when given, else SEGMENTS_PREDICTION_LOG, else ./predictions."""
    if option is not None:
        return Path(option)
    return Path(os.environ.get(ENV_FOLDER) or DEFAULT_FOLDER)


def model_outputs(bundle: ScoringBundle, features: pd.DataFrame) -> dict[str, list[str]]:
    """Registered name -> the score columns that model contributes to `bundle.score` (found by scoring one row with
    that model alone, so the names are exactly the bundle's, look-alike seeds included)."""
    head = features.head(1)
    outputs = {}
    for name, model in bundle.models.items():
        alone = ScoringBundle({name: model}, {name: bundle.versions[name]})
        outputs[name] = [c for c in alone.score(head).columns if c != "customer_id"]
    return outputs


def horizon_of(model) -> int | None:
    """The model's outcome horizon in days (churn and value), None for models without one."""
    horizon = getattr(getattr(model, "config", None), "horizon_days", None)
    return int(horizon) if horizon is not None else None


def log_predictions(folder: Path, scores: pd.DataFrame | Path, bundle: ScoringBundle, features: pd.DataFrame,
                    as_of: datetime, written_at: datetime | None = None) -> list[Path]:
    """Write one file per model of `bundle` from `scores` (customer_id plus the bundle's score columns, as
    `ScoringBundle.score` or a refresh returns them; other columns are ignored), a frame or a Parquet file of them
    (a batch score's output, read a batch at a time: the population's scores are never held). `features`: a feature
    row, which names each model's outputs. Returns the files written."""
    from features.pipeline import read_frame_batches, write_frame_batches

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written_at = written_at or utc_now()
    paths = []
    for name, columns in model_outputs(bundle, features).items():
        version = str(bundle.versions[name])
        horizon = horizon_of(bundle.models[name])
        identity = {"model_name": name, "version": version, "kind": kind_of(name)[0], "as_of": as_of.isoformat(),
                    "horizon_days": horizon, "written_at": written_at.isoformat(timespec="seconds")}
        wanted = ["customer_id", *columns]
        batches = [scores[wanted]] if isinstance(scores, pd.DataFrame) else read_frame_batches(scores, columns=wanted)
        path = folder / file_name(name, version, as_of)
        write_frame_batches((_log_rows(batch, identity, as_of, written_at) for batch in batches), path,
                            {META_KEY.decode(): json.dumps(identity)})
        paths.append(path)
    return paths


def _log_rows(scores: pd.DataFrame, identity: dict, as_of: datetime, written_at: datetime) -> pd.DataFrame:
    """One model's scores as rows of the log: its columns, then the model's identity on every row."""
    return scores.reset_index(drop=True).assign(
        customer_id=lambda f: f["customer_id"].astype(str), model_name=identity["model_name"],
        version=identity["version"], kind=identity["kind"], as_of=pd.Timestamp(as_of),
        horizon_days=pd.array([identity["horizon_days"]] * len(scores), dtype="Int64"),
        written_at=pd.Timestamp(written_at))


def file_name(name: str, version: str, as_of: datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
    return f"{safe}__v{version}__{as_of:%Y-%m-%dT%H%M%S}.parquet"


def prediction_index(folder: Path) -> pd.DataFrame:
    """One row per logged file: path, model_name, version, kind, as_of, horizon_days, written_at, rows (from the
    files' metadata; files that are not prediction logs are skipped). Oldest as_of first."""
    rows = []
    for path in sorted(Path(folder).glob("*.parquet")):
        try:
            schema = pq.read_schema(path)
            identity = json.loads((schema.metadata or {})[META_KEY])
            rows.append({"path": path, **{k: identity[k] for k in INDEX_COLUMNS[1:-1]},
                         "rows": pq.ParquetFile(path).metadata.num_rows})
        except (KeyError, ValueError, OSError, pa.ArrowException):
            continue
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    index["as_of"] = pd.to_datetime(index["as_of"])
    index["written_at"] = pd.to_datetime(index["written_at"])
    index["horizon_days"] = index["horizon_days"].astype("Int64")
    return index.sort_values(["as_of", "model_name", "version"], kind="stable").reset_index(drop=True)


def read_predictions(path: Path) -> pd.DataFrame:
    """The rows of one logged file."""
    return pd.read_parquet(path)


def prune_predictions(folder: Path, before: datetime) -> list[Path]:
    """Delete the logged files whose as_of is before `before` (the retention cut-off). Returns the deleted paths."""
    index = prediction_index(folder)
    old = index[index["as_of"] < pd.Timestamp(before)]
    for path in old["path"]:
        Path(path).unlink(missing_ok=True)
    return list(old["path"])

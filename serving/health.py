"""Health of the served models, for /v1/info and /v1/ready: age, staleness and the latest monitoring result.

- Age is measured from a model's training as_of (the cut-off of the data it learned from: `--as-of` of `segments
  train`, recorded per model in the serve folder's manifest by `segments build`) to now (UTC), in whole days. Not
  from the registration time: a model trained today on last year's data is a year behind its customers.
- Stale: older than SEGMENTS_MAX_MODEL_AGE_DAYS (default 120 days: a 90-day horizon plus a month to retrain).
- Monitoring: the latest result of `segments monitor` for the served version (monitoring.json in the prediction log
  folder, SEGMENTS_PREDICTION_LOG, default ./predictions), re-read when the file changes. A version the monitor
  found decaying or drifting is reported with its reasons.

Neither makes the service unready: a stale or drifting model still scores as well as it did yesterday, so readiness
stays 200 and lists them in `warnings` (an outage because a model aged one more day would help nobody); /v1/info
carries the details under each model's `health`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from features.time import naive_utc, utc_now

ENV_MAX_AGE = "SEGMENTS_MAX_MODEL_AGE_DAYS"
DEFAULT_MAX_MODEL_AGE_DAYS = 120  # `segments monitor` judges staleness with the same default
PREDICTIONS_ENV, PREDICTIONS_DEFAULT, STATUS_FILE = "SEGMENTS_PREDICTION_LOG", "predictions", "monitoring.json"
MONITORING_FIELDS = ("status", "reasons", "monitor_as_of", "realised_as_of", "waiting_until", "drift_as_of", "metric",
                     "training_metric", "realised_metric", "score_drift", "feature_drift", "run_id")

_cache: dict[Path, tuple[float, dict]] = {}


def max_model_age_days() -> float:
    """SEGMENTS_MAX_MODEL_AGE_DAYS (a positive number of days), else the default."""
    raw = os.environ.get(ENV_MAX_AGE)
    try:
        value = float(raw) if raw else DEFAULT_MAX_MODEL_AGE_DAYS
    except ValueError:
        return DEFAULT_MAX_MODEL_AGE_DAYS
    return value if value > 0 else DEFAULT_MAX_MODEL_AGE_DAYS


def status_path() -> Path:
    return Path(os.environ.get(PREDICTIONS_ENV) or PREDICTIONS_DEFAULT) / STATUS_FILE


def read_status(path: Path | None = None) -> dict:
    """The monitor's latest result ({} when there is none or it cannot be read), re-read only when it changed."""
    path = Path(path or status_path())
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return {}
    cached = _cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    _cache[path] = (mtime, status)
    return status


def served_health(models: dict, status: dict, now: datetime | None = None,
                  max_age_days: float = DEFAULT_MAX_MODEL_AGE_DAYS) -> tuple[dict[str, dict], list[str]]:
    """(health per served model, warnings).

    In: `models` as in the manifest (name -> version, trained_as_of, ...); `status` as `read_status` returns it.
    Out per model: trained_as_of, age_days, max_age_days, stale (None when the training as_of is unknown) and
    monitoring (the latest monitor result of that version, or None). Warnings are sentences, one per problem.
    """
    now = now or utc_now()
    monitored = status.get("models", {})
    health, warnings = {}, []
    for name, entry in sorted(models.items()):
        version = str(entry.get("version"))
        trained = entry.get("trained_as_of")
        age = stale = None
        if trained:
            trained_at = naive_utc(datetime.fromisoformat(trained))
            age = (now - trained_at).days
            stale = age > max_age_days
            if stale:
                warnings.append(f"{name} v{version} is stale: trained on data up to {trained_at:%Y-%m-%d}, {age} days "
                                f"ago (limit {max_age_days:g} days, {ENV_MAX_AGE}); retrain it")
        else:
            warnings.append(f"{name} v{version}: training date unknown (the serve folder predates it): rebuild the "
                            f"serve folder (segments build) to track the model's age")
        result = monitored.get(name, {}).get(version)
        monitoring = {k: result.get(k) for k in MONITORING_FIELDS} if result else None
        if monitoring and monitoring["status"] in ("decaying", "drifting"):
            reasons = [r for r in monitoring.get("reasons") or [] if not r.startswith("stale")]
            warnings.append(f"{name} v{version} is {monitoring['status']} (segments monitor as of "
                            f"{str(monitoring['monitor_as_of'])[:10]}): " + "; ".join(reasons))
        health[name] = {"trained_as_of": trained, "age_days": age, "max_age_days": max_age_days, "stale": stale,
                        "monitoring": monitoring}
    return health, warnings

"""Rendering report pages: the Jinja2 environment over `serving/reports/templates/`, the facts every page shares
(navigation, data as-of, models and versions, generated time) and writing the files.

Every page template extends `base.html.j2`, which lays out the navigation (relative links, so a folder of reports
works from disk, from a zip and behind the service alike), the inline CSS and the footer. A page is one
self-contained file: no script, no stylesheet, font or image is fetched; charts are inline SVG (`plots.svg`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

import jinja2

from features.time import utc_now

TEMPLATES = Path(__file__).parent / "templates"
INDEX_FILE = "index.html"


@dataclass(frozen=True)
class NavLink:
    """One entry of the navigation: its words, the report file it opens (relative) and its section."""

    label: str
    href: str
    section: str = "Reports"  # "Overview", "Segments", "Models", ...


@dataclass(frozen=True)
class ModelVersion:
    """A model a report is built from: its kind (churn, value, lookalike, clusters), registered name and version."""

    kind: str
    name: str
    version: str


@dataclass(frozen=True)
class Site:
    """What every page of one set of reports shares: the navigation and the footer's facts."""

    links: tuple[NavLink, ...] = ()
    data_as_of: datetime | None = None
    models: tuple[ModelVersion, ...] = ()
    feature_set_version: str | None = None
    features_as_of: datetime | None = None  # the serve folder's feature table (profiles, scores) may lag the refresh
    generated_at: datetime = field(default_factory=lambda: utc_now())

    def sections(self) -> list[tuple[str, list[NavLink]]]:
        """The links grouped by section, in first-appearance order (the navigation's rows)."""
        grouped: dict[str, list[NavLink]] = {}
        for link in self.links:
            grouped.setdefault(link.section, []).append(link)
        return list(grouped.items())


def site_models(manifest: dict) -> tuple[ModelVersion, ...]:
    """The footer's models: every model of a serve folder's manifest, by registered name, with its kind ("churn",
    "lookalike (best_members)") and pinned version. The one list every page's footer shows."""
    from training.tracking import kind_of

    models = []
    for name, entry in sorted(manifest.get("models", {}).items()):
        kind, seed = kind_of(name)
        models.append(ModelVersion(f"{kind} ({seed})" if seed else kind, name, str(entry["version"])))
    return tuple(models)


def segment_file(name: str) -> str:
    """The file name of a segment's page (segment names are lower case letters, digits and _)."""
    return f"segment-{name}.html"


# ---------------------------------------------------------------------------------------------------------------
# Formatting filters: one way to write a number on every page


def number(value, digits: int = 0) -> str:
    """12,345 (digits after the point when given); an en dash for a missing value."""
    if _missing(value):
        return "–"
    return f"{float(value):,.{digits}f}" if digits else f"{round(float(value)):,}"


def percent(value, digits: int = 0) -> str:
    """A fraction as a percentage: 0.123 -> 12%."""
    if _missing(value):
        return "–"
    return f"{float(value) * 100:.{digits}f}%"


def signed_percent(value, digits: int = 0) -> str:
    """A fractional change with its sign: 0.12 -> +12%, -0.05 -> −5%."""
    if _missing(value):
        return "–"
    text = f"{abs(float(value)) * 100:.{digits}f}%"
    return ("−" if float(value) < 0 else "+") + text


def signed_number(value, digits: int = 0) -> str:
    """A change in a count or amount with its sign: +12, −3, ±0."""
    if _missing(value):
        return "–"
    if float(value) == 0:
        return "±0"
    return ("−" if float(value) < 0 else "+") + number(abs(float(value)), digits)


def day(value) -> str:
    """A date as 2026-07-01 (an en dash when missing)."""
    if _missing(value):
        return "–"
    return f"{value:%Y-%m-%d}"


def moment(value) -> str:
    """A date and time as 2026-07-01 14:05 UTC."""
    if _missing(value):
        return "–"
    return f"{value:%Y-%m-%d %H:%M} UTC"


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return value is pd.NaT or value is pd.NA
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


FILTERS = {"number": number, "percent": percent, "signed_percent": signed_percent, "signed_number": signed_number,
           "day": day, "moment": moment}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared environment: HTML-escaped, strict about undefined names (a typo fails the build, not the page)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    return env


def render_page(template_name: str, **context) -> str:
    """Render `template_name` (e.g. "overview.html.j2") with `context`.

    Templates extending base.html.j2 read `title` (str), `site` (Site; an empty one when not given) and
    `page_file` (this page's file name, to mark it in the navigation; optional).
    """
    context.setdefault("site", Site())
    context.setdefault("page_file", "")
    return environment().get_template(template_name).render(**context)


def write_page(out_dir: Path, file_name: str, html: str) -> Path:
    """Write one page into `out_dir` (created if missing) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name
    path.write_text(html, encoding="utf-8")
    return path


def as_datetime(value) -> datetime | None:
    """A date, datetime or pandas Timestamp as a naive datetime (None stays None)."""
    if value is None:
        return None
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return datetime.fromisoformat(str(value))

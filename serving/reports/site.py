"""Write every report page into one folder: the overview (index.html), one page per segment, the model pages.

Each page is one self-contained HTML file (inline CSS and SVG, no script, nothing fetched), linked to the others by
relative links, so the folder opens from disk, travels as an attachment and is served as is by the service.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from features.segments import SegmentSet, load_segments
from serving.reports import model_pages, segment_pages
from serving.reports.render import (
    INDEX_FILE,
    NavLink,
    Site,
    as_datetime,
    render_page,
    segment_file,
    site_models,
    write_page,
)


class ReportError(RuntimeError):
    """The reports cannot be built; the message says what is missing and how to get it."""


def write_reports(out_dir: Path, serve_dir: Path, store, segments_file: Path | None = None, *, state=None,
                  progress: Callable[[str], None] = lambda message: None,
                  generated_at: datetime | None = None) -> list[Path]:
    """Write the overview, a page per segment and the model pages into `out_dir`; return the files written.

    Args:
        serve_dir: the serve folder (`segments build`): its feature table (profiles), its purchase history (lift),
            its manifest (models and versions) and, through the BentoML store, the served models.
        store: the membership store (serving.segments.store.SegmentStore). An empty store still gives every page, saying
            there was no refresh yet.
        segments_file: the segment definitions (default: the shipped file).
        state: a loaded `serving.state.ServingState` of `serve_dir` (the service passes its own); loaded when None.

    Raises ReportError when the serve folder has no manifest (not built; `check_serve_dir`).
    """
    from serving.state import FEATURES_FILE

    out_dir = Path(out_dir)
    state = state if state is not None else _load_state(serve_dir, progress)
    definitions = load_segments(segments_file)
    usable, skipped = _resolve(definitions, state)
    with tempfile.TemporaryDirectory(prefix="segments-history-") as spill:
        history = segment_pages.purchase_history(serve_dir, Path(spill))
        try:
            progress("reading sizes, trends and holdout lift from the membership store")
            data = segment_pages.overview(store, definitions, usable, skipped, history)
            progress("measuring campaigns against their holdouts")
            campaigns = segment_pages.campaign_results(store, definitions, history)
        finally:
            if history is not None:
                history.con.close()
    model_links = _model_links(state)
    site = _site(data, state, model_links, generated_at)
    links = {s.name: segment_file(s.name) for s in data.summaries}
    written = [_write_overview(out_dir, site, data, links, model_links, _models_note(state))]
    evaluated = [s.name for s in data.summaries if s.evaluated]
    try:
        progress("profiling every segment's members against the feature table")
        profiled = segment_pages.segment_profiles(store, data, state.directory / FEATURES_FILE,
                                                  {**definitions.segments, **usable.segments})
        for summary in data.summaries:
            progress(f"segment {summary.name}")
            detail = segment_pages.segment_detail(store, summary, data, profiled.get(summary.name), evaluated,
                                                 _features_as_of(state))
            detail.campaigns = campaigns.get(summary.name, [])
            html = render_page("segment.html.j2", title=f"Segment {summary.name}", site=site,
                               page_file=links[summary.name], detail=detail, segment_links=links,
                               no_refresh=segment_pages.NO_REFRESH)
            written.append(write_page(out_dir, links[summary.name], html))
    finally:
        data.close()  # the memberships' working database
    written += _write_model_pages(out_dir, site, state, progress)
    return written


def check_serve_dir(serve_dir: Path) -> None:
    """Raise ReportError when `serve_dir` is not a built serve folder (no manifest), saying how to build one."""
    from serving.state import MANIFEST

    if not (Path(serve_dir) / MANIFEST).exists():
        raise ReportError(f"no serve folder at {Path(serve_dir).resolve()} (no {MANIFEST}): build it first with "
                          f"`segments build --data DIR --as-of DATE`, or point --serve-dir to it")


def _load_state(serve_dir: Path, progress):
    from serving.state import load_state

    check_serve_dir(serve_dir)
    progress(f"loading the served models from {serve_dir}")
    return load_state(Path(serve_dir), rows=1)  # profiles and samples read the feature table file itself


def _resolve(definitions: SegmentSet, state) -> tuple[SegmentSet, dict[str, str]]:
    """The definitions checked against what the service serves (as the event path does): cluster segments
    expanded with the served cluster model, segments over missing model outputs skipped with the reason."""
    from serving.segments.refresh import run_fields, segment_values

    bundle = state.scorer.bundle if state.scorer is not None else None
    sample = state.table.head(1).reset_index(drop=True) if state.table is not None else None
    if sample is None or sample.empty:
        from features.segments import Fields

        return definitions.resolve(Fields.of([], [], None))
    return definitions.resolve(run_fields(segment_values(sample, bundle), bundle))


def _features_as_of(state) -> datetime | None:
    return as_datetime(state.manifest["as_of"]) if state.manifest.get("as_of") else None


def _site(data, state, model_links: list[NavLink], generated_at: datetime | None) -> Site:
    links = (NavLink("Overview", INDEX_FILE, "Overview"),
             *(NavLink(s.name, segment_file(s.name), "Segments") for s in data.summaries),
             *model_links)
    extra = {"generated_at": generated_at} if generated_at is not None else {}
    return Site(links=links, data_as_of=data.last_as_of, models=site_models(state.manifest),
                feature_set_version=state.manifest.get("feature_set_version"),
                features_as_of=_features_as_of(state), **extra)


def _write_overview(out_dir: Path, site: Site, data, links: dict[str, str], model_links: list[NavLink],
                    models_note: str) -> Path:
    html = render_page("overview.html.j2", title="Segments overview", site=site, page_file=INDEX_FILE, data=data,
                       segment_links=links, model_links=model_links, models_note=models_note,
                       no_refresh=segment_pages.NO_REFRESH)
    return write_page(out_dir, INDEX_FILE, html)


# ---------------------------------------------------------------------------------------------------------------
# The model pages (serving/reports/model_pages.py)


def _models_note(state) -> str:
    """Why there are no model pages (when there are none)."""
    if state.scorer is None:
        return "the serve folder's models cannot be loaded: " + ("; ".join(state.problems) or "none is served")
    return "no champion model is served"


def _model_links(state) -> list[NavLink]:
    """The model pages' links, known before any page is rendered (every page's navigation lists them)."""
    return [] if state.scorer is None else list(model_pages.model_links(state.manifest))


def _write_model_pages(out_dir: Path, site: Site, state, progress) -> list[Path]:
    """The model pages (serving.reports.model_pages), with the shared navigation and footer."""
    if state.scorer is None:
        progress(f"no model pages: no served model can be loaded ({'; '.join(state.problems) or 'none served'})")
        return []
    progress("model pages: quality, calibration and lift, what unlocks each score, cluster personas")
    return list(model_pages.model_pages(state.directory, out_dir, site=site, state=state))

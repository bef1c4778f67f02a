"""The marketer reports command: one self-contained HTML page per segment and per served model, and an overview."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import (
    DbOpt,
    SegmentsFileOpt,
    fail,
    open_store,
    out,
    segment_definitions,
    use_bentoml_home,
)


def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the HTML reports to (created).")],
    serve_dir: Annotated[Path | None, typer.Option(
        "--serve-dir", help="The serve folder (segments build): models, feature table, purchase history "
                            "(default: SEGMENTS_SERVE_DIR, else ./serve).")] = None,
    db: DbOpt = None,
    segments_file: SegmentsFileOpt = None,
) -> None:
    """Write the marketer reports: an overview of every segment, a page per segment and per served model; one
    self-contained HTML file each (charts inside, works offline). Open index.html."""
    from serving.reports.site import ReportError, check_serve_dir, write_reports
    from serving.state import serve_dir as default_serve_dir

    folder = serve_dir if serve_dir is not None else default_serve_dir()
    try:
        check_serve_dir(folder)  # before the store is opened: a wrong --serve-dir leaves no segments.db behind
    except ReportError as exc:
        fail(str(exc))
    use_bentoml_home()
    definitions_file = segments_file if segments_file is None else segments_file.resolve()
    segment_definitions(definitions_file)  # a bad file stops here, with every problem listed
    store = open_store(db)
    if store.current.last_refresh() is None:
        out.print("[yellow]note:[/] no refresh yet: run segments refresh; the pages say so")
    try:
        written = write_reports(out_dir, folder, store, definitions_file, progress=lambda m: out.print(f"  {m}"))
    finally:
        store.close()
    out.print(f"[green]{len(written)} report pages written[/] to {out_dir}")
    print((out_dir / "index.html").resolve())


COMMANDS = {"report": report}

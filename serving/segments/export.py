"""Segment exports: what a campaign tool loads. A segment's current members, or its entries and exits since a
moment, as CSV, Parquet or JSON lines, read in chunks from one consistent read of the store and written chunk by
chunk, so memory stays the same at 1,000 or 1,000,000 members.

An audience leaves out the segment's holdout (the deterministic draw `features.segments.in_holdout`, the customers
campaign lift is measured against) unless asked; with it, each row says whether the customer is held out. Rows can
carry chosen fields: the values the customer was last evaluated on (scores, bands, features the segment's
conditions read; `customer_state`). Every export names the store position it reflects (the last change logged and
the last refresh at the moment of the read): the same position gives the same rows.

Used by `segments export` (a file) and `GET /v1/segments/{name}/export` (a streamed answer).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Self, get_args

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from features.segments import SegmentSet, in_holdout
from features.time import naive_utc, utc_now

ExportFormat = Literal["csv", "parquet", "jsonl"]
FORMATS = get_args(ExportFormat)
MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "jsonl": "application/x-ndjson"}
CHUNK_ROWS = 20_000  # rows read, converted and written at a time: what bounds the export's memory


class ExportError(ValueError):
    """An export that cannot be made as asked (unknown segment, format or field); the message says what to change."""


@dataclass(frozen=True)
class ExportRequest:
    """What to export. `changes_since` None: the current members; else the entries and exits logged at or after it."""

    segment: str
    holdout_percent: float
    include_holdout: bool = False
    changes_since: datetime | None = None
    fields: tuple[str, ...] = ()


@dataclass
class ExportPosition:
    """The store position an export reflects, and what it holds (filled in as it is written)."""

    segment: str
    log_seq: int
    refresh_id: int | None
    refresh_as_of: str | None
    exported_at: str
    holdout_percent: float
    include_holdout: bool
    changes_since: str | None
    fields: list[str] = field(default_factory=list)
    rows: int = 0
    held_out: int = 0

    def headers(self) -> dict[str, str]:
        """HTTP headers naming the position (the row counts are only known once the stream has ended)."""
        return {"X-Segments-Log-Seq": str(self.log_seq), "X-Segments-Refresh-Id": str(self.refresh_id or ""),
                "X-Segments-Holdout": "included" if self.include_holdout else f"excluded ({self.holdout_percent:g}%)"}


def holdout_percent_of(definitions: SegmentSet, name: str) -> float:
    """The holdout share of segment `name` in the definitions (a cluster segment `<spec>_<id>` takes its spec's)."""
    segment = definitions.definition_of(name)
    if segment is None:
        raise ExportError(f"no segment named {name!r} in the segment definitions ({definitions.source or 'shipped'}); "
                          f"defined: {', '.join(definitions.names())}")
    return segment.holdout_percent


class SegmentExport:
    """One export: open it (`with`), read `position`, then iterate `batches()` (Arrow record batches)."""

    def __init__(self, store, request: ExportRequest, chunk_rows: int = CHUNK_ROWS):
        self.store, self.request, self.chunk_rows = store, request, chunk_rows
        self._read = None
        self.conn = None
        self.position: ExportPosition | None = None
        self.schema: pa.Schema | None = None

    def __enter__(self) -> Self:
        self._read = self.store.consistent_read()
        self.conn = self._read.__enter__()
        try:
            self._start()
        except BaseException:
            self._read.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        """Read the position and the first chunk (the fields' types are read from its values), in the export's
        read."""
        refresh = self.store.current.last_refresh(self.conn)
        r = self.request
        self.position = ExportPosition(
            segment=r.segment, log_seq=self.store.changes.last_seq(self.conn),
            refresh_id=refresh["id"] if refresh else None,
            refresh_as_of=refresh["as_of"].isoformat() if refresh else None, exported_at=utc_now().isoformat(),
            holdout_percent=r.holdout_percent, include_holdout=r.include_holdout,
            changes_since=r.changes_since.isoformat() if r.changes_since else None, fields=list(r.fields))
        self._pages = self._member_pages() if r.changes_since is None else self._change_pages()
        self._first = next(self._pages, None)
        states = [] if self._first is None else [v for v in self._first["_states"] if v]
        self.schema = self._schema(_field_types(r.fields, states) if r.fields else {})

    def __exit__(self, *exc) -> None:
        self._read.__exit__(*exc)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows in chunks of at most `chunk_rows` (current members by customer_id; changes in log order)."""
        for columns in itertools.chain([self._first] if self._first is not None else [], self._pages):
            columns = self._with_fields(columns)
            held = in_holdout(columns["customer_id"], self.request.segment, self.request.holdout_percent)
            self.position.held_out += int(held.sum())
            if self.request.include_holdout:
                columns["in_holdout"] = held.tolist()
            else:
                columns = {name: [v for v, out in zip(values, held, strict=True) if not out]
                           for name, values in columns.items()}
            batch = pa.RecordBatch.from_pydict(columns, schema=self.schema)
            self.position.rows += batch.num_rows
            yield batch

    def _schema(self, field_types: dict[str, pa.DataType]) -> pa.Schema:
        if self.request.changes_since is None:
            base = [("customer_id", pa.string()), ("entered_at", pa.timestamp("us"))]
        else:
            base = [("seq", pa.int64()), ("customer_id", pa.string()), ("change", pa.string()),
                    ("at", pa.timestamp("us")), ("source", pa.string()), ("cause", pa.string())]
        holdout = [("in_holdout", pa.bool_())] if self.request.include_holdout else []
        metadata = {"segments_export": json.dumps({k: v for k, v in asdict(self.position).items()
                                                   if k not in ("rows", "held_out")})}
        return pa.schema(base + holdout + list(field_types.items()), metadata=metadata)

    def _member_pages(self) -> Iterator[dict[str, list]]:
        after = None
        while True:
            page = self.store.current.member_page(self.request.segment, after, self.chunk_rows, self.conn)
            if not page:
                return
            after = page[-1][0]
            yield {"customer_id": [row[0] for row in page], "entered_at": [row[1] for row in page],
                   "_states": [json.loads(row[2]) if row[2] is not None else {} for row in page]
                   if self.request.fields else []}

    def _change_pages(self) -> Iterator[dict[str, list]]:
        after = 0
        while True:
            page = self.store.changes.change_page(self.request.segment, naive_utc(self.request.changes_since),
                                                  after, self.chunk_rows, self.conn)
            if not page:
                return
            after = page[-1][0]
            names = ("seq", "customer_id", "change", "at", "source", "cause")
            columns = {name: [row[i] for row in page] for i, name in enumerate(names)}
            # The values a change was decided on are the customer's current state (the log keeps the causes).
            states = self.store.current.states(columns["customer_id"], self.conn) if self.request.fields else {}
            columns["_states"] = [states.get(cid) or {} for cid in columns["customer_id"]]
            yield columns

    def _with_fields(self, columns: dict[str, list]) -> dict[str, list]:
        """A page's columns with the asked fields taken out of its customers' evaluated values (`_states`)."""
        states = columns.pop("_states")
        for name in self.request.fields:
            columns[name] = [v.get(name) for v in states]
        return columns


def _field_types(names: tuple[str, ...], values: list[dict]) -> dict[str, pa.DataType]:
    """Each field's column type from the first chunk's values (a field is one column of the evaluation, one type)."""
    known = set().union(*(v.keys() for v in values)) if values else set()
    unknown = [name for name in names if name not in known]
    if unknown and values:
        raise ExportError(f"field(s) {', '.join(unknown)} are not kept for these customers; the values they were "
                          f"last evaluated on are: {', '.join(sorted(known)) or '(none)'}")
    types = {}
    for name in names:
        sample = next((v[name] for v in values if v.get(name) is not None), None)
        types[name] = (pa.bool_() if isinstance(sample, bool) else pa.int64() if isinstance(sample, int)
                       else pa.float64() if isinstance(sample, float) else pa.string())
    return types


# ---------------------------------------------------------------------------------------------------------------
# Writers: one per format, each fed batch by batch and writing as it goes.


class _Sink:
    """A file-like sink collecting what a writer writes, taken out after each batch (`take`) for streaming; `tell`
    counts every byte ever written, as Parquet's footer offsets need."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.written = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        self.parts.append(data)
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class _JsonLinesWriter:
    def __init__(self, sink, schema: pa.Schema):
        self.sink = sink

    def write_batch(self, batch: pa.RecordBatch) -> None:
        lines = [json.dumps(row, default=_json_value) for row in batch.to_pylist()]
        if lines:
            self.sink.write(("\n".join(lines) + "\n").encode())

    def close(self) -> None:
        pass


def _json_value(value):
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _writer(fmt: str, sink, schema: pa.Schema):
    if fmt == "csv":
        return pa_csv.CSVWriter(sink, schema)
    if fmt == "parquet":
        return pq.ParquetWriter(sink, schema)
    if fmt == "jsonl":
        return _JsonLinesWriter(sink, schema)
    raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def format_of(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"{path.name}: the file name must end in .csv, .parquet or .jsonl (the format)")
    return fmt


def write_export(export: SegmentExport, path: Path) -> ExportPosition:
    """Write the export to `path` (format from its suffix) through a temporary file renamed at the end, so a failed
    export never leaves a partial file; the position is also written beside it as `<path>.export.json`."""
    fmt = format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as sink:
        writer = _writer(fmt, sink, export.schema)
        for batch in export.batches():
            writer.write_batch(batch)
        writer.close()
    partial.replace(path)
    path.with_name(path.name + ".export.json").write_text(json.dumps(asdict(export.position), indent=1) + "\n")
    return export.position


def stream_export(export: SegmentExport, fmt: str) -> Iterator[bytes]:
    """The export in `fmt`, as bytes after each batch (an HTTP body streamed in chunks)."""
    sink = _Sink()
    writer = _writer(fmt, sink, export.schema)
    for batch in export.batches():
        writer.write_batch(batch)
        if chunk := sink.take():
            yield chunk
    writer.close()
    if chunk := sink.take():
        yield chunk

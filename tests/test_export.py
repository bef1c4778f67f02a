"""Segment exports (serving/segments/export.py, `segments export`): equal to the store, holdout left out by default,
every format, changes since a moment, the position named, constant memory. On SQLite and PostgreSQL (`store_url`)."""

import json
import subprocess
import sys
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.segments import in_holdout
from serving.segments.export import ExportError, ExportRequest, SegmentExport, stream_export, write_export
from serving.segments.store import SegmentStore

T0 = datetime(2026, 7, 1, 9, 30)
SEGMENT = "loyal"


def _fill(store: SegmentStore, n: int, start: int = 0, at: datetime = T0, segment: str = SEGMENT) -> None:
    """n customers enter `segment` at `at`, each with evaluated values (a float, an int, a text, a flag)."""
    ids = [f"C{i:07d}" for i in range(start, start + n)]
    changes = [{"customer_id": c, "segment": segment, "change": "entered", "at": at,
                "cause": [{"text": "spend in top 10%"}], "source": "refresh"} for c in ids]
    states = {c: {"churn_probability": (i % 100) / 100, "orders_count_365d": i % 17,
                  "churn_band": ["low", "medium", "high"][i % 3], "loyalty_member": i % 2 == 0}
              for i, c in enumerate(ids, start)}
    with store.transaction() as conn:
        store.write.record(conn, changes, states, at)


@pytest.fixture
def store(store_url):
    store = SegmentStore(store_url)
    yield store
    store.close()


def _export(store, path: Path, **options) -> dict:
    chunk_rows = options.pop("chunk_rows", 7)
    request = ExportRequest(SEGMENT, options.pop("holdout_percent", 10.0), **options)
    with SegmentExport(store, request, chunk_rows=chunk_rows) as export:
        return vars(write_export(export, path))


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pandas()
    if path.suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    return pd.read_csv(path, dtype={"customer_id": str})


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_an_audience_is_the_members_without_their_holdout(store, tmp_path, suffix):
    _fill(store, 60)
    members = sorted(m["customer_id"] for m in store.current.members(SEGMENT, limit=1000))
    held = set(pd.Series(members)[in_holdout(members, SEGMENT, 10.0)])
    assert 0 < len(held) < len(members)  # the draw holds some out at 10% of 60

    position = _export(store, tmp_path / f"audience{suffix}", fields=("churn_probability", "churn_band"))

    rows = _read(tmp_path / f"audience{suffix}")
    assert list(rows["customer_id"]) == [m for m in members if m not in held]
    assert position["rows"] == len(rows) and position["held_out"] == len(held)
    assert list(rows.columns) == ["customer_id", "entered_at", "churn_probability", "churn_band"]
    expected = store.current.states(list(rows["customer_id"]))
    assert list(rows["churn_probability"]) == [expected[c]["churn_probability"] for c in rows["customer_id"]]
    assert list(rows["churn_band"]) == [expected[c]["churn_band"] for c in rows["customer_id"]]
    assert pd.to_datetime(rows["entered_at"]).eq(T0).all()
    beside = json.loads((tmp_path / f"audience{suffix}.export.json").read_text())
    assert beside["log_seq"] == store.changes.last_seq() and beside["rows"] == len(rows)
    assert not (tmp_path / f"audience{suffix}.partial").exists()


def test_with_the_holdout_every_member_is_there_and_flagged(store, tmp_path):
    _fill(store, 45)
    _export(store, tmp_path / "all.parquet", include_holdout=True)
    rows = _read(tmp_path / "all.parquet")
    members = sorted(m["customer_id"] for m in store.current.members(SEGMENT, limit=1000))
    assert list(rows["customer_id"]) == members
    assert list(rows["in_holdout"]) == list(in_holdout(members, SEGMENT, 10.0))
    metadata = json.loads(pq.read_schema(tmp_path / "all.parquet").metadata[b"segments_export"])
    assert metadata["segment"] == SEGMENT and metadata["include_holdout"] is True


def test_changes_since_a_moment_are_the_log_entries_and_exits_after_it(store, tmp_path):
    _fill(store, 20)
    later = T0 + timedelta(days=3)
    with store.transaction() as conn:
        store.write.record(conn, [{"customer_id": "C0000003", "segment": SEGMENT, "change": "exited", "at": later,
                                   "cause": [{"text": "spend fell"}], "source": "event"}], {}, later)
    _fill(store, 5, start=100, at=later)

    _export(store, tmp_path / "changes.jsonl", changes_since=later, include_holdout=True,
            fields=("orders_count_365d",))

    rows = _read(tmp_path / "changes.jsonl")
    log = store.changes.log(SEGMENT, start=later)
    assert list(rows["seq"]) == list(log["seq"]) and list(rows["change"]) == list(log["change"])
    assert rows.loc[rows["customer_id"] == "C0000003", "change"].tolist() == ["exited"]
    assert json.loads(rows["cause"].iloc[0]) == log["cause"].iloc[0]
    states = store.current.states(list(rows["customer_id"]))
    assert list(rows["orders_count_365d"]) == [states[c]["orders_count_365d"] for c in rows["customer_id"]]


def test_writes_after_the_export_started_are_not_in_it(store, tmp_path):
    """One consistent read: rows committed while an export streams are neither half in nor counted."""
    _fill(store, 30)
    request = ExportRequest(SEGMENT, 0.0)
    with SegmentExport(store, request, chunk_rows=4) as export:
        chunks = stream_export(export, "csv")
        first = next(chunks)
        _fill(store, 10, start=5_000)  # commits between two chunks
        body = first + b"".join(chunks)
    rows = pd.read_csv(pd.io.common.BytesIO(body), dtype={"customer_id": str})
    assert len(rows) == 30 and not rows["customer_id"].str.startswith("C0005").any()
    assert export.position.log_seq < store.changes.last_seq()


def test_bad_requests_say_what_to_change(store, tmp_path):
    _fill(store, 5)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match="not kept.*churn_probability"):
        _export(store, out / "x.csv", fields=("no_such_field",))
    with pytest.raises(ExportError, match=r"\.csv, \.parquet or \.jsonl"):
        _export(store, out / "x.xlsx")
    assert not list(out.iterdir())  # no file, not even a partial one


def test_memory_stays_flat_as_the_segment_grows(tmp_path):
    """Python and Arrow memory of a 4,000-row export and a 40,000-row one differ by far less than the rows do
    (chunks of 1,000): nothing holds the whole segment."""
    peaks = []
    for n in (4_000, 40_000):
        store = SegmentStore(f"sqlite:///{tmp_path / f'{n}.db'}")
        _fill(store, n)
        pool = pa.default_memory_pool()
        tracemalloc.start()
        with SegmentExport(store, ExportRequest(SEGMENT, 10.0, fields=("churn_probability",)), chunk_rows=1_000) as ex:
            for chunk in stream_export(ex, "parquet"):
                pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks.append(peak + pool.max_memory())
        assert ex.position.rows + ex.position.held_out == n
        store.close()
    assert peaks[1] < 2.5 * peaks[0], peaks  # 10x the rows


def test_the_cli_writes_the_audience_and_refuses_an_unknown_segment(tmp_path):
    """On SQLite only: the export itself is tested on both stores above; this is the command's wiring."""
    store_url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = SegmentStore(store_url)
    _fill(store, 12)
    segments = Path(sys.executable).with_name("segments")
    ok = subprocess.run([str(segments), "export", "--segment", SEGMENT, "--out", str(tmp_path / "a.csv"),
                         "--db", store_url], capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    said = " ".join(ok.stdout.split())  # the console wraps long lines
    held = in_holdout([f"C{i:07d}" for i in range(12)], SEGMENT, 10.0)
    assert f"{12 - held.sum()} members of {SEGMENT}; {held.sum()} held-out customers left out (10% holdout)" in said
    assert "as of log position 12," in said
    assert len(_read(tmp_path / "a.csv")) == 12 - held.sum()
    bad = subprocess.run([str(segments), "export", "--segment", "nope", "--out", str(tmp_path / "b.csv"),
                          "--db", store_url], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "no segment named 'nope'" in bad.stderr + bad.stdout

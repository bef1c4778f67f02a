"""The segment commands as a user runs them (subprocess): preview, refresh at two dates, the read side, measure,
backtest, and clear errors for bad definitions and bad dates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SEGMENTS = Path(sys.executable).with_name("segments")


def segments(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEGMENTS), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False, env={"COLUMNS": "200", "PATH": str(SEGMENTS.parent)})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, generated):
    """A copy of the generated programme's folder and an empty store beside it."""
    return tmp_path_factory.mktemp("segcli"), generated[1]


def test_refresh_twice_then_read_who_moved_and_why(workdir):
    root, data = workdir
    db = f"sqlite:///{root / 'segments.db'}"
    first = segments("refresh", "--data", str(data), "--as-of", "2026-05-01", "--db", db, "--no-models", cwd=root)
    assert first.returncode == 0, first.stderr
    assert "loyal" in first.stdout and "entries and exits recorded" in first.stdout
    assert "not evaluated likely_to_churn" in first.stdout  # no model: predictive segments skipped, with the reason
    second = segments("refresh", "--data", str(data), "--as-of", "2026-05-15", "--db", db, "--no-models", cwd=root)
    assert second.returncode == 0, second.stderr
    again = segments("refresh", "--data", str(data), "--as-of", "2026-05-15", "--db", db, "--no-models", cwd=root)
    assert "Nothing new" in again.stdout
    back = segments("refresh", "--data", str(data), "--as-of", "2026-05-01", "--db", db, "--no-models", cwd=root)
    assert back.returncode == 2 and "would rewrite history" in back.stderr

    from serving.segments.store import SegmentStore

    store = SegmentStore(db)
    moved = store.changes.log(segment="loyal", start=pd.Timestamp("2026-05-15").to_pydatetime())
    assert set(moved["change"]) == {"entered", "exited"}
    customer = moved["customer_id"].iloc[0]
    shown = segments("customer", customer, "--db", db, cwd=root)
    assert shown.returncode == 0 and "loyal" in shown.stdout and "Purchases in the last 14 days" in shown.stdout
    size = store.current.segment_size("loyal")
    listed = segments("segment", "loyal", "--db", db, "--from", "2026-05-14", "--to", "2026-05-16",
                      "--members", "3", cwd=root)
    assert listed.returncode == 0 and f"loyal: {size:,} members" in listed.stdout
    assert "2026-05-15" in listed.stdout
    flows = segments("flows", "--from", "2026-05-02", "--to", "2026-05-16", "--db", db, cwd=root)
    assert flows.returncode == 0 and "lifecycle_active" in flows.stdout
    store.close()


def test_preview_shows_the_exact_size_without_saving(workdir, generated_validation):
    from datetime import datetime

    from features.pipeline import build_feature_table

    root, data = workdir
    fresh = root / "preview"
    fresh.mkdir()
    result = segments("preview", "--segment", "inactive", "--data", str(data), "--as-of", "2026-07-01",
                      "--no-models", "--sample", "3", cwd=fresh)
    assert result.returncode == 0, result.stderr
    features = build_feature_table(generated_validation, datetime(2026, 7, 1)).table
    assert f"inactive: {int((features['orders_count_90d'] == 0).sum()):,} of {len(features):,}" in result.stdout
    assert list(fresh.iterdir()) == []  # nothing saved
    unknown = segments("preview", "--segment", "inactiv", "--data", str(data), "--as-of", "2026-07-01",
                       "--no-models", cwd=fresh)
    assert unknown.returncode == 2 and "no segment named 'inactiv'" in unknown.stderr
    assert "Validating" not in unknown.stdout + unknown.stderr  # refused before the data is read


def test_bad_definitions_stop_before_anything_runs(workdir):
    root, data = workdir
    bad = root / "bad.yaml"
    bad.write_text("segments:\n  mine: {when: orders_cnt_90d >= 2}\n")
    result = segments("refresh", "--data", str(data), "--as-of", "2026-07-01", "--segments", str(bad),
                      "--db", f"sqlite:///{root / 'bad.db'}", "--no-models", cwd=root)
    assert result.returncode == 2
    assert "segment 'mine'" in result.stderr and "did you mean orders_count_90d" in result.stderr
    assert "Traceback" not in result.stderr


def test_measure_and_backtest(workdir):
    root, data = workdir
    db = f"sqlite:///{root / 'measure.db'}"
    assert segments("refresh", "--data", str(data), "--as-of", "2026-04-01", "--db", db, "--no-models",
                    cwd=root).returncode == 0
    measured = segments("measure", "--segment", "inactive", "--data", str(data), "--from", "2026-04-01",
                        "--to", "2026-06-01", "--db", db, "--json", cwd=root)
    assert measured.returncode == 0, measured.stderr
    answer = json.loads(measured.stdout)
    assert "conversion_rate" in json.dumps(answer) and "ci_low" in json.dumps(answer)
    backtest = segments("backtest", "--segment", "loyal", "--data", str(data), "--dates", "2026-01-01,2026-03-01",
                        cwd=root)
    assert backtest.returncode == 0, backtest.stderr
    assert "churn_rate_members" in backtest.stdout and "2026-03-01" in backtest.stdout
    late = segments("backtest", "--segment", "loyal", "--data", str(data), "--dates", "2026-06-01", cwd=root)
    assert late.returncode == 2 and "2026-06-01" in late.stderr


class _WriteHeldAtTheRefreshRow:
    """PostgreSQL: holds the `refreshes` table so a refresh stops at its last write, the refresh row, with its log,
    membership and states already written in its open transaction; `waiting()` says it got there."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine, text

        from serving.segments.store import SegmentStore, sqlalchemy_url

        SegmentStore(url).close()  # the tables exist before the refresh starts
        self.text, self.engine = text, create_engine(sqlalchemy_url(url))
        self.conn = self.engine.connect()
        self.conn.begin()
        self.conn.execute(text("LOCK TABLE refreshes IN SHARE MODE"))

    def waiting(self) -> bool:
        query = ("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                 "WHERE c.relname = 'refreshes' AND NOT l.granted")
        with self.engine.connect() as other:
            return other.execute(self.text(query)).scalar() > 0

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()
        self.engine.dispose()


def _sqlite_write_locked(url: str) -> bool:
    """SQLite: another connection holds the write lock (a refresh's write transaction is open)."""
    import sqlite3

    probe = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def _store_contents(url: str) -> tuple[list, list, list]:
    from serving.segments.store import SegmentStore

    store = SegmentStore(url)
    try:
        log = store.changes.log()[["customer_id", "segment", "change", "at", "source"]]
        members = store.current.memberships()
        refresh = store.current.last_refresh()
        return (sorted(map(tuple, log.astype(str).to_numpy())), sorted(map(tuple, members.astype(str).to_numpy())),
                [] if refresh is None else [str(refresh["as_of"]), refresh["customers"], refresh["changes"]])
    finally:
        store.close()


def test_a_refresh_killed_while_writing_leaves_nothing_and_a_rerun_completes_it(workdir, store_url, tmp_path):
    """kill -9 in the middle of the refresh's write. PostgreSQL: deterministically at its last statement (its other
    writes done). SQLite: as soon as its write lock is seen (the database allows nothing finer from outside)."""
    import time

    root, data = workdir
    args = ["refresh", "--data", str(data), "--as-of", "2026-05-01", "--no-models", "--db"]
    held = None if store_url.startswith("sqlite") else _WriteHeldAtTheRefreshRow(store_url)
    process = subprocess.Popen([str(SEGMENTS), *args, store_url], cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={"PATH": str(SEGMENTS.parent)})
    try:
        deadline = time.monotonic() + 240
        while not (held.waiting() if held else _sqlite_write_locked(store_url)):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the refresh never reached its write"
            time.sleep(0.2 if held else 0.001)
        process.kill()
        process.wait()
    finally:
        if held:
            held.release()
    assert _store_contents(store_url) == ([], [], [])  # nothing of the killed refresh is visible

    rerun = segments(*args, store_url, cwd=root)
    assert rerun.returncode == 0, rerun.stderr
    control = f"sqlite:///{tmp_path / 'uninterrupted.db'}"
    assert segments(*args, control, cwd=root).returncode == 0
    contents = _store_contents(store_url)
    assert contents == _store_contents(control) and contents[2][2] > 0  # the same as a refresh never killed

"""Events arriving at the service move customers between segments, through the same code as a batch refresh.

For each customer of a request: rebuild the customer's feature row with the served `FeatureQuery` from their
history (the serve folder's `history.sqlite`, written by `segments build`) plus every event posted since and the new
ones, score it with the served models and evaluate the segments (population thresholds of the last refresh), on a
snapshot of the store; then, in ONE store transaction, store the new transactions and events (idempotent by their
id) and record entries and exits with causes, after checking that nothing about the customer moved since the
snapshot (else the evaluation runs again inside the transaction). The transaction commits before the response is
sent, so an acknowledged event is never lost; a retried event is a duplicate and changes nothing, so none is counted
twice. A crash before the commit loses the whole unit, which the caller (never acknowledged) sends again.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Connection

from features.build import SQLiteFeatureRunner, write_runner_history
from features.contract import CONTRACTS, typed_rows
from features.segments import SegmentSet
from serving.segments.refresh import LastRefresh, SegmentRules, changes_for, segment_values, served_segments
from serving.segments.store import Change, SegmentStore, first_posts, posted_key

HISTORY_FILE = "history.duckdb"  # the clean tables, for bulk reads (reports)
RUNNER_HISTORY_FILE = "history.sqlite"  # the same rows indexed by customer, for one customer's (the event path)
# Features read records strictly before as_of; the clock of an event's evaluation is just after its latest record.
AFTER_LAST_EVENT = timedelta(microseconds=1)
POSTED_TABLES = {"transaction": "transactions", "event": "events"}


def write_history(validation, columns: dict[str, list[str]], folder: Path) -> None:
    """The clean tables (contract columns only) sorted by customer, twice into `folder`: HISTORY_FILE (DuckDB) for
    reports and RUNNER_HISTORY_FILE (SQLite, indexed by customer) for the event path's point reads."""
    path = folder / HISTORY_FILE
    path.unlink(missing_ok=True)
    con = validation.con
    con.execute("ATTACH ? AS history", [str(path)])
    try:
        for table, names in columns.items():
            con.execute(f'CREATE TABLE history.{table} AS SELECT {", ".join(names)} FROM {table} '
                        f"ORDER BY customer_id")
        write_runner_history(con, columns, folder / RUNNER_HISTORY_FILE, schema="history")
    finally:
        con.execute("DETACH history")


def open_event_path(state) -> EventProcessor:
    """The event path a service process runs on the loaded serve folder `state`: the membership store
    (SEGMENTS_DB_URL) and the segments file (SEGMENTS_DEFINITIONS, the shipped one when unset)."""
    definitions = os.environ.get("SEGMENTS_DEFINITIONS")
    return EventProcessor(state, SegmentStore(), Path(definitions) if definitions else None)


class HistoryReplaced(RuntimeError):
    """The serve folder's history.sqlite is not the file this process loaded beside its models (a `segments build`
    into the served folder): features rebuilt from it would mix two builds."""


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (device, inode, modification time); None when missing."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns


def opening_problem(error: Exception) -> str:
    """Why `open_event_path` failed, as readiness words it."""
    return f"segments: {type(error).__name__}: {str(error)[:300]}"


class EventProcessor:
    """What a service worker needs to turn posted events into membership changes (built once per worker)."""

    def __init__(self, state, store, segments_file: Path | None = None):
        self.state, self.store = state, store
        self.bundle = state.scorer.bundle
        # Each request thread gets a SQLite feature runner of its own (features.build.SQLiteFeatureRunner: ~10x
        # faster than DuckDB for one customer; a sqlite3 connection stays in its thread) with the history attached.
        self.history = state.directory / RUNNER_HISTORY_FILE
        self._history_identity = file_identity(self.history)  # the runners attach it lazily, one per thread
        self._local = threading.local()
        self.last_refresh = LastRefresh(store)
        self._rules: tuple[dict | None, SegmentRules] | None = None  # (refresh, rules) of the last /score
        _ = state.query.sqlite_sql  # compiled now, not on the first event (~0.5 s)
        self.segments: SegmentSet
        self.segments, self.skipped = served_segments(segments_file, state.table, self.bundle)

    def ingest(self, rows: list[dict]) -> list[dict]:
        """rows: {"kind", "id", "customer_id", "timestamp", "payload"}. Per customer (request order): the events
        stored now and the duplicates, the evaluation time, the membership changes and the current segments."""
        by_customer: dict[str, list[dict]] = {}
        for row in rows:
            by_customer.setdefault(row["customer_id"], []).append(row)
        return [self._ingest_customer(cid, customer_rows) for cid, customer_rows in by_customer.items()]

    def _ingest_customer(self, customer_id: str, rows: list[dict]) -> dict:
        # Evaluated on a snapshot first, without the write lock (on SQLite one lock serialises every writer: held
        # across features and scoring, it made events of other customers wait ~70 ms each). The transaction then
        # checks that nothing about the customer moved meanwhile and writes; if something did (a concurrent event
        # of theirs, a refresh), it evaluates again inside, holding the customer.
        with self.store.snapshot() as conn:
            mark = self.store.current.customer_mark(customer_id, conn)
            expected = first_posts(rows, {posted_key(r) for r in rows} - self.store.current.stored_posted(rows, conn))
            planned = self._evaluate(customer_id, rows, expected, conn)
        with self.store.transaction() as conn:
            self.store.write.lock_customer(conn, customer_id)  # PostgreSQL: concurrent events of one customer queue here
            unchanged = self.store.current.customer_mark(customer_id, conn) == mark
            stored = self.store.write.add_posted(conn, rows)
            result, writes = (planned if unchanged and stored == expected
                              else self._evaluate(customer_id, rows, stored, conn))
            if writes is not None:
                self.store.write.record(conn, *writes)
        return result

    def _evaluate(self, customer_id: str, rows: list[dict], stored: list[bool], conn: Connection
                  ) -> tuple[dict, tuple | None]:
        """(the answer for the customer, the (changes, states, at) to record or None) when `stored` says which of
        `rows` are stored now (the others are duplicates); every read uses `conn`."""
        new = [r for r, ok in zip(rows, stored, strict=True) if ok]
        result = {"customer_id": customer_id, "stored": [r["id"] for r in new],
                  "duplicates": [r["id"] for r, ok in zip(rows, stored, strict=True) if not ok],
                  "as_of": None, "changes": []}
        segments, writes = self.store.current.segments_of(customer_id, conn), None
        if new:
            as_of = self.clock(customer_id, new, conn)
            features = self.features(customer_id, new, as_of, conn)
            # The frame converted once for all models' encoders (per model it cost more than the models).
            scores = self.bundle.score(features, self.state.scorer.encode(features))
            values = segment_values(features, self.bundle, scores)
            thresholds = self._thresholds(conn)
            members = pd.DataFrame({"segment": segments, "customer_id": [customer_id] * len(segments)})
            stored_states = self.store.current.states([customer_id], conn)
            changes = changes_for(self.segments, values, thresholds, members, stored_states, thresholds, as_of,
                                  "event")
            # The state is written even when its values did not change: its as_of says when the customer was
            # last evaluated, which a batch refresh planned before then must not overwrite.
            writes = (changes.changes, {customer_id: stored_states.get(customer_id, {}), **changes.states}, as_of)
            result["as_of"], result["changes"] = as_of, [change._asdict() for change in changes.changes]
            segments = _segments_after(segments, changes.changes)
        result["segments"] = segments
        return result, writes

    def clock(self, customer_id: str, new: list[dict] = (), conn: Connection | None = None) -> datetime:
        """When the customer is evaluated: just after their latest record (`new` or posted before), never before
        their current time, the latest of the serve folder's as_of, the last batch refresh and their last logged
        change. Late events count at the customer's current time and are never back-dated in the log, and a
        counterfactual (serving/segments/counterfactuals.py) evaluates its plan at the time its records would be posted."""
        last = self.last_refresh.read(conn)
        moments = [self.state.as_of, last["as_of"] if last else None, self.store.changes.last_change_at(customer_id, conn)]
        records = [r["timestamp"] for r in new] + [self.store.current.last_posted_at(customer_id, conn)]
        records = [r for r in records if r is not None]
        if records:
            moments.append(pd.Timestamp(max(records)).to_pydatetime() + AFTER_LAST_EVENT)
        return max(m for m in moments if m is not None)

    def _thresholds(self, conn: Connection) -> dict:
        """The population thresholds of the last refresh, read again only when a newer refresh has been recorded."""
        last = self.last_refresh.read(conn)
        return last["thresholds"] if last else {}

    def segment_rules(self) -> SegmentRules:
        """The segments this worker evaluates, with the last refresh's thresholds: what /score evaluates, so a
        scored customer's `segments` and the event path's membership come from the same definitions."""
        last = self.last_refresh.read()
        cached = self._rules
        if cached is None or cached[0] is not last:  # rebuilt only when another refresh has been read
            cached = self._rules = (last, SegmentRules.of_refresh(self.segments, self.skipped, last))
        return cached[1]

    def history_problem(self) -> str | None:
        """None while the history file is the one seen when this processor was built, else why not (readiness)."""
        if file_identity(self.history) == self._history_identity:
            return None
        return (f"{self.history.resolve()} changed after the service loaded the serve folder (segments build into "
                f"the served folder?): restart the service, so that its models, feature table and history are of "
                f"one build")

    def _runner(self) -> SQLiteFeatureRunner:
        """This thread's feature runner."""
        runner = getattr(self._local, "runner", None)
        if runner is None:
            problem = self.history_problem()
            if problem is not None:
                raise HistoryReplaced(problem)
            runner = self._local.runner = SQLiteFeatureRunner(self.state.query, self.history)
        return runner

    def features(self, customer_id: str, new: list[dict], as_of: datetime,
                 conn: Connection | None = None) -> pd.DataFrame:
        """The customer's feature row as of `as_of`: served history + events posted before (incl. `new`).

        `new` rows need not be stored (e.g. hypothetical records). A posted record replaces a history record with
        the same id (the latest post of an id wins). `conn`: read the posted records inside that store transaction.
        """
        runner = self._runner()
        return runner.run_customer(customer_id, self._posted_rows(customer_id, new, as_of, runner.columns, conn), as_of)

    def _posted_rows(self, customer_id: str, new: list[dict], as_of: datetime, columns: dict[str, list[str]],
                     conn: Connection | None) -> dict[str, list[tuple]]:
        """Contract table -> the customer's posted records before as_of followed by `new`, typed, one per id (the
        last wins), as tuples of `columns`; tables without any are left out."""
        out = {}
        for table, stored in self.store.current.posted_records([customer_id], before=as_of, conn=conn).items():
            if table not in columns:
                continue
            records = stored + [{**r["payload"], "customer_id": customer_id} for r in new
                                if POSTED_TABLES[r["kind"]] == table]
            if records:
                at = columns[table].index(CONTRACTS[table].id_column)
                by_id = {row[at]: row for row in typed_rows(table, records, columns[table])}  # the last post wins
                out[table] = list(by_id.values())
        return out

        return out


def _segments_after(segments: list[str], changes: list[Change]) -> list[str]:
    """The segments after `changes`, applied in order as `store.record` applies them (no second read)."""
    now = set(segments)
    for change in changes:
        if change.change == "entered":
            now.add(change.segment)
        else:
            now.discard(change.segment)
    return sorted(now)

"""The membership store of dynamic segments: who is in which segment now, every change with its cause, and the
transactions and events posted to the service, in SQLite (default, one file) or PostgreSQL (SEGMENTS_DB_URL).

Tables:
- posted_events: transactions and events posted one at a time, kept once per (kind, id) so a retried post is harmless;
- membership: the current members of each segment (segment, customer_id, entered_at);
- membership_log: every entered/exited change, with its cause (the condition or score that flipped), in the order it
  was recorded (seq); segment size over time, flows and membership at a past moment all come from it;
- customer_state: the values each customer was last evaluated on, so the next evaluation can say what changed;
- refreshes: one row per batch refresh (as_of, the hash of the segment definitions, thresholds, counts).

`SegmentStore` opens the database and holds its three sides, one class each:
- `store.write` (`StoreWriter`): the write path. Writes take the connection of `store.transaction()`, so the caller
  combines them in one atomic transaction (a posted event, the changes it caused and the new state commit together or
  not at all);
- `store.changes` (`ChangeLog`): the event log read as history (changes, membership at a moment, daily counts,
  flows);
- `store.current` (`CurrentState`): the read models of now (members, sizes, a customer's segments, states and
  history, the last refresh, posted records).
Reads the event path makes inside a transaction take its connection (`conn=`), so they see the transaction's own
writes and open no connection of their own. Timestamps are naive UTC on the way in and out.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from typing import NamedTuple

import orjson
import pandas as pd
import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from features.time import naive_utc, utc_now

DEFAULT_DB_URL = "sqlite:///segments.db"
KINDS = {"transaction": "transactions", "event": "events"}  # posted kind -> the contract table it belongs to
ID_COLUMNS = {"transaction": "transaction_id", "event": "event_id"}
_IDS_PER_QUERY = 5000  # keeps `customer_id IN (...)` under both backends' bind-parameter limits
_SQLITE_BUSY_MS = 30_000
STORE_DOWN = (DBAPIError, PoolTimeout)  # what a database that stopped answering raises (the doors answer 503)


def unavailable(error: Exception) -> str:
    """The 503 message for a STORE_DOWN error: retrying is safe, every write is one transaction."""
    cause = getattr(error, "orig", None) or error
    return f"the segment store is unavailable ({type(cause).__name__}); retry shortly"
_CREATE_LOCK, _REFRESH_LOCK = 7411, 7412  # PostgreSQL advisory lock keys (creating tables; writing a refresh)

metadata = MetaData()

posted_events = Table(
    "posted_events",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("timestamp", DateTime, nullable=False),
    Column("payload", Text, nullable=False),
    Column("received_at", DateTime, nullable=False),
)

membership = Table(
    "membership",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("customer_id", String(200), primary_key=True),
    Column("entered_at", DateTime, nullable=False),
)

membership_log = Table(
    "membership_log",
    metadata,
    # sqlite_autoincrement: never reuse a seq, so seq order is recording order.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("segment", String(200), nullable=False),
    Column("change", String(8), nullable=False),
    Column("at", DateTime, nullable=False),
    Column("cause", Text, nullable=False),
    Column("source", String(16), nullable=False),
    Column("recorded_at", DateTime, nullable=False),
    Index("ix_membership_log_segment_at", "segment", "at"),
    sqlite_autoincrement=True,
)

customer_state = Table(
    "customer_state",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("as_of", DateTime, nullable=False),
    Column("values", Text, nullable=False),
)

refreshes = Table(
    "refreshes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("as_of", DateTime, nullable=False),
    Column("definitions_hash", String(128), nullable=False),
    Column("thresholds", Text, nullable=False),
    Column("customers", Integer, nullable=False),
    Column("changes", Integer, nullable=False),
    Column("recorded_at", DateTime, nullable=False),
    sqlite_autoincrement=True,
)

# Activation (serving/segments/delivery.py): who is told about which changes, and what is still to be told. An
# outbox row is written in the transaction of the change it reports, so a change is never delivered without being
# recorded nor recorded without being queued.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("url", Text, nullable=False),
    Column("segments", Text, nullable=False),  # JSON list of segment names
    Column("changes", Text, nullable=False),  # JSON list: entered, exited
    Column("secret_env", String(200), nullable=False),  # the environment variable holding the signing secret
    Column("active", Boolean, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subscription", String(200), nullable=False),
    Column("customer_id", String(200), nullable=False),
    Column("segment", String(200), nullable=False),
    Column("change", String(8), nullable=False),
    Column("at", DateTime, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(12), nullable=False),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("lease_until", DateTime),
    Column("last_error", Text),
    Column("created_at", DateTime, nullable=False),
    Column("delivered_at", DateTime),
    Index("ix_outbox_due", "status", "next_attempt_at"),
    Index("ix_outbox_line", "subscription", "customer_id", "id"),  # each customer's changes in order
    sqlite_autoincrement=True,
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("outbox_id", BigInteger, nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("at", DateTime, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("milliseconds", Integer, nullable=False),
    sqlite_autoincrement=True,
)

# Campaigns (serving/segments/campaigns.py): a segment's members at the start, its holdout, a window, a channel, a goal.
campaigns = Table(
    "campaigns",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("segment", String(200), nullable=False),
    Column("start", DateTime, nullable=False),
    Column("end", DateTime, nullable=False),
    Column("channel", String(100), nullable=False),
    Column("goal", String(40), nullable=False),
    Column("holdout_percent", Float, nullable=False),  # the segment's at creation: who was held out stays so
    Column("description", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

LOG_COLUMNS = ["seq", "customer_id", "segment", "change", "at", "cause", "source", "recorded_at"]
_LOGGED = tuple(LOG_COLUMNS[1:])  # what a write gives (seq is the database's)
WRITE_BATCH = 50_000  # rows per executemany in a write
# PostgreSQL takes writes of at least this many rows through COPY: a first refresh of a million customers writes
# millions of rows, which executemany sent as one INSERT each. Smaller writes (an event's few rows) keep INSERT, which
# costs fewer round trips than a staging table.
COPY_MIN_ROWS = 100

# membership's key is (segment, customer_id) and no index leads with customer_id: walk the few distinct segments
# through the key (a loose index scan) and look the customer up in each, instead of scanning every member (on SQLite
# 0.03 ms instead of 1.3 ms for 57k members).
_SEGMENTS_OF = text("""
WITH RECURSIVE segments(name) AS (
    SELECT min(segment) FROM membership
    UNION ALL
    SELECT (SELECT min(segment) FROM membership WHERE segment > name) FROM segments WHERE name IS NOT NULL
)
SELECT segment FROM segments JOIN membership ON segment = name AND customer_id = :customer_id ORDER BY segment
""")

# The id of the latest refresh (ids only grow): read alone, and inside a customer's mark.
_LAST_REFRESH_ID = select(func.max(refreshes.c.id))

_MEMBERS_BETWEEN = """
WITH RECURSIVE segments(name) AS (
    SELECT min(segment) FROM membership
    UNION ALL
    SELECT (SELECT min(segment) FROM membership WHERE segment > name) FROM segments WHERE name IS NOT NULL
)
SELECT segment, customer_id FROM segments JOIN membership ON segment = name WHERE {where}
ORDER BY segment, customer_id
"""


class StoreError(RuntimeError):
    """The segment store cannot be reached or set up; the message names the URL with its password masked."""


def connect_timeout_seconds() -> int:
    """Seconds to wait for a PostgreSQL connection (SEGMENTS_DB_CONNECT_TIMEOUT, default 5)."""
    return int(os.environ.get("SEGMENTS_DB_CONNECT_TIMEOUT") or 5)


def db_url() -> str:
    """SEGMENTS_DB_URL, else DEFAULT_DB_URL; a plain postgresql:// (or postgres://) URL gets the psycopg 3 driver."""
    url = os.environ.get("SEGMENTS_DB_URL") or DEFAULT_DB_URL
    return sqlalchemy_url(url)


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy should open: a plain postgresql:// (or postgres://) URL gets the psycopg 3 driver."""
    # SQLAlchemy's default PostgreSQL driver is psycopg2, which we do not install.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url




def _json_default(value):
    # Payloads and states often come from pandas rows: numpy scalars, Timestamps, NA, NaT.
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot store a {type(value).__name__} as JSON: {value!r}")


class JSONText(str):
    """A state or a cause already in the JSON text the store keeps, written as it is. A refresh of a million
    customers holds their new states (~0.4 GB as text, ~2 GB as dicts) and millions of causes this way."""


def json_text(value) -> JSONText:
    """`value` (a state's values, a change's cause) as the store writes it."""
    return JSONText(_dumps(value))


def _dumps(value) -> str:
    if isinstance(value, JSONText):
        return str(value)
    try:  # orjson: a refresh of a million customers writes ~4M states and causes (the standard library took ~15 s)
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except orjson.JSONEncodeError:  # e.g. an integer past 64 bits in a posted payload
        return json.dumps(value, default=_json_default)


class Change(NamedTuple):
    """One entry or exit as `StoreWriter.record` logs it (a dict with these keys is accepted too). A tuple, not a
    dict: a first refresh of a million customers holds millions of them."""

    customer_id: str
    segment: str
    change: str  # entered | exited
    at: datetime
    cause: list | dict | JSONText
    source: str  # refresh | event


def posted_key(row: dict) -> tuple[str, str]:
    """A posted record's identity: (kind, id)."""
    return row["kind"], str(row["id"])


def first_posts(rows: list[dict], new_keys: set[tuple[str, str]]) -> list[bool]:
    """Per row: stored now, i.e. its (kind, id) is among `new_keys` and not repeated earlier in `rows` (a repeat is
    a duplicate)."""
    left, out = set(new_keys), []
    for row in rows:
        key = posted_key(row)
        out.append(key in left)
        left.discard(key)
    return out


class StoredStates(Mapping):
    """Customers' stored states (customer_id -> values) as their JSON text, parsed when read: a refresh of a million
    customers holds the text (~0.4 GB) where the parsed dicts took ~2 GB."""

    def __init__(self, texts: dict[str, str]):
        self._texts = texts

    def __getitem__(self, customer_id: str) -> dict:
        return json.loads(self._texts[customer_id])

    def text(self, customer_id: str) -> str | None:
        """The state as stored (None for a customer never evaluated), without parsing it."""
        return self._texts.get(customer_id)

    def __iter__(self):
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)


def _parsed(state):
    """A state's values as a dict (a JSONText parsed; a dict or None as it is)."""
    return json.loads(state) if isinstance(state, JSONText) else state


def _memoized(process: Callable) -> Callable:
    """`process` computed once per distinct value (a refresh's changes share their `at` and `recorded_at`)."""
    done: dict = {}

    def once(value):
        if value not in done:
            done[value] = process(value)
        return done[value]
    return once


def _processed(row: tuple, processors: list) -> tuple:
    """`row` with SQLAlchemy's bind processing applied to the columns that have one (e.g. SQLite datetimes)."""
    values = list(row)
    for i, process in processors:
        values[i] = process(values[i])
    return tuple(values)


def _chunks(items: list, size: int = _IDS_PER_QUERY) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _switch_to_wal(cursor) -> None:
    """PRAGMA journal_mode=WAL, waiting up to the busy timeout while another connection holds a lock. SQLite does not
    call its busy handler for this switch: a new store opened by two processes at once failed at once with
    "database is locked". Once the file is in WAL mode (it stays so), the switch is a no-op."""
    deadline = time.monotonic() + _SQLITE_BUSY_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class Database:
    """The engine of the store (SQLite or PostgreSQL), its transactions and read connections, shared by the three
    sides of `SegmentStore`."""

    def __init__(self, url: str | None = None):
        self.url = make_url(sqlalchemy_url(url or db_url()))
        self.display_url = self.url.render_as_string(hide_password=True)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # pre-ping: a long-running service outlives PostgreSQL restarts without handing out dead connections; a
        # connect timeout and a pool timeout, so a database that does not answer fails a request instead of hanging
        # it (SQLite waits at most its busy timeout for a lock).
        options = {} if self.is_sqlite else {"connect_args": {"connect_timeout": connect_timeout_seconds()},
                                             "pool_timeout": connect_timeout_seconds()}
        self.engine = create_engine(self.url, pool_pre_ping=not self.is_sqlite, **options)
        if self.is_sqlite:
            self._configure_sqlite()
        try:
            with self.transaction() as conn:
                if not self.is_sqlite:
                    # Service workers starting together would race to create the tables; one creates, others wait.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
                metadata.create_all(conn)
        except DBAPIError as error:
            self.engine.dispose()
            raise StoreError(f"cannot open the segment store at {self.display_url}: {error.orig}") from error

    def _configure_sqlite(self) -> None:
        # pysqlite opens transactions on its own terms; take that over so transaction() can say BEGIN IMMEDIATE
        # (take the write lock up front: concurrent writers then wait on busy_timeout instead of failing on upgrade)
        # while reads keep a plain BEGIN and never block writers under WAL.
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn):
            immediate = conn.get_execution_options().get("segments_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def close(self) -> None:
        """Close pooled connections (tests drop their database afterwards)."""
        self.engine.dispose()

    def ping(self) -> str | None:
        """None when the database answers a trivial query, else why not (for readiness)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as error:
            return f"the segment store at {self.display_url} does not answer: {str(error.orig).strip()[:200]}"
        return None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One atomic transaction for writes: commits when the block ends, rolls everything back on an exception."""
        with self.engine.connect() as conn:
            conn.execution_options(segments_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def consistent_read(self) -> Iterator[Connection]:
        """One read transaction whose queries all see the same committed state (SQLite: the WAL snapshot of a
        deferred BEGIN; PostgreSQL: REPEATABLE READ), for a read made of many queries (an export in chunks). It
        takes no write lock."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _read(self) -> Connection:
        """A connection for reads: on SQLite a plain (deferred) BEGIN, so a method's queries see one snapshot without
        blocking writers."""
        return self.engine.connect()

    @contextmanager
    def _reading(self, conn: Connection | None) -> Iterator[Connection]:
        """`conn` when given (a caller inside `transaction()` reads its own writes, without a connection per read),
        else a read connection of its own."""
        if conn is not None:
            yield conn
            return
        with self._read() as own:
            yield own

    @property
    def mark(self) -> str:
        """The driver's parameter mark (sqlite3: qmark; psycopg: format)."""
        return "?" if self.is_sqlite else "%s"

    def insert_many(self, conn: Connection, table: Table, columns: tuple[str, ...] | list[str], rows: list[tuple],
                    conflict: str = "") -> None:
        """INSERT `rows` (tuples in `columns` order) through the driver's executemany (on PostgreSQL, COPY from
        COPY_MIN_ROWS rows), datetimes stored as SQLAlchemy stores them. SQLAlchemy's own executemany processed
        every parameter in Python: most of the write of a refresh of a million customers (137 s)."""
        if not rows:
            return
        quote = conn.dialect.identifier_preparer.quote
        target, names = quote(table.name), ", ".join(quote(c) for c in columns)
        processors = [(i, table.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect))
                      for i, c in enumerate(columns)]
        processors = [(i, _memoized(process)) for i, process in processors if process is not None]
        if processors:
            rows = [_processed(row, processors) for row in rows]
        if self.is_sqlite or len(rows) < COPY_MIN_ROWS:
            conn.exec_driver_sql(f"INSERT INTO {target} ({names}) VALUES ({', '.join([self.mark] * len(columns))}) "
                                 f"{conflict}", rows)
        elif conflict:  # COPY has no ON CONFLICT
            self._copy(conn, target, names, rows,
                       then=f"INSERT INTO {target} ({names}) SELECT {names} FROM _staging {conflict}")
        else:
            self._copy(conn, target, names, rows)

    def delete_many(self, conn: Connection, table: Table, key: tuple[str, ...], keys: list[tuple]) -> None:
        """DELETE the rows whose `key` columns equal one of `keys` (tuples in `key` order); on PostgreSQL from
        COPY_MIN_ROWS keys, as one DELETE joined to the keys copied into a temporary table."""
        if not keys:
            return
        quote = conn.dialect.identifier_preparer.quote
        target, names = quote(table.name), [quote(c) for c in key]
        if self.is_sqlite or len(keys) < COPY_MIN_ROWS:
            where = " AND ".join(f"{name} = {self.mark}" for name in names)
            conn.exec_driver_sql(f"DELETE FROM {target} WHERE {where}", keys)
            return
        match = " AND ".join(f"target.{name} = _staging.{name}" for name in names)
        self._copy(conn, target, ", ".join(names), keys,
                   then=f"DELETE FROM {target} AS target USING _staging WHERE {match}")

    @staticmethod
    def _copy(conn: Connection, target: str, names: str, rows: list[tuple], then: str | None = None) -> None:
        """PostgreSQL: the rows through COPY into `target` (quoted; `names`: its quoted columns, comma separated),
        in their order (the log's seq follows it). With `then`, the rows are copied into a temporary table
        `_staging` of those columns instead, and `then` runs on it (an INSERT with ON CONFLICT, a DELETE USING)."""
        cursor = conn.connection.cursor()
        try:
            if then:
                cursor.execute(f"CREATE TEMPORARY TABLE _staging ON COMMIT DROP AS SELECT {names} FROM {target} "
                               "WITH NO DATA")
            with cursor.copy(f"COPY {'_staging' if then else target} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            if then:
                cursor.execute(then)
                cursor.execute("DROP TABLE _staging")
        finally:
            cursor.close()

    @staticmethod
    def driver_rows(conn: Connection, sql: str, parameters: tuple = ()) -> list[tuple]:
        """The rows of `sql` (parameters in the driver's marks) as the driver's plain tuples: no SQLAlchemy
        processing per row, for reads of millions of rows of text columns."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, parameters)
            return cursor.fetchall()
        finally:
            cursor.close()

    @staticmethod
    def driver_text_batches(conn: Connection, sql: str, parameters: tuple,
                            columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The rows of `sql` (parameters in the driver's marks; text columns named `columns`) as Arrow batches, read
        through the driver's cursor (`_text_batches`)."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, parameters)
            yield from _text_batches(cursor, columns)
        finally:
            cursor.close()

    @staticmethod
    def plain_text_batches(conn: Connection, query, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The rows of a SQLAlchemy `query` of text columns (its parameters bound as SQLAlchemy binds them) as Arrow
        batches, read through the driver's cursor (`_text_batches`)."""
        result = conn.execute(query)
        try:
            yield from _text_batches(result.cursor, columns)
        finally:
            result.close()

    def id_range(self, low: str | None, high: str | None) -> tuple[str, tuple]:
        """A SQL condition on `customer_id` for `low <= id < high` (None: unbounded) and its parameters, comparing
        as Python orders strings (code points): SQLite's BINARY collation does; PostgreSQL is told COLLATE "C",
        since its database collation may order text by locale."""
        collate = "" if self.is_sqlite else ' COLLATE "C"'
        bounds = [(f"customer_id{collate} >= {self.mark}", low), (f"customer_id{collate} < {self.mark}", high)]
        kept = [(sql, value) for sql, value in bounds if value is not None]
        return " AND ".join(sql for sql, _ in kept) or "TRUE", tuple(value for _, value in kept)

    def _insert(self, table: Table):
        """The dialect's INSERT, which has ON CONFLICT (both SQLite and PostgreSQL spell it the same way)."""
        return (sqlite if self.is_sqlite else postgresql).insert(table)

    def _rows_for(self, conn: Connection, query, column, customer_ids: list[str] | None,
                  tuples: bool = False) -> list:
        """Run `query`, limited to `customer_ids` when given (in chunks, under the bind-parameter limits): rows as
        dicts, or as tuples in the query's column order (a third of the memory: a million stored states or five
        million memberships are read at once by a refresh)."""
        shape = tuple if tuples else dict
        if customer_ids is None:
            result = conn.execute(query)
            return [shape(row) for row in (result if tuples else result.mappings())]
        ids = sorted({str(customer_id) for customer_id in customer_ids})
        rows = []
        for chunk in _chunks(ids):
            result = conn.execute(query.where(column.in_(chunk)))
            rows += [shape(row) for row in (result if tuples else result.mappings())]
        return rows


class SegmentStore:
    """Membership of dynamic segments, their change log, customer states and posted events (module docstring): the
    database and its write path (`write`), event log (`changes`) and read models of now (`current`)."""

    def __init__(self, url: str | None = None):
        self.db = Database(url)
        self.url, self.display_url, self.is_sqlite = self.db.url, self.db.display_url, self.db.is_sqlite
        self.write = StoreWriter(self.db)
        self.changes = ChangeLog(self.db)
        self.current = CurrentState(self.db)

    def transaction(self):
        """One atomic transaction for writes (`Database.transaction`)."""
        return self.db.transaction()

    def consistent_read(self):
        """One read transaction, one committed state for all its queries (`Database.consistent_read`)."""
        return self.db.consistent_read()

    def snapshot(self) -> Connection:
        """A read connection that takes no write lock (SQLite: one snapshot for its queries; PostgreSQL: each query
        sees the latest commit). Read a `CurrentState.customer_mark` first, evaluate, then check the mark again in
        `transaction()`: anything committed after the first read changes it."""
        return self.db._read()

    def close(self) -> None:
        """Close pooled connections (tests drop their database afterwards)."""
        self.db.close()

    def ping(self) -> str | None:
        return self.db.ping()


class StoreWriter:
    """The write path: posted records, membership changes with their log rows and states, refreshes, and the
    per-customer lock that orders concurrent writers. Every method takes the caller's transaction (`conn`)."""

    def __init__(self, db: Database):
        self.db = db

    def add_posted(self, conn: Connection, rows: list[dict]) -> list[bool]:
        """Store posted transactions and events once per (kind, id).

        rows: {"kind": "transaction"|"event", "id", "customer_id", "timestamp" (naive UTC), "payload": dict}.
        Returns per row True if it was stored now, False if that (kind, id) was already stored (also when it repeats
        within `rows`).
        """
        received_at = utc_now()
        records = {}
        for row in rows:
            if row["kind"] not in KINDS:
                raise ValueError(
                    f"posted kind must be one of {sorted(KINDS)}, got {row['kind']!r} (id {row['id']!r})"
                )
            key = posted_key(row)
            records.setdefault(
                key,
                {
                    "kind": key[0],
                    "id": key[1],
                    "customer_id": str(row["customer_id"]),
                    "timestamp": naive_utc(row["timestamp"]),
                    "payload": _dumps(row["payload"]),
                    "received_at": received_at,
                },
            )
        if not records:
            return []
        # ON CONFLICT DO NOTHING RETURNING tells which rows went in, also when another transaction posts the same id
        # at the same moment (it waits for that one to commit, then sees the conflict).
        statement = (
            self.db._insert(posted_events)
            .on_conflict_do_nothing()
            .returning(posted_events.c.kind, posted_events.c.id)
        )
        return first_posts(rows, {tuple(row) for row in conn.execute(statement, list(records.values()))})

    def record(
        self,
        conn: Connection,
        changes: list[Change | dict],
        states: dict[str, dict],
        at: datetime,
        refresh: dict | None = None,
        recorded_at: datetime | None = None,
    ) -> int:
        """Apply membership changes, log them, save the customers' evaluated values and, for a batch refresh, its row.

        changes: `Change`s (or dicts with its keys), in the order they happened. Membership follows the last change per (segment, customer):
        "entered" inserts (segment, customer_id, entered_at = the change's at) unless already a member (the first
        entry time is kept), "exited" deletes. states: customer_id -> values (a dict, or its `json_text`), saved
        with as_of = at. refresh:
        {"as_of", "definitions_hash", "thresholds", "customers", "changes"}. recorded_at: when (now by default; a
        refresh written in several calls gives each the same). Returns the number of changes logged.
        """
        recorded_at = recorded_at or utc_now()
        wanted = self._subscriptions(conn)
        logged = 0
        for batch in _chunks(changes, WRITE_BATCH):  # a batch at a time: a first refresh logs millions of changes
            log_rows = []
            for change in batch:
                change = change if isinstance(change, Change) else Change(**change)
                if change.change not in ("entered", "exited"):
                    raise ValueError(
                        f"change must be 'entered' or 'exited', got {change.change!r} "
                        f"(customer {change.customer_id!r}, segment {change.segment!r})"
                    )
                log_rows.append((str(change.customer_id), change.segment, change.change, naive_utc(change.at),
                                 _dumps(change.cause), change.source, recorded_at))
            self.db.insert_many(conn, membership_log, _LOGGED, log_rows)
            self._queue_for_subscribers(conn, wanted, log_rows, states, recorded_at)
            self._apply_to_membership(conn, log_rows)
            logged += len(log_rows)
        if states:
            as_of = naive_utc(at)
            for batch in _chunks(list(states.items()), WRITE_BATCH):
                self.db.insert_many(conn, customer_state, ("customer_id", "as_of", "values"),
                                    [(str(cid), as_of, _dumps(values)) for cid, values in batch],
                                    'ON CONFLICT (customer_id) DO UPDATE SET as_of = excluded.as_of, '
                                    '"values" = excluded."values"')
        if refresh is not None:
            self.record_refresh(conn, refresh, recorded_at)
        return logged

    @staticmethod
    def record_refresh(conn: Connection, refresh: dict, recorded_at: datetime | None = None) -> None:
        """The row of a batch refresh: {"as_of", "definitions_hash", "thresholds", "customers", "changes"}."""
        conn.execute(
            refreshes.insert(),
            {
                "as_of": naive_utc(refresh["as_of"]),
                "definitions_hash": refresh["definitions_hash"],
                "thresholds": _dumps(refresh["thresholds"]),
                "customers": int(refresh["customers"]),
                "changes": int(refresh["changes"]),
                "recorded_at": recorded_at or utc_now(),
            },
        )

    def _apply_to_membership(self, conn: Connection, log_rows: list[tuple]) -> None:
        """Membership after `log_rows` (`_LOGGED` tuples, in order): per (segment, customer) the last change counts;
        exits are deleted first, then entries inserted, so an exit followed by a re-entry ends as a member since
        the re-entry, and an entry of a member keeps its first entry time. Applied batch after batch, this is
        the same as applying all changes at once. Keys are sorted: B-tree inserts in order are the fastest."""
        last: dict[tuple[str, str], tuple[str, datetime]] = {}
        exited = set()
        for customer, segment, change, at, *_ in log_rows:
            last[(segment, customer)] = (change, at)
            if change == "exited":
                exited.add((segment, customer))
        self.db.delete_many(conn, membership, ("segment", "customer_id"), sorted(exited))
        entered = sorted((segment, customer, at) for (segment, customer), (change, at) in last.items()
                         if change == "entered")
        self.db.insert_many(conn, membership, ("segment", "customer_id", "entered_at"), entered,
                            "ON CONFLICT DO NOTHING")

    @staticmethod
    def _subscriptions(conn: Connection) -> list[tuple[str, set[str], set[str]]]:
        """(name, segments, changes) of every active webhook subscription."""
        active = conn.execute(select(subscriptions.c.name, subscriptions.c.segments, subscriptions.c.changes)
                              .where(subscriptions.c.active))
        return [(name, set(json.loads(segments)), set(json.loads(changes))) for name, segments, changes in active]

    @staticmethod
    def _queue_for_subscribers(conn: Connection, wanted: list, log_rows: list[tuple], states: dict[str, dict],
                               now: datetime) -> None:
        """An outbox row per change (a `_LOGGED` tuple) and active subscription that wants it, in the change's
        transaction."""
        rows = [{"subscription": name, "customer_id": customer, "segment": segment, "change": change, "at": at,
                 "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now, "payload": _dumps({
                     "customer_id": customer, "segment": segment, "change": change, "at": at,
                     "cause": json.loads(cause), "source": source, "values": _parsed(states.get(customer))})}
                for customer, segment, change, at, cause, source, _ in log_rows for name, segments, changes in wanted
                if segment in segments and change in changes]
        if rows:
            conn.execute(outbox.insert(), rows)

    def lock_customer(self, conn: Connection, customer_id: str) -> None:
        """Hold `customer_id` until `conn`'s transaction ends, so two writers evaluating the same customer (two events
        at once) take turns: the second reads the first one's committed memberships and states. Also waits for a
        refresh being written (`lock_for_refresh`), and holds one off until this transaction ends.

        SQLite needs nothing (transaction() already serializes writers); PostgreSQL takes transaction-level advisory
        locks: the refresh lock shared, then one on a stable 64-bit hash of the id.
        """
        if self.db.is_sqlite:
            return
        key = int.from_bytes(
            hashlib.blake2b(str(customer_id).encode(), digest_size=8).digest(), "big", signed=True
        )
        conn.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": _REFRESH_LOCK})
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def lock_for_refresh(self, conn: Connection) -> None:
        """Hold every customer until `conn`'s transaction ends: waits for the events being written to commit and
        holds new ones (and another refresh) off, so a refresh reconciles with the store as it is and writes alone.
        SQLite: transaction() has the database's write lock already."""
        if not self.db.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _REFRESH_LOCK})



class CurrentState:
    """The read models of now: current members and sizes, a customer's segments, evaluated states and history, the
    last refresh, and the posted records the event path rebuilds features from."""

    def __init__(self, db: Database):
        self.db = db
        self._reading, self._read, self._rows_for = db._reading, db._read, db._rows_for

    def last_posted_at(self, customer_id: str, conn: Connection | None = None) -> datetime | None:
        """The timestamp of the customer's latest posted record (None when they have none)."""
        query = select(func.max(posted_events.c.timestamp)).where(posted_events.c.customer_id == str(customer_id))
        with self._reading(conn) as reader:
            latest = reader.execute(query).scalar()
        return None if latest is None else pd.Timestamp(latest).to_pydatetime()

    def last_refresh_id(self, conn: Connection | None = None) -> int | None:
        """The id of the most recent refresh (ids only grow), None before the first: a cheap test of whether
        thresholds read from `last_refresh` are still the latest."""
        with self._reading(conn) as reader:
            return reader.execute(_LAST_REFRESH_ID).scalar()

    def last_refresh(self, conn: Connection | None = None) -> dict | None:
        """The most recently recorded refresh: id, as_of, definitions_hash, thresholds (dict), customers, changes,
        recorded_at; None before the first refresh."""
        query = select(refreshes).order_by(refreshes.c.id.desc()).limit(1)
        with self._reading(conn) as reader:
            row = reader.execute(query).mappings().first()
        if row is None:
            return None
        result = {
            key: row[key] for key in ("id", "as_of", "definitions_hash", "customers", "changes", "recorded_at")
        }
        result["thresholds"] = json.loads(row["thresholds"])
        return result

    def states(
        self, customer_ids: list[str] | None = None, conn: Connection | None = None
    ) -> StoredStates:
        """The values each customer was last evaluated on: customer_id -> values (all customers when ids is None),
        kept as stored and parsed when read."""
        query = select(customer_state.c.customer_id, customer_state.c["values"])
        with self._reading(conn) as reader:
            if customer_ids is None:
                return self.states_between(None, None, reader)
            return StoredStates(dict(self._rows_for(reader, query, customer_state.c.customer_id, customer_ids,
                                                    tuples=True)))

    def states_between(self, low: str | None, high: str | None, conn: Connection | None = None) -> StoredStates:
        """The stored states of the customers with `low <= id < high` (`Database.id_range`; None: unbounded), read
        through the driver's cursor: a refresh reads them a chunk of customers at a time."""
        where, parameters = self.db.id_range(low, high)
        with self._reading(conn) as reader:
            return StoredStates(dict(self.db.driver_rows(
                reader, f'SELECT customer_id, "values" FROM customer_state WHERE {where}', parameters)))

    def customer_mark(self, customer_id: str, conn: Connection | None = None) -> tuple:
        """What changes whenever anything writes this customer or thresholds: their posted records, latest logged
        change, evaluation time, and the last refresh. Equal marks = nothing read about them is stale."""
        cid = str(customer_id)
        # One statement of four scalar subqueries: an event reads the mark twice, and each statement is a round trip.
        query = select(
            select(func.count()).where(posted_events.c.customer_id == cid).scalar_subquery(),
            select(func.max(membership_log.c.seq)).where(membership_log.c.customer_id == cid).scalar_subquery(),
            select(customer_state.c.as_of).where(customer_state.c.customer_id == cid).scalar_subquery(),
            _LAST_REFRESH_ID.scalar_subquery(),
        )
        with self._reading(conn) as reader:
            return tuple(reader.execute(query).one())

    def stored_posted(self, rows: list[dict], conn: Connection | None = None) -> set[tuple[str, str]]:
        """The (kind, id) of `rows` already stored."""
        keys = {posted_key(row) for row in rows}
        query = select(posted_events.c.kind, posted_events.c.id)
        with self._reading(conn) as reader:
            found = {tuple(row) for chunk in _chunks(sorted({key[1] for key in keys}))
                     for row in reader.execute(query.where(posted_events.c.id.in_(chunk)))}
        return found & keys

    def evaluated_after(self, moment: datetime, conn: Connection | None = None) -> set[str]:
        """The customers whose last evaluation (their state's as_of) is later than `moment`."""
        query = select(customer_state.c.customer_id).where(customer_state.c.as_of > naive_utc(moment))
        with self._reading(conn) as reader:
            return set(reader.execute(query).scalars())

    def memberships(
        self, customer_ids: list[str] | None = None, conn: Connection | None = None
    ) -> pd.DataFrame:
        """Current members: columns segment, customer_id, entered_at, ordered by segment and customer."""
        query = select(membership.c.segment, membership.c.customer_id, membership.c.entered_at)
        with self._reading(conn) as reader:
            rows = self._rows_for(reader, query, membership.c.customer_id, customer_ids, tuples=True)
        frame = _frame(rows, ["segment", "customer_id", "entered_at"], datetimes=["entered_at"])
        return frame.sort_values(["segment", "customer_id"], ignore_index=True)

    def member_pairs(self, conn: Connection | None = None, low: str | None = None,
                     high: str | None = None) -> pd.DataFrame:
        """Every current member as (segment, customer_id), ordered so; with `low`/`high`, only the customers with
        `low <= id < high` (`Database.id_range`): what a refresh compares a chunk of customers with. Read through
        the driver's cursor, without SQLAlchemy's per-row processing (~5 s for 2.6M members)."""
        return _text_frame(self.member_pair_batches(conn, low, high), PAIR_COLUMNS)

    def member_pair_batches(self, conn: Connection | None = None, low: str | None = None,
                            high: str | None = None) -> Iterator[pa.RecordBatch]:
        """`member_pairs` as Arrow batches of FETCH_ROWS rows, for a reader that never holds them all."""
        sql, parameters = "SELECT segment, customer_id FROM membership ORDER BY segment, customer_id", ()
        if low is not None or high is not None:  # per segment through the key (segment, customer_id), as
            where, parameters = self.db.id_range(low, high)  # `segments_of` walks it
            sql = _MEMBERS_BETWEEN.format(where=where)
        with self._reading(conn) as reader:
            yield from self.db.driver_text_batches(reader, sql, parameters, PAIR_COLUMNS)

    def segments_of(self, customer_id: str, conn: Connection | None = None) -> list[str]:
        """The segments `customer_id` is a member of now, sorted (one customer's `memberships` without a frame)."""
        with self._reading(conn) as reader:
            return list(reader.execute(_SEGMENTS_OF, {"customer_id": str(customer_id)}).scalars())

    def posted(
        self,
        customer_ids: list[str] | None = None,
        before: datetime | None = None,
        conn: Connection | None = None,
    ) -> dict[str, pd.DataFrame]:
        """Posted rows as contract tables: {"transactions": frame, "events": frame}.

        Each frame holds the stored payload's fields as columns, with customer_id, timestamp and the id column
        (transaction_id / event_id) taken from the stored keys. Only timestamps strictly before `before` when given
        (as the feature definitions read records strictly before as_of).
        """
        records = self.posted_records(customer_ids, before, conn)
        result = {}
        for kind, name in KINDS.items():
            columns = None if records[name] else [ID_COLUMNS[kind], "customer_id", "timestamp"]
            result[name] = _frame(records[name], columns, ["timestamp"])
        return result

    def posted_records(
        self,
        customer_ids: list[str] | None = None,
        before: datetime | None = None,
        conn: Connection | None = None,
    ) -> dict[str, list[dict]]:
        """`posted` as lists of records (dicts, in time order) instead of frames: a few records are typed faster
        without a frame in between."""
        query = select(
            posted_events.c.kind,
            posted_events.c.id,
            posted_events.c.customer_id,
            posted_events.c.timestamp,
            posted_events.c.payload,
        )
        if before is not None:
            query = query.where(posted_events.c.timestamp < naive_utc(before))
        with self._reading(conn) as reader:
            rows = self._rows_for(reader, query, posted_events.c.customer_id, customer_ids)
        rows.sort(key=lambda row: (row["timestamp"], row["id"]))
        return {
            name: [
                {
                    **json.loads(row["payload"]),
                    ID_COLUMNS[kind]: row["id"],
                    "customer_id": row["customer_id"],
                    "timestamp": row["timestamp"],
                }
                for row in rows
                if row["kind"] == kind
            ]
            for kind, name in KINDS.items()
        }

    def customer(self, customer_id: str) -> dict:
        """{"customer_id", "segments": [{segment, entered_at}] by segment, "history": log rows newest first}."""
        segments_query = (
            select(membership.c.segment, membership.c.entered_at)
            .where(membership.c.customer_id == customer_id)
            .order_by(membership.c.segment)
        )
        history_query = (
            select(membership_log)
            .where(membership_log.c.customer_id == customer_id)
            .order_by(membership_log.c.at.desc(), membership_log.c.seq.desc())
        )
        with self._read() as conn:
            segments = [dict(row) for row in conn.execute(segments_query).mappings()]
            history = [_log_row(row) for row in conn.execute(history_query).mappings()]
        return {"customer_id": customer_id, "segments": segments, "history": history}

    def sizes(self) -> dict[str, int]:
        """Current members per segment (segments without members are absent)."""
        query = select(membership.c.segment, func.count()).group_by(membership.c.segment)
        with self._read() as conn:
            return {segment: int(size) for segment, size in conn.execute(query)}

    def segment_size(self, segment: str) -> int:
        """The number of current members of `segment`."""
        query = select(func.count()).select_from(membership).where(membership.c.segment == segment)
        with self._read() as conn:
            return int(conn.scalar(query))

    def member_page(self, segment: str, after: str | None, limit: int, conn: Connection) -> list[tuple]:
        """Up to `limit` current members of `segment` with customer_id > `after` (keyset paging, ordered by
        customer_id): (customer_id, entered_at, the values they were last evaluated on as JSON text or None)."""
        query = (select(membership.c.customer_id, membership.c.entered_at, customer_state.c["values"])
                 .select_from(membership.outerjoin(customer_state,
                                                   customer_state.c.customer_id == membership.c.customer_id))
                 .where(membership.c.segment == segment).order_by(membership.c.customer_id).limit(limit))
        if after is not None:
            query = query.where(membership.c.customer_id > after)
        return [tuple(row) for row in conn.execute(query)]

    def members(self, segment: str, limit: int = 100, offset: int = 0) -> list[dict]:
        """One page of `segment`'s current members, ordered by customer_id: [{customer_id, entered_at}]."""
        query = (
            select(membership.c.customer_id, membership.c.entered_at)
            .where(membership.c.segment == segment)
            .order_by(membership.c.customer_id)
            .limit(limit)
            .offset(offset)
        )
        with self._read() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

class ChangeLog:
    """The event log read as history: every entry and exit with its cause, membership at a past moment, daily
    counts and flows between segments."""

    def __init__(self, db: Database):
        self.db = db
        self._reading, self._read = db._reading, db._read

    def last_change_at(self, customer_id: str, conn: Connection | None = None) -> datetime | None:
        """The time of the customer's latest logged change (None when they have none)."""
        query = select(func.max(membership_log.c.at)).where(membership_log.c.customer_id == str(customer_id))
        with self._reading(conn) as reader:
            latest = reader.execute(query).scalar()
        return None if latest is None else pd.Timestamp(latest).to_pydatetime()

    def last_seq(self, conn: Connection | None = None) -> int:
        """The seq of the latest logged change (0 before any): a mark to ask later who changed since."""
        with self._reading(conn) as reader:
            return reader.execute(select(func.max(membership_log.c.seq))).scalar() or 0

    def change_page(self, segment: str, since: datetime, after_seq: int, limit: int,
                    conn: Connection) -> list[tuple]:
        """Up to `limit` entries and exits of `segment` at or after `since` with seq > `after_seq`, in recording
        order: (seq, customer_id, change, at, source, cause as JSON text)."""
        log = membership_log.c
        query = (select(log.seq, log.customer_id, log.change, log.at, log.source, log.cause)
                 .where(log.segment == segment, log.at >= naive_utc(since), log.seq > after_seq)
                 .order_by(log.seq).limit(limit))
        return [tuple(row) for row in conn.execute(query)]

    def customers_since(self, seq: int, conn: Connection | None = None) -> set[str]:
        """The customers with a change logged after `seq` (`last_seq`)."""
        query = select(membership_log.c.customer_id).where(membership_log.c.seq > seq).distinct()
        with self._reading(conn) as reader:
            return set(reader.execute(query).scalars())

    def log(
        self,
        segment: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        customer_id: str | None = None,
        newest: int | None = None,
    ) -> pd.DataFrame:
        """Membership changes in recording order: columns seq, customer_id, segment, change, at, cause (parsed JSON),
        source, recorded_at. `start` <= at < `end` when given; `newest`: only the latest that many, newest first."""
        query = select(membership_log).order_by(membership_log.c.seq.desc() if newest else membership_log.c.seq)
        if newest:
            query = query.limit(newest)
        if segment is not None:
            query = query.where(membership_log.c.segment == segment)
        if customer_id is not None:
            query = query.where(membership_log.c.customer_id == customer_id)
        if start is not None:
            query = query.where(membership_log.c.at >= naive_utc(start))
        if end is not None:
            query = query.where(membership_log.c.at < naive_utc(end))
        with self._read() as conn:
            rows = [_log_row(row) for row in conn.execute(query).mappings()]
        return _frame(rows, LOG_COLUMNS, datetimes=["at", "recorded_at"])

    def last_at(self, segment: str | None = None) -> datetime | None:
        """When the latest change of `segment` (of any segment when None) happened (its `at`), None without any."""
        query = select(func.max(membership_log.c.at))
        if segment is not None:
            query = query.where(membership_log.c.segment == segment)
        with self._read() as conn:
            return conn.execute(query).scalar()

    def membership_at(self, moment: datetime, segments: list[str] | None = None) -> pd.DataFrame:
        """Who was in which segment at `moment`, from the log: per (customer, segment) the latest change with
        at <= moment (ties by recording order) is "entered". Columns segment, customer_id."""
        return _text_frame(self.membership_batches_at(moment, segments), PAIR_COLUMNS)

    def membership_batches_at(self, moment: datetime, segments: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """`membership_at` as Arrow batches of FETCH_ROWS rows, for a reader that never holds them all."""
        query = _latest_changes(naive_utc(moment), segments)
        with self._read() as conn:  # 2.6M members: SQLAlchemy's Row per row took ~2 s of a report at 1M
            yield from self.db.plain_text_batches(conn, query, PAIR_COLUMNS)

    def sizes_at(self, moments: list[datetime]) -> pd.DataFrame:
        """Members per segment at each of `moments` (as `membership_at` would count them): index segment, one int
        column per moment, from one pass over the log (`daily_steps`)."""
        return sizes_at(self.daily_steps(moments), moments)

    def daily_changes(self, segment: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Per calendar day from `start`'s day up to `end` (exclusive; an end at midnight adds no day): customers
        who entered and exited `segment` that day and its size at the end of the day. Days with no change included.

        Only real changes count: a repeated "entered" for a customer already in (or "exited" for one already out)
        is ignored, so size always equals the previous size + entered - exited.
        """
        return daily_changes(self.daily_steps(segment=segment), start, end)

    def daily_steps(self, moments: list[datetime] = (), segment: str | None = None) -> pd.DataFrame:
        """The log as real changes per segment and calendar day, in one pass (of `segment`'s rows only when given):
        columns segment, day, entered, exited and, per moment of `moments`, the day's net change (+1 a row that
        takes a customer in, -1 one that takes them out, 0 a repeat: `_membership_steps`) counted up to that moment.
        `sizes_at` and `daily_changes` read it; a report reads it once for every segment."""
        moments = _distinct(moments)
        steps, entered, exited = _membership_steps(*([membership_log.c.segment == segment] if segment is not None else []))
        effect = case((entered, 1), (exited, -1), else_=0)
        day = func.date(steps.c.at)
        query = select(steps.c.segment, day.label("day"), func.sum(case((entered, 1), else_=0)),
                       func.sum(case((exited, 1), else_=0)),
                       *(func.sum(case((steps.c.at <= moment, effect), else_=0)) for moment in moments)
                       ).group_by(steps.c.segment, day)
        with self._read() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame([tuple(row) for row in rows], columns=["segment", "day", "entered", "exited", *moments])
        frame["day"] = pd.to_datetime(frame["day"])
        counts = ["entered", "exited", *moments]
        frame[counts] = frame[counts].fillna(0).astype("int64")
        return frame.sort_values(["segment", "day"], ignore_index=True)

    def flows(self, start: datetime, end: datetime, segments: list[str]) -> pd.DataFrame:
        """Customers moving between `segments` from `start` to `end`: columns from_segment, to_segment, customers.

        Compares each customer's set of (given) segments at `start` and at `end` (membership_at); customers whose set
        did not change are not counted. from_segment None: in none of them at start; to_segment None: in none at end;
        otherwise a customer in A at start and in B at end (A != B) counts A->B (with overlapping segments, once per
        such pair). Pairs with no customers are omitted; largest flows first.
        """
        at_start = self.membership_at(start, segments).groupby("customer_id")["segment"].agg(frozenset)
        at_end = self.membership_at(end, segments).groupby("customer_id")["segment"].agg(frozenset)
        counts: dict[tuple, int] = {}
        for customer in at_start.index.union(at_end.index):
            before = at_start.get(customer, frozenset())
            after = at_end.get(customer, frozenset())
            if before == after:
                continue
            pairs = (
                [(None, b) for b in after]
                if not before
                else [(a, None) for a in before]
                if not after
                else [(a, b) for a in before for b in after if a != b]
            )
            for pair in pairs:
                counts[pair] = counts.get(pair, 0) + 1
        # object columns: None (no segment) must stay None, not become NaN in a string column
        frame = pd.DataFrame(
            {
                "from_segment": pd.Series([pair[0] for pair in counts], dtype=object),
                "to_segment": pd.Series([pair[1] for pair in counts], dtype=object),
                "customers": pd.Series(list(counts.values()), dtype="int64"),
            }
        )
        return frame.sort_values(
            ["customers", "from_segment", "to_segment"], ascending=[False, True, True], na_position="first"
        ).reset_index(drop=True)


def sizes_at(steps: pd.DataFrame, moments: list[datetime]) -> pd.DataFrame:
    """Members per segment at each of `moments` from the log's `daily_steps` (with those moments): index segment,
    one int column per moment (a size is the sum of the net changes up to its moment)."""
    moments = _distinct(moments)
    if not moments:
        return pd.DataFrame(index=pd.Index([], name="segment"))
    return steps.groupby("segment")[moments].sum().astype("int64")


def daily_changes(steps: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """One segment's `daily_steps` as entries, exits and size per calendar day from `start`'s day up to `end`
    (exclusive; an end at midnight adds no day), days without a change included (`ChangeLog.daily_changes`)."""
    start, end = naive_utc(start), naive_utc(end)
    days = pd.date_range(pd.Timestamp(start).floor("D"), pd.Timestamp(end).ceil("D"), freq="D", inclusive="left")
    if len(days) == 0:
        return pd.DataFrame({"day": days, "entered": [], "exited": [], "size": []}, dtype="int64")
    counts = steps[["day", "entered", "exited"]]
    before = counts[counts["day"] < days[0]]
    size_before = int(before["entered"].sum() - before["exited"].sum())
    result = counts.set_index("day").reindex(days, fill_value=0).rename_axis("day").reset_index()
    result["size"] = size_before + (result["entered"] - result["exited"]).cumsum()
    return result.astype({"entered": "int64", "exited": "int64", "size": "int64"})


def _distinct(moments: list[datetime]) -> list[datetime]:
    """`moments` as naive UTC, each once, in order: the moment columns of `daily_steps` and `sizes_at`."""
    return list(dict.fromkeys(naive_utc(m) for m in moments))


def _latest_changes(moment: datetime, segments: list[str] | None):
    """SELECT segment, customer_id of members at `moment`: per (customer, segment) the latest log row at or before
    `moment`, by at then seq, is an "entered"."""
    log = membership_log
    rank = func.row_number().over(
        partition_by=(log.c.customer_id, log.c.segment), order_by=(log.c.at.desc(), log.c.seq.desc())
    )
    ranked = select(log.c.segment, log.c.customer_id, log.c.change, rank.label("rank"))
    ranked = ranked.where(log.c.at <= moment)
    if segments is not None:
        ranked = ranked.where(log.c.segment.in_(list(segments)))
    ranked = ranked.subquery()
    return (
        select(ranked.c.segment, ranked.c.customer_id)
        .where(ranked.c.rank == 1, ranked.c.change == "entered")
        .order_by(ranked.c.segment, ranked.c.customer_id)
    )


def _membership_steps(*where):
    """The log rows matching `where` (segment, at, change) as steps of membership: (subquery, entered, exited),
    where `entered` is true for a row that takes its customer into the segment (first row, or after an exit),
    `exited` for one that takes them out (after an entry), neither for a repeat of their state; in each customer's
    order of at, then recording (seq)."""
    log = membership_log
    previous = func.lag(log.c.change).over(partition_by=(log.c.customer_id, log.c.segment),
                                           order_by=(log.c.at, log.c.seq))
    steps = select(log.c.segment, log.c.at, log.c.change, previous.label("previous")).where(*where).subquery()
    entered = (steps.c.change == "entered") & (steps.c.previous.is_(None) | (steps.c.previous == "exited"))
    exited = (steps.c.change == "exited") & (steps.c.previous == "entered")
    return steps, entered, exited


def _log_row(row) -> dict:
    result = dict(row)
    result["cause"] = json.loads(result["cause"])
    return result


FETCH_ROWS = 100_000
PAIR_COLUMNS = ["segment", "customer_id"]  # what `member_pairs` and `membership_at` give


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while millions of acyclic objects are built: a refresh of a million
    customers builds millions of changes and rows and drops none until it ends, and the collector's passes over
    them found nothing and cost ~10 s; reading 2.6M memberships, 1.2 of 3.4 s (reference counting still frees
    everything; cycles made meanwhile are collected after)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _text_batches(cursor, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A cursor's rows of text columns as Arrow batches, fetched FETCH_ROWS at a time: the driver's tuples of a whole
    result (5.2M memberships of 2M customers) are never held at once (they took ~0.8 GB)."""
    schema = _text_schema(columns)
    while True:
        with paused_gc():
            rows = cursor.fetchmany(FETCH_ROWS)
            if not rows:
                return
            batch = pa.record_batch([pa.array(values, pa.string()) for values in zip(*rows, strict=True)],
                                    schema=schema)
        yield batch


def _text_frame(batches: Iterable[pa.RecordBatch], columns: list[str]) -> pd.DataFrame:
    """Arrow batches of text columns (`_text_batches`) as one frame."""
    return pa.Table.from_batches(list(batches), schema=_text_schema(columns)).to_pandas()


def _text_schema(columns: list[str]) -> pa.Schema:
    return pa.schema([(name, pa.string()) for name in columns])


def _frame(rows: list[dict], columns: list[str] | None, datetimes: tuple | list = ()) -> pd.DataFrame:
    """A frame of `rows` with exactly `columns` (also when empty; None: the rows' keys), datetime columns as naive
    datetime64."""
    frame = pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    for column in datetimes:
        frame[column] = pd.to_datetime(frame[column])
    return frame

"""The segment membership store (serving/segments/store.py), every test on SQLite and on PostgreSQL (the `store_url` fixture)."""

import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from serving.segments.store import DEFAULT_DB_URL, SegmentStore, StoreError, db_url

T0 = datetime(2026, 7, 1, 9, 30)
DAY = timedelta(days=1)


@pytest.fixture
def store(store_url):
    store = SegmentStore(store_url)
    yield store
    store.close()


def change(customer, segment, kind, at, cause=None, source="refresh"):
    return {
        "customer_id": customer,
        "segment": segment,
        "change": kind,
        "at": at,
        "cause": cause if cause is not None else {"condition": f"{segment} rule", "old": None, "new": 1},
        "source": source,
    }


def record(store, changes, states=None, at=T0, refresh=None):
    with store.transaction() as conn:
        return store.write.record(conn, changes, states or {}, at, refresh)


def posted_row(kind, id_, customer, timestamp, **payload):
    return {"kind": kind, "id": id_, "customer_id": customer, "timestamp": timestamp, "payload": payload}


# --- configuration ---------------------------------------------------------------------------------------------------


def test_db_url_reads_the_environment_and_maps_postgresql_to_psycopg(monkeypatch):
    monkeypatch.delenv("SEGMENTS_DB_URL", raising=False)
    assert db_url() == DEFAULT_DB_URL
    monkeypatch.setenv("SEGMENTS_DB_URL", "postgresql://u:p@db:5432/segments")
    assert db_url() == "postgresql+psycopg://u:p@db:5432/segments"
    monkeypatch.setenv("SEGMENTS_DB_URL", "sqlite:////var/lib/segments.db")
    assert db_url() == "sqlite:////var/lib/segments.db"


def test_unreachable_database_names_the_url_with_the_password_masked():
    with pytest.raises(
        StoreError, match=r"cannot open the segment store at postgresql\+psycopg://u:\*\*\*@127.0.0.1:1/x"
    ) as error:
        SegmentStore("postgresql://u:secret-pw@127.0.0.1:1/x")
    assert "secret-pw" not in str(error.value)


def test_unopenable_sqlite_file_names_the_url(tmp_path):
    with pytest.raises(StoreError, match="cannot open the segment store at sqlite:///.*/missing/segments.db"):
        SegmentStore(f"sqlite:///{tmp_path}/missing/segments.db")


def test_a_new_sqlite_store_opens_while_another_connection_holds_its_write_lock(tmp_path):
    """Two processes opening a new SQLite store at once (`segments serve --workers 2`, a refresh beside a starting
    service): SQLite does not wait on its busy timeout for the switch to WAL, which failed at once with "database
    is locked". The open waits for the lock instead."""
    import sqlite3

    path = tmp_path / "segments.db"
    locked, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        other.execute("ROLLBACK")
        other.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    assert locked.wait(10)
    threading.Timer(0.3, release.set).start()
    store = SegmentStore(f"sqlite:///{path}")  # opened once the other connection lets go
    try:
        assert release.is_set()
        assert store.current.last_refresh() is None
    finally:
        store.close()
        release.set()
        holder.join()


def test_display_url_masks_the_password(store, store_url):
    assert store.display_url.startswith(
        "sqlite" if store_url.startswith("sqlite") else "postgresql+psycopg://"
    )
    if store.url.password:
        assert store.url.password not in store.display_url and "***" in store.display_url


def test_opening_an_existing_store_keeps_its_rows(store, store_url):
    record(store, [change("c1", "vip", "entered", T0)])
    again = SegmentStore(store_url)
    assert again.current.segment_size("vip") == 1
    again.close()


# --- posted transactions and events ----------------------------------------------------------------------------------


def test_add_posted_is_idempotent_by_kind_and_id(store):
    rows = [
        posted_row("transaction", "t1", "c1", T0, amount=12.5, channel="web"),
        posted_row("transaction", "t1", "c1", T0, amount=99.0),  # repeated in the same post
        posted_row(
            "event", "t1", "c1", T0 + DAY, event_type="email_open"
        ),  # same id, other kind: a different row
        posted_row("transaction", "t2", "c2", T0 - DAY, amount=5),
    ]
    with store.transaction() as conn:
        assert store.write.add_posted(conn, rows) == [True, False, True, True]
    with store.transaction() as conn:  # a retried post with one new row
        assert store.write.add_posted(conn, rows[:1] + [posted_row("transaction", "t3", "c1", T0, amount=1)]) == [
            False,
            True,
        ]
    with store.transaction() as conn:
        assert store.write.add_posted(conn, rows) == [False, False, False, False]
        assert store.write.add_posted(conn, []) == []

    posted = store.current.posted()
    transactions, events = posted["transactions"], posted["events"]
    assert sorted(transactions["transaction_id"]) == ["t1", "t2", "t3"]
    first = transactions.set_index("transaction_id").loc["t1"]
    assert first["amount"] == 12.5 and first["channel"] == "web"  # the first post is the one kept
    assert first["timestamp"] == pd.Timestamp(T0)
    assert pd.api.types.is_datetime64_any_dtype(transactions["timestamp"])
    assert transactions["timestamp"].dt.tz is None
    assert list(events["event_id"]) == ["t1"] and events["event_type"].iloc[0] == "email_open"


def test_posted_filters_by_customer_and_before(store):
    with store.transaction() as conn:
        store.write.add_posted(
            conn,
            [
                posted_row("transaction", "t1", "c1", T0 - DAY, amount=1),
                posted_row(
                    "transaction", "t2", "c1", T0, amount=2
                ),  # at `before`: excluded (strictly before)
                posted_row("transaction", "t3", "c2", T0 - DAY, amount=3),
            ],
        )
    posted = store.current.posted(["c1"], before=T0)
    assert list(posted["transactions"]["transaction_id"]) == ["t1"]
    assert posted["events"].empty and {"event_id", "customer_id", "timestamp"} <= set(
        posted["events"].columns
    )
    assert store.current.posted([])["transactions"].empty


def test_aware_timestamps_are_stored_as_naive_utc(store):
    aware = datetime(2026, 7, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    with store.transaction() as conn:
        store.write.add_posted(conn, [posted_row("event", "e1", "c1", aware, event_type="visit")])
        store.write.record(conn, [change("c1", "vip", "entered", aware)], {}, aware)
    assert store.current.posted()["events"]["timestamp"].iloc[0] == pd.Timestamp(T0.replace(hour=9, minute=30))
    assert store.current.members("vip")[0]["entered_at"] == datetime(2026, 7, 1, 9, 30)


# --- recording changes -----------------------------------------------------------------------------------------------


def test_record_round_trips_memberships_causes_states_and_refresh(store):
    cause = [{"condition": "orders_count_14d >= 2", "old": 1, "new": 2}, {"condition": "spend_sum_14d > 100"}]
    refresh = {
        "as_of": T0,
        "definitions_hash": "abc123",
        "thresholds": {"churn_high": 0.6},
        "customers": 2,
        "changes": 3,
    }
    states = {"c1": {"orders_count_14d": 2, "churn_probability": 0.71}, "c2": {"orders_count_14d": 0}}
    assert store.current.last_refresh() is None
    logged = record(
        store,
        [
            change("c1", "frequent", "entered", T0, cause),
            change("c1", "at_risk", "entered", T0),
            change("c2", "at_risk", "entered", T0),
        ],
        states,
        refresh=refresh,
    )
    assert logged == 3
    assert store.current.states() == states
    assert store.current.states(["c2", "unknown"]) == {"c2": {"orders_count_14d": 0}}

    last = store.current.last_refresh()
    assert {key: last[key] for key in refresh} == refresh
    assert isinstance(last["recorded_at"], datetime) and last["recorded_at"].tzinfo is None

    later = T0 + DAY
    record(
        store,
        [
            change(
                "c1",
                "at_risk",
                "exited",
                later,
                {"condition": "churn >= 0.6", "old": 0.71, "new": 0.2},
                "event",
            )
        ],
        {"c1": {"churn_probability": 0.2}},
        at=later,
    )
    assert store.current.states(["c1"]) == {"c1": {"churn_probability": 0.2}}  # replaced, not merged

    memberships = store.current.memberships()
    assert list(memberships.columns) == ["segment", "customer_id", "entered_at"]
    assert memberships[["segment", "customer_id"]].values.tolist() == [["at_risk", "c2"], ["frequent", "c1"]]
    assert (memberships["entered_at"] == pd.Timestamp(T0)).all()
    assert store.current.memberships(["c1"])["segment"].tolist() == ["frequent"]

    c1 = store.current.customer("c1")
    assert c1["customer_id"] == "c1"
    assert c1["segments"] == [{"segment": "frequent", "entered_at": T0}]
    assert [(row["segment"], row["change"]) for row in c1["history"]] == [
        ("at_risk", "exited"),
        ("at_risk", "entered"),
        ("frequent", "entered"),
    ]  # newest first
    assert c1["history"][0]["cause"] == {"condition": "churn >= 0.6", "old": 0.71, "new": 0.2}
    assert c1["history"][0]["source"] == "event"
    assert c1["history"][-1]["cause"] == cause
    assert store.current.customer("nobody") == {"customer_id": "nobody", "segments": [], "history": []}

    assert (
        store.current.segment_size("at_risk") == 1
        and store.current.segment_size("frequent") == 1
        and store.current.segment_size("x") == 0
    )


def test_log_filters_and_columns(store):
    record(
        store,
        [
            change("c1", "a", "entered", T0),
            change("c2", "a", "entered", T0 + DAY),
            change("c1", "b", "entered", T0 + DAY),
        ],
    )
    record(store, [change("c1", "a", "exited", T0 + 2 * DAY)])
    log = store.changes.log()
    assert list(log.columns) == [
        "seq",
        "customer_id",
        "segment",
        "change",
        "at",
        "cause",
        "source",
        "recorded_at",
    ]
    assert log["seq"].is_monotonic_increasing and log["seq"].is_unique
    assert isinstance(log["cause"].iloc[0], dict)
    assert log["at"].dt.tz is None and log["recorded_at"].dt.tz is None
    assert len(store.changes.log(segment="a")) == 3
    assert store.changes.log(customer_id="c1")["segment"].tolist() == ["a", "b", "a"]
    window = store.changes.log(start=T0 + DAY, end=T0 + 2 * DAY)  # start inclusive, end exclusive
    assert sorted(window["customer_id"] + window["segment"]) == ["c1b", "c2a"]
    assert store.changes.log(segment="none").empty and list(store.changes.log(segment="none").columns) == list(log.columns)


def test_exit_then_reentry_in_one_call_and_repeated_entry(store):
    record(store, [change("c1", "vip", "entered", T0)])
    record(
        store, [change("c1", "vip", "entered", T0 + DAY)]
    )  # already a member: the first entry time is kept
    assert store.current.members("vip") == [{"customer_id": "c1", "entered_at": T0}]
    record(store, [change("c1", "vip", "exited", T0 + 2 * DAY), change("c1", "vip", "entered", T0 + 3 * DAY)])
    assert store.current.members("vip") == [{"customer_id": "c1", "entered_at": T0 + 3 * DAY}]
    record(store, [change("c2", "vip", "entered", T0), change("c2", "vip", "exited", T0 + DAY)])
    assert store.current.segment_size("vip") == 1


def test_changes_split_across_write_batches_end_as_one_call_would(store, monkeypatch):
    """`record` applies membership batch after batch (a first refresh logs millions of changes): an entry, exit and
    re-entry of the same customer falling in different batches end as if written at once."""
    import serving.segments.store as store_module

    monkeypatch.setattr(store_module, "WRITE_BATCH", 2)
    record(store, [change("c1", "vip", "entered", T0), change("c2", "vip", "entered", T0),
                   change("c1", "vip", "entered", T0 + DAY),  # a member already: the first entry time stays
                   change("c2", "vip", "exited", T0 + DAY), change("c3", "vip", "entered", T0 + DAY),
                   change("c3", "vip", "exited", T0 + 2 * DAY), change("c3", "vip", "entered", T0 + 3 * DAY)])
    assert store.current.members("vip") == [{"customer_id": "c1", "entered_at": T0},
                                            {"customer_id": "c3", "entered_at": T0 + 3 * DAY}]
    assert len(store.changes.log()) == 7


def test_large_writes_go_through_copy_and_store_every_value_as_small_ones(store, monkeypatch):
    """On PostgreSQL a write of COPY_MIN_ROWS rows or more goes through COPY (with a staging table where the write
    has ON CONFLICT, or deletes exits): text that COPY must escape, JSON causes, order, upserted states, kept entry
    times and exits all come back as written. Two writes in one transaction reuse the staging table's name."""
    import serving.segments.store as store_module

    monkeypatch.setattr(store_module, "COPY_MIN_ROWS", 2)
    awkward = "tab\there, new\nline, back\\slash \\N, 'quote' \"dq\", comma, é 😀"
    changes = [change(f"c{i}", "vip", "entered", T0, cause={"condition": awkward, "new": i}) for i in range(3)]
    with store.transaction() as conn:
        store.write.record(conn, changes, {f"c{i}": {"tier": awkward, "orders": i} for i in range(3)}, T0)
        store.write.record(conn, [change("c0", "vip", "entered", T0 + DAY), change("c1", "vip", "exited", T0 + DAY),
                                  change("c2", "vip", "exited", T0 + DAY), change("c9", "vip", "entered", T0 + DAY)],
                           {"c0": {"tier": "gold", "orders": 7}, "c9": {"tier": None, "orders": 1}}, T0 + DAY)
    log = store.changes.log()
    assert list(log["customer_id"]) == ["c0", "c1", "c2", "c0", "c1", "c2", "c9"]
    assert log["seq"].is_monotonic_increasing
    assert [cause["condition"] for cause in log["cause"][:3]] == [awkward] * 3
    assert store.current.members("vip") == [{"customer_id": "c0", "entered_at": T0},  # a member already: kept
                                            {"customer_id": "c9", "entered_at": T0 + DAY}]
    assert store.current.states(["c0", "c1", "c9"]) == {"c0": {"tier": "gold", "orders": 7},
                                                         "c1": {"tier": awkward, "orders": 1},
                                                         "c9": {"tier": None, "orders": 1}}


def test_missing_state_values_are_stored_as_null(store):
    import numpy as np

    states = {"c1": {"spend": np.float64("nan"), "last": pd.NaT, "tier": pd.NA, "orders": np.int64(3),
                     "at": pd.Timestamp("2026-07-01 09:30")}}
    record(store, [change("c1", "vip", "entered", T0)], states)
    assert store.current.states(["c1"])["c1"] == {"spend": None, "last": None, "tier": None, "orders": 3,
                                                  "at": "2026-07-01T09:30:00"}


def test_record_rejects_an_unknown_change(store):
    with pytest.raises(ValueError, match="change must be 'entered' or 'exited', got 'joined'.*customer 'c1'"):
        record(store, [change("c1", "vip", "joined", T0)])
    assert store.changes.log().empty


def test_an_exception_inside_a_transaction_writes_nothing(store):
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as conn:
        store.write.add_posted(conn, [posted_row("transaction", "t1", "c1", T0, amount=1)])
        store.write.record(
            conn,
            [change("c1", "vip", "entered", T0)],
            {"c1": {"x": 1}},
            T0,
            {"as_of": T0, "definitions_hash": "h", "thresholds": {}, "customers": 1, "changes": 1},
        )
        raise RuntimeError("boom")
    assert store.current.posted()["transactions"].empty
    assert store.current.memberships().empty and store.changes.log().empty and store.current.states() == {}
    assert store.current.last_refresh() is None
    with store.transaction() as conn:  # the post was not half-stored: it is new now
        assert store.write.add_posted(conn, [posted_row("transaction", "t1", "c1", T0, amount=1)]) == [True]


def test_concurrent_writers_wait_for_each_other(store, store_url):
    """Two writers (as two service workers) each read then write in one transaction, many times: on SQLite the
    second waits for the first (BEGIN IMMEDIATE) instead of failing with 'database is locked'."""
    errors = []

    def worker(name):
        own = SegmentStore(store_url)
        try:
            for i in range(15):
                with own.transaction() as conn:
                    own.write.add_posted(conn, [posted_row("event", f"{name}{i}", name, T0, event_type="visit")])
                    size = len(own.current.members("vip", limit=1000))  # a read in between, on another connection
                    own.write.record(conn, [change(f"{name}{i}", "vip", "entered", T0)], {name: {"seen": size}}, T0)
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.current.segment_size("vip") == 30 and len(store.current.posted()["events"]) == 30


def test_lock_customer_makes_read_then_write_per_customer_take_turns(store, store_url):
    """Two events for one customer at once: each decides from the stored membership whether the customer enters.
    With the lock, the second sees the first one's commit, so the entry is logged once."""
    start = threading.Barrier(2)

    def worker():
        own = SegmentStore(store_url)
        try:
            start.wait()
            with own.transaction() as conn:
                own.write.lock_customer(conn, "c1")
                if own.current.memberships(["c1"]).empty:
                    own.write.record(
                        conn, [change("c1", "vip", "entered", T0, source="event")], {"c1": {"x": 1}}, T0
                    )
        finally:
            own.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.changes.log(customer_id="c1")) == 1


# --- reads over time -------------------------------------------------------------------------------------------------


def test_membership_at_counts_a_change_at_exactly_the_moment(store):
    entered, exited = T0, T0 + DAY
    record(
        store,
        [
            change("c1", "vip", "entered", entered),
            change("c2", "vip", "entered", entered + DAY / 2),
            change("c1", "lapsed", "entered", exited),
        ],
    )
    record(store, [change("c1", "vip", "exited", exited)])
    tick = timedelta(microseconds=1)

    def members(moment, segments=None):
        frame = store.changes.membership_at(moment, segments)
        assert list(frame.columns) == ["segment", "customer_id"]
        return frame.values.tolist()

    assert members(entered - tick) == []
    assert members(entered) == [["vip", "c1"]]
    assert members(exited - tick) == [["vip", "c1"], ["vip", "c2"]]
    assert members(exited) == [["lapsed", "c1"], ["vip", "c2"]]
    assert members(exited, ["vip"]) == [["vip", "c2"]]
    assert members(exited, []) == []


def test_membership_at_orders_by_time_not_by_recording(store):
    # An event that happened earlier but was recorded later does not override a later change.
    record(store, [change("c1", "vip", "exited", T0 + DAY)])
    record(store, [change("c1", "vip", "entered", T0)])
    assert store.changes.membership_at(T0).values.tolist() == [["vip", "c1"]]
    assert store.changes.membership_at(T0 + DAY).empty


def test_daily_changes_sizes_at_the_end_of_each_day(store):
    start = datetime(2026, 7, 1)
    record(
        store,
        [change("c0", "vip", "entered", start - 5 * DAY), change("c9", "vip", "entered", start - 4 * DAY)],
    )
    record(store, [change("c9", "vip", "exited", start - 3 * DAY)])
    record(
        store,
        [
            change("c1", "vip", "entered", start + timedelta(hours=1)),
            change("c2", "vip", "entered", start + timedelta(hours=23)),
            change("c3", "other", "entered", start),
        ],
    )
    record(store, [change("c1", "vip", "entered", start + DAY)])  # a repeated entry is not a change
    record(
        store,
        [change("c0", "vip", "exited", start + 2 * DAY), change("c4", "vip", "entered", start + 2 * DAY)],
    )
    record(store, [change("c5", "vip", "entered", start + 4 * DAY)])  # at `end`: outside

    daily = store.changes.daily_changes("vip", start, start + 4 * DAY)
    assert list(daily.columns) == ["day", "entered", "exited", "size"]
    assert daily["day"].tolist() == [pd.Timestamp(start + i * DAY) for i in range(4)]
    assert daily["entered"].tolist() == [2, 0, 1, 0]
    assert daily["exited"].tolist() == [0, 0, 1, 0]
    assert daily["size"].tolist() == [3, 3, 3, 3]  # c0 from before, c1, c2; then c0 out, c4 in

    part = store.changes.daily_changes("vip", start + DAY + timedelta(hours=6), start + 2 * DAY + timedelta(hours=1))
    assert part["day"].tolist() == [pd.Timestamp(start + DAY), pd.Timestamp(start + 2 * DAY)]
    assert part["size"].tolist() == [3, 3]
    empty = store.changes.daily_changes("nobody", start, start + 2 * DAY)
    assert empty["size"].tolist() == [0, 0] and empty["entered"].tolist() == [0, 0]


def test_flows_between_segments(store):
    start, end = T0, T0 + 10 * DAY
    record(
        store,
        [
            change("a_to_b", "A", "entered", start - DAY),
            change("a_to_b2", "A", "entered", start - DAY),
            change("stays_a", "A", "entered", start - DAY),
            change("a_to_none", "A", "entered", start - DAY),
            change("none_to_a", "other", "entered", start + DAY),  # a segment not asked about
        ],
    )
    record(
        store,
        [
            change("a_to_b", "A", "exited", start + DAY),
            change("a_to_b", "B", "entered", start + DAY),
            change("a_to_b2", "A", "exited", start + 2 * DAY),
            change("a_to_b2", "B", "entered", end),  # at end: counts
            change("a_to_none", "A", "exited", start + DAY),
            change("none_to_a", "A", "entered", start + 3 * DAY),
            change("in_and_out", "B", "entered", start + DAY),
            change("in_and_out", "B", "exited", start + 2 * DAY),
        ],
    )
    flows = store.changes.flows(start, end, ["A", "B"])
    assert list(flows.columns) == ["from_segment", "to_segment", "customers"]
    assert flows.values.tolist() == [["A", "B", 2], [None, "A", 1], ["A", None, 1]]
    assert store.changes.flows(end + DAY, end + 2 * DAY, ["A", "B"]).empty


def test_members_pages_are_stable_and_complete(store):
    ids = [f"c{i:03d}" for i in range(25)]
    record(
        store,
        [change(customer, "vip", "entered", T0) for customer in reversed(ids)]
        + [change("z", "other", "entered", T0)],
    )
    pages = [store.current.members("vip", limit=10, offset=offset) for offset in (0, 10, 20)]
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [row["customer_id"] for page in pages for row in page] == ids
    assert pages[0] == store.current.members("vip", limit=10)  # the same page again
    assert pages[0][0] == {"customer_id": "c000", "entered_at": T0}
    assert store.current.members("vip", limit=10, offset=30) == []


def test_record_in_bulk(store):
    """A first refresh at a realistic scale goes through in one call (executemany, upserts in bulk)."""
    customers = [f"c{i:05d}" for i in range(2000)]
    segments = [f"s{j}" for j in range(10)]
    changes = [
        change(customer, segment, "entered", T0, {"condition": "score >= 0.5", "old": None, "new": 0.7})
        for i, customer in enumerate(customers)
        for j, segment in enumerate(segments)
        if (i + j) % 2 == 0
    ]
    states = {customer: {"score": 0.7, "orders_count_90d": i % 7} for i, customer in enumerate(customers)}
    refresh = {
        "as_of": T0,
        "definitions_hash": "h",
        "thresholds": {},
        "customers": 2000,
        "changes": len(changes),
    }
    assert record(store, changes, states, refresh=refresh) == 10_000
    assert len(store.current.memberships()) == 10_000 and len(store.changes.log()) == 10_000
    assert len(store.current.states()) == 2000 and store.current.segment_size("s0") == 1000
    assert len(store.current.states(customers[:7000])) == 2000

    exits = [change(row["customer_id"], row["segment"], "exited", T0 + DAY) for row in changes[::2]]
    states = {customer: {"score": 0.1} for customer in customers}
    assert record(store, exits, states, at=T0 + DAY) == 5000
    assert len(store.current.memberships()) == 5000 and len(store.changes.log()) == 15_000
    assert store.current.states([customers[0]]) == {customers[0]: {"score": 0.1}}
    assert len(store.changes.membership_at(T0)) == 10_000 and len(store.changes.membership_at(T0 + DAY)) == 5000


def test_whole_population_reads_match_the_per_customer_reads(store):
    """A refresh reads every member and state through the driver's cursor (`member_pairs`, `states()`): the same
    rows as the per-customer reads."""
    record(store, [change("c2", "vip", "entered", T0), change("c1", "vip", "entered", T0),
                   change("c1", "at_risk", "entered", T0)],
           {"c1": {"score": 0.5, "tier": None}, "c2": {"score": 0.25}})
    pairs = store.current.member_pairs()
    assert pairs.values.tolist() == [["at_risk", "c1"], ["vip", "c1"], ["vip", "c2"]]
    assert pairs.values.tolist() == store.current.memberships()[["segment", "customer_id"]].values.tolist()
    assert dict(store.current.states()) == dict(store.current.states(["c1", "c2"])) == {
        "c1": {"score": 0.5, "tier": None}, "c2": {"score": 0.25}}


def test_sizes_at_many_moments_count_what_membership_at_lists(store):
    """Sizes at every refresh come from one pass over the log: at each moment equal to `membership_at`'s count,
    with repeated entries, exits of non-members and a change recorded after a later one."""
    record(store, [change("c1", "vip", "entered", T0), change("c2", "vip", "entered", T0),
                   change("c3", "vip", "exited", T0), change("c1", "at_risk", "entered", T0)])
    record(store, [change("c1", "vip", "entered", T0 + DAY), change("c2", "vip", "exited", T0 + DAY),
                   change("c4", "vip", "entered", T0 + 2 * DAY)], at=T0 + DAY)
    record(store, [change("c4", "vip", "exited", T0 + 3 * DAY)])
    record(store, [change("c4", "at_risk", "entered", T0 + DAY)])  # recorded late, happened earlier
    moments = [T0 - DAY, T0, T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY]
    sizes = store.changes.sizes_at(moments)
    for moment in moments:
        expected = store.changes.membership_at(moment).groupby("segment").size()
        assert sizes[moment][sizes[moment] > 0].to_dict() == expected.to_dict(), moment
    assert sizes[T0 + 2 * DAY].to_dict() == {"at_risk": 2, "vip": 2}

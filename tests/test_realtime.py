"""The event path's feature row (`EventProcessor.features`) against the batch feature SQL, and its cached thresholds.

No models: a small generated programme, its history written as `segments build` writes it, and a processor whose
scoring bundle is empty (segments over scores are skipped; features and rule segments are what is tested here).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest

from features.build import FeatureQuery
from serving.http.request_features import typed_records
from serving.http.schemas import EventsRequest

AS_OF = datetime(2026, 7, 1)
# The batch table sums each customer's rows in parallel, the event path in one thread: the last bit may differ.
FLOAT_RTOL = 1e-12


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from features.pipeline import build_feature_table, load_validated
    from features.synthetic.generator import generate_tables, write_tables
    from serving.segments.events import write_history

    root = tmp_path_factory.mktemp("realtime")
    write_tables(generate_tables(300, 14, seed=5, end=AS_OF.date()), root / "data")
    validation = load_validated(root / "data")
    run = build_feature_table(validation, AS_OF)
    write_history(validation, run.query.columns, root)
    return {"root": root, "validation": validation, "run": run}


@pytest.fixture
def processor(served, store_url):
    """On each store backend (conftest's `store_url`): the event path reads inside the store's transaction."""
    from serving.scorer import Scorer
    from serving.segments.events import EventProcessor
    from serving.segments.store import SegmentStore
    from serving.state import ServingState
    from training.bundle import ScoringBundle

    run = served["run"]
    state = ServingState(served["root"], manifest={"columns": run.query.columns, "as_of": AS_OF.isoformat(),
                                                   "features": [f.name for f in run.query.features]},
                         table=run.table, scorer=Scorer(ScoringBundle(), {}), query=run.query)
    store = SegmentStore(store_url)
    yield EventProcessor(state, store)
    store.close()


def _customers(served, n: int) -> list[str]:
    """Customers with the most, a median number of and no transactions (the last: a customer row only)."""
    con = served["validation"].con
    counts = con.execute("SELECT c.customer_id, count(t.transaction_id) AS n FROM customers c LEFT JOIN "
                         "transactions t USING (customer_id) GROUP BY 1 ORDER BY n DESC, 1").df()
    picks = [*counts["customer_id"].iloc[: n // 2], *counts["customer_id"].iloc[len(counts) // 2:][: n // 2]]
    return [str(c) for c in [*picks, *counts.loc[counts["n"] == 0, "customer_id"].iloc[:1]]]


def test_event_rows_equal_the_batch_rows(served, processor):
    batch = served["run"].table.set_index("customer_id", drop=False)
    for customer in _customers(served, 12):
        row = processor.features(customer, [], AS_OF)
        expected = batch.loc[[customer]].reset_index(drop=True)
        pd.testing.assert_frame_equal(row, expected, check_exact=False, rtol=FLOAT_RTOL)
        assert row.attrs == expected.attrs


def test_posted_and_new_records_count_like_history(served, processor):
    """history + posted + hypothetical rows through the event path == the batch SQL over the same rows; a record
    with a history id replaces that history record."""
    validation, query = served["validation"], served["run"].query
    customer = _customers(served, 2)[0]
    history = {t: validation.con.execute(f"SELECT {', '.join(cols)} FROM {t} WHERE customer_id = ?",
                                         [customer]).df() for t, cols in query.columns.items()}
    replaced = history["transactions"]["transaction_id"].iloc[-1]
    posted = _rows({"transactions": [_transaction(customer, "posted-1", AS_OF + timedelta(hours=1), 80.0)]})
    processor.ingest(posted)
    as_of = AS_OF + timedelta(days=3)
    new = _rows({"transactions": [_transaction(customer, replaced, AS_OF + timedelta(days=1), 999.0)],
                 "events": [{"customer_id": customer, "event_id": "new-e", "event_type": "app_open",
                             "timestamp": (AS_OF + timedelta(days=2)).isoformat() + "Z"}]})

    row = processor.features(customer, new, as_of)

    extra = {"transactions": [r for r in [*posted, *new] if r["kind"] == "transaction"],
             "events": [r for r in new if r["kind"] == "event"]}
    frames = dict(history)
    frames["transactions"] = frames["transactions"][frames["transactions"]["transaction_id"] != replaced]
    for table, rows in extra.items():
        typed = typed_records(table, [{**r["payload"], "customer_id": customer} for r in rows], query.columns[table])
        frames[table] = pd.concat([frames[table], typed], ignore_index=True)
    expected = query.run_frames(frames, as_of)
    pd.testing.assert_frame_equal(row, expected, check_exact=False, rtol=FLOAT_RTOL)
    assert row["spend_sum_total"].iloc[0] != processor.features(customer, [], as_of)["spend_sum_total"].iloc[0]


def test_unknown_customer_gives_an_empty_row_of_catalog_dtypes(served, processor):
    row = processor.features("nobody", [], AS_OF)
    assert row.empty and list(row.columns) == list(served["run"].table.columns)
    assert row.dtypes.to_dict() == served["run"].table.dtypes.to_dict()


def test_sqlite_runner_equals_run_duckdb_on_edge_cases():
    """The request-time engine (the feature SQL compiled for SQLite, fed Python rows) and the batch path (DuckDB,
    Arrow) on the hand-made fixture of test_features: nulls, returns, customers with no records, records at and after
    as_of, and as_of just after a record (the event path's clock) or within a second of it."""
    from test_features import AS_OF as FIXTURE_AS_OF
    from test_features import FRAMES, _columns

    from features.build import SQLiteFeatureRunner

    query = FeatureQuery(_columns(FRAMES))
    runner = SQLiteFeatureRunner(query)
    rows = {name: [tuple(None if pd.isna(v) else v for v in row)  # pd.Timestamp is a datetime
                   for row in FRAMES[name][columns].astype(object).itertuples(index=False, name=None)]
            for name, columns in runner.columns.items()}
    con = duckdb.connect()
    for name, frame in FRAMES.items():
        con.register(name, frame)
    last = FRAMES["transactions"]["timestamp"].max().to_pydatetime()
    for as_of in (FIXTURE_AS_OF, FIXTURE_AS_OF - timedelta(days=200), datetime(2000, 1, 1),
                  last + timedelta(microseconds=1), last + timedelta(milliseconds=999), last):
        batch = query.run_duckdb(con, as_of)
        on_sqlite = runner.run(rows, as_of)
        pd.testing.assert_frame_equal(on_sqlite, batch, check_exact=False, rtol=FLOAT_RTOL)
        assert on_sqlite.attrs == batch.attrs


def test_runner_history_file_gives_the_rows_it_was_written_from(tmp_path):
    """One customer's rows read from the history file the event path reads (SQLite, text timestamps) give the
    batch path's row, on the edge-case fixture of test_features; posted rows replace history rows of their id."""
    from test_features import AS_OF as FIXTURE_AS_OF
    from test_features import FRAMES, _columns

    from features.build import SQLiteFeatureRunner, write_runner_history

    query = FeatureQuery(_columns(FRAMES))
    con = duckdb.connect()
    for name, frame in FRAMES.items():
        con.register(name, frame)
    write_runner_history(con, query.columns, tmp_path / "history.sqlite", batch_rows=3)  # several batches
    runner = SQLiteFeatureRunner(query, tmp_path / "history.sqlite")
    last = FRAMES["transactions"]["timestamp"].max().to_pydatetime()
    for as_of in (FIXTURE_AS_OF, last + timedelta(microseconds=1), last):
        batch = query.run_duckdb(con, as_of)
        for customer in FRAMES["customers"]["customer_id"]:  # a customer not known at as_of: no row in either
            row = runner.run_customer(customer, {}, as_of)
            expected = batch[batch["customer_id"] == customer].reset_index(drop=True)
            pd.testing.assert_frame_equal(row, expected, check_exact=False, rtol=FLOAT_RTOL)
    # A posted row with a history row's id replaces it: the same as the batch SQL without that history row.
    transactions = FRAMES["transactions"]
    customer = transactions["customer_id"].value_counts().index[0]
    mine = transactions[transactions["customer_id"] == customer]
    replaced = mine.iloc[0]
    names = runner.columns["transactions"]
    posted = replaced.copy()
    posted["amount"] = 12345.0
    row = runner.run_customer(customer, {"transactions": [tuple(None if pd.isna(posted[c]) else posted[c]
                                                                  for c in names)]}, FIXTURE_AS_OF)
    frames = {**FRAMES, "transactions": pd.concat([transactions.drop(index=replaced.name), posted.to_frame().T
                                                   .astype(transactions.dtypes.to_dict())], ignore_index=True)}
    expected = query.run_frames(frames, FIXTURE_AS_OF).set_index("customer_id", drop=False).loc[[customer]]
    pd.testing.assert_frame_equal(row, expected.reset_index(drop=True), check_exact=False, rtol=FLOAT_RTOL)
    assert row["spend_sum_total"].iloc[0] != runner.run_customer(customer, {}, FIXTURE_AS_OF)["spend_sum_total"].iloc[0]


def test_build_history_file_holds_every_clean_row_in_customer_order(served):
    """`write_history` copies the DuckDB history (sorted once) to SQLite in its stored order: every clean row,
    grouped by customer, so one customer's rows sit together on disk."""
    import sqlite3

    from serving.segments.events import RUNNER_HISTORY_FILE

    clean = served["validation"].con
    with sqlite3.connect(served["root"] / RUNNER_HISTORY_FILE) as history:
        for table in ("customers", "transactions", "events"):
            ids = [row[0] for row in history.execute(f"SELECT customer_id FROM {table} ORDER BY rowid")]
            assert len(ids) == clean.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0
            assert ids == sorted(ids), table


def test_a_history_file_replaced_under_the_processor_is_refused_by_new_threads(served, processor, tmp_path):
    """`segments build` into the served folder replaces history.sqlite. Runners attach it per thread, when the
    thread first needs it: a later thread would rebuild features from the new build beside the old models. It is
    refused and readiness says to restart; a runner attached before keeps reading the file it opened."""
    import dataclasses
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from serving.segments.events import RUNNER_HISTORY_FILE, EventProcessor, HistoryReplaced

    history = tmp_path / RUNNER_HISTORY_FILE
    shutil.copy(served["root"] / RUNNER_HISTORY_FILE, history)
    events = EventProcessor(dataclasses.replace(processor.state, directory=tmp_path), processor.store)
    customer = _customers(served, 2)[0]
    before = events.features(customer, [], AS_OF)  # this thread's runner attaches the file now
    assert events.history_problem() is None

    shutil.copy(history, tmp_path / "rebuilt")
    os.replace(tmp_path / "rebuilt", history)  # as `segments build` writes it: beside, then renamed
    problem = events.history_problem()
    assert problem is not None and "restart the service" in problem and str(history) in problem
    pd.testing.assert_frame_equal(events.features(customer, [], AS_OF), before)
    with ThreadPoolExecutor(1) as pool, pytest.raises(HistoryReplaced, match="restart the service"):
        pool.submit(events.features, customer, [], AS_OF).result()


def test_thresholds_are_read_again_after_a_new_refresh(processor):
    store = processor.store

    def refresh(thresholds: dict, day: int) -> None:
        with store.transaction() as conn:
            store.write.record(conn, [], {}, AS_OF, refresh={"as_of": AS_OF + timedelta(days=day), "thresholds": thresholds,
                                                       "definitions_hash": "h", "customers": 0, "changes": 0})

    with store.transaction() as conn:
        assert processor._thresholds(conn) == {}
    refresh({"spend_sum_365d in top 10%": 500.0}, 0)
    with store.transaction() as conn:
        assert processor._thresholds(conn) == {"spend_sum_365d in top 10%": 500.0}
        assert processor._thresholds(conn) == {"spend_sum_365d in top 10%": 500.0}
    refresh({"spend_sum_365d in top 10%": 650.0}, 1)
    with store.transaction() as conn:
        assert processor._thresholds(conn) == {"spend_sum_365d in top 10%": 650.0}


def test_an_event_answers_with_the_segments_the_store_holds(served, processor):
    customer = _customers(served, 2)[0]
    posted = _rows({"transactions": [_transaction(customer, f"big-{i}", AS_OF + timedelta(hours=i), 400.0)
                                     for i in range(3)]})
    first, again = processor.ingest(posted), processor.ingest(posted)
    assert first[0]["stored"] == [r["id"] for r in posted] and again[0]["duplicates"] == first[0]["stored"]
    held = sorted(processor.store.current.memberships([customer])["segment"])
    assert first[0]["segments"] == held and again[0]["segments"] == held and again[0]["changes"] == []


def test_segments_of_one_customer_equal_their_memberships(store_url):
    from serving.segments.store import SegmentStore

    store = SegmentStore(store_url)
    try:
        assert store.current.segments_of("c1") == []
        entered = [{"customer_id": f"c{i % 7}", "segment": f"s{i % 5}", "change": "entered", "at": AS_OF,
                    "cause": [], "source": "event"} for i in range(40)]
        exited = [{**entered[3], "change": "exited"}]
        with store.transaction() as conn:
            store.write.record(conn, entered + exited, {}, AS_OF)
            assert store.current.segments_of("c3", conn) == sorted(store.current.memberships(["c3"], conn)["segment"])
        for customer in [f"c{i}" for i in range(8)]:
            expected = sorted(store.current.memberships([customer])["segment"])
            assert store.current.segments_of(customer) == expected
        assert "s3" not in store.current.segments_of("c3") and store.current.segments_of("c7") == []
    finally:
        store.close()


def _transaction(customer: str, transaction_id: str, moment: datetime, amount: float) -> dict:
    return {"customer_id": customer, "transaction_id": transaction_id, "timestamp": moment.isoformat() + "Z",
            "amount": amount, "quantity": 1, "channel": "app"}


def _rows(body: dict) -> list[dict]:
    return EventsRequest.model_validate(body).rows()


# ---------------------------------------------------------------------------------------------------------------
# A batch refresh and events writing at the same time (issue 13, item 4): nothing lost, nothing out of order.

def _assert_log_agrees_with_membership(store) -> None:
    """Per (customer, segment) the log alternates entered/exited from an entry and its last change says whether the
    customer is a member; per customer the log's times never go back in recording order."""
    log = store.changes.log()
    members = set(zip(store.current.memberships()["segment"], store.current.memberships()["customer_id"]))
    for (customer, segment), rows in log.groupby(["customer_id", "segment"]):
        changes = rows.sort_values("seq")["change"].tolist()
        assert changes == ["entered", "exited"] * (len(changes) // 2) + ["entered"] * (len(changes) % 2), \
            (customer, segment, changes)
        assert ((segment, customer) in members) == (changes[-1] == "entered"), (customer, segment)
    assert members <= set(zip(log["segment"], log["customer_id"]))
    for customer, rows in log.groupby("customer_id"):
        assert rows.sort_values("seq")["at"].is_monotonic_increasing, customer


def _big_purchases(customer: str, start: datetime, n: int = 4) -> list[dict]:
    return _rows({"transactions": [_transaction(customer, f"{customer}-{start:%j%H}-{i}", start + timedelta(minutes=i),
                                                900.0) for i in range(n)]})


def test_a_refresh_reconciles_with_events_written_while_it_ran(served, processor):
    from features.segments import load_segments
    from serving.segments.refresh import apply_refresh, evaluate_population, plan_refresh

    store, table = processor.store, served["run"].table
    as_of = AS_OF + timedelta(days=1)
    earlier, later = _customers(served, 2)[:2]
    segments = load_segments()  # evaluated and compared with the empty store's snapshot:
    plan = plan_refresh(store, segments, evaluate_population(segments, table, None), as_of)
    moved = processor.ingest(_big_purchases(earlier, AS_OF + timedelta(hours=2)))[0]  # before as_of
    kept = processor.ingest(_big_purchases(later, as_of + timedelta(hours=2)))[0]  # after as_of
    assert moved["changes"] and kept["changes"]  # both entered segments while the refresh was being evaluated
    report = apply_refresh(store, plan)

    assert report.written and (report.kept_newer, report.reconciled) == (1, 1)
    _assert_log_agrees_with_membership(store)
    assert store.current.segments_of(later) == kept["segments"]  # newer than the refresh: left as the event left it
    assert set(store.changes.log(customer_id=later)["source"]) == {"event"}
    # The earlier customer: the event's changes first, then the refresh's, each computed against the one before.
    history = store.changes.log(customer_id=earlier)
    assert history["source"].tolist() == sorted(history["source"].tolist(), key=["event", "refresh"].index)
    log = store.changes.log()
    entered = log[(log["source"] == "refresh") & (log["change"] == "entered")]
    assert entered["customer_id"].nunique() > 100  # the rest of the population was written as planned


def test_events_on_threads_while_a_refresh_runs_lose_nothing(served, processor):
    import threading

    from features.segments import load_segments
    from serving.segments.refresh import refresh

    store, table = processor.store, served["run"].table
    as_of = AS_OF + timedelta(days=1)
    customers = [str(c) for c in table["customer_id"].iloc[:24]]
    answers, errors = [], []

    def post(group: list[str]) -> None:
        try:
            for i, customer in enumerate(group):  # alternately before and after the refresh's as_of
                answers.extend(processor.ingest(_big_purchases(customer, AS_OF + timedelta(hours=12 + 24 * (i % 2)))))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=post, args=(customers[k::2],)) for k in range(2)]
    for thread in threads:
        thread.start()
    report = refresh(store, load_segments(), table, None, as_of)
    for thread in threads:
        thread.join()

    assert not errors and report.written and len(answers) == len(customers)
    _assert_log_agrees_with_membership(store)
    for answer in answers:  # evaluated by an event after the refresh's as_of: the event's membership is the last word
        if answer["as_of"] > as_of:
            assert store.current.segments_of(answer["customer_id"]) == answer["segments"], answer["customer_id"]


def test_an_event_committed_while_another_was_evaluated_is_counted_by_both(served, processor, monkeypatch):
    """Events are evaluated outside the write lock, then written if nothing about the customer moved meanwhile.
    Here a second purchase of the same customer commits while the first is being evaluated: the first's write sees
    the customer moved and evaluates again inside its transaction, so its answer and the stored state count both."""
    customer = _customers(served, 2)[0]
    evaluate, calls = processor._evaluate, []

    def evaluate_with_a_concurrent_event(*args):
        calls.append(args[0])
        if len(calls) == 1:  # the first, optimistic evaluation: another event of the customer commits meanwhile
            processor.ingest(_big_purchases(customer, AS_OF + timedelta(hours=5), n=1))
        return evaluate(*args)

    before = processor.features(customer, [], AS_OF)["orders_count_14d"].iloc[0]
    monkeypatch.setattr(processor, "_evaluate", evaluate_with_a_concurrent_event)
    answer = processor.ingest(_big_purchases(customer, AS_OF + timedelta(hours=6), n=1))[0]

    assert len(calls) == 3  # first (optimistic), the concurrent one, the first again inside its transaction
    state = processor.store.current.states([customer])[customer]
    assert state["orders_count_14d"] == before + 2 and len(answer["stored"]) == 1
    _assert_log_agrees_with_membership(processor.store)


def test_events_of_one_customer_on_threads_are_all_counted(served, processor):
    import threading

    customer = _customers(served, 2)[0]
    before = processor.features(customer, [], AS_OF)["orders_count_14d"].iloc[0]
    errors = []

    def post(k: int) -> None:
        try:
            for i in range(3):
                processor.ingest(_big_purchases(customer, AS_OF + timedelta(hours=2 * i + k, minutes=k), n=1))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert processor.store.current.states([customer])[customer]["orders_count_14d"] == before + 6
    _assert_log_agrees_with_membership(processor.store)


def test_refreshes_and_events_queue_every_subscribed_change_for_webhooks(served, processor):
    """Issue 15: the outbox holds exactly the log's changes of the subscribed segments, from a refresh and from an
    event alike (written in their transactions), with the values the change was decided on."""
    from sqlalchemy import select

    from features.segments import load_segments
    from serving.segments.delivery import Subscription, sync_subscriptions
    from serving.segments.refresh import apply_refresh, evaluate_population, plan_refresh
    from serving.segments.store import outbox

    store, wanted = processor.store, ("lifecycle_active", "loyal", "vip")
    sync_subscriptions(store, [Subscription("crm", "http://127.0.0.1:9/hooks", wanted)])
    apply_refresh(store, plan_refresh(store, load_segments(),
                                      evaluate_population(load_segments(), served["run"].table, None), AS_OF))
    customer = _customers(served, 2)[1]
    event = processor.ingest(_big_purchases(customer, AS_OF + timedelta(hours=3)))[0]

    log = store.changes.log()
    subscribed = log[log["segment"].isin(wanted)]
    with store.db._read() as conn:
        queued = list(conn.execute(select(outbox).order_by(outbox.c.id)))
    assert {"refresh", "event"} <= set(subscribed["source"])
    assert [(r.customer_id, r.segment, r.change) for r in queued] == list(
        zip(subscribed["customer_id"], subscribed["segment"], subscribed["change"], strict=True))
    for row in queued:
        assert json.loads(row.payload)["values"] is not None
    assert [c["segment"] for c in event["changes"] if c["segment"] in wanted] == \
        [r.segment for r in queued if r.customer_id == customer and json.loads(r.payload)["source"] == "event"]

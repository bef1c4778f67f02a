"""Batch refresh of segment membership against a real store (SQLite and PostgreSQL): entries and exits with causes,
time-window exits without new events, idempotency, order of refreshes, removed segments, sizes of the defaults."""

from datetime import datetime

import pandas as pd
import pytest

from features.pipeline import build_feature_table, load_validated
from features.segments import load_segments, parse_segments
from serving.segments.refresh import RefreshOrderError, refresh
from serving.segments.store import SegmentStore

LOYAL = """
segments:
  loyal:
    description: At least 2 purchases in the last 14 days, totalling over 100
    when: {all: [orders_count_14d >= 2, spend_sum_14d > 100]}
  big_spender:
    when: spend_sum_365d >= 500
  loyal_big_spender:
    when: {all: [segment loyal, segment big_spender]}
"""


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Three customers: `a` buys twice in late June (loyal on July 1, out by July 15 with no new event), `b` buys
    once in June and twice in July (enters loyal on July 15), `c` spends 600 once (big spender only)."""
    folder = tmp_path_factory.mktemp("small")
    pd.DataFrame({"customer_id": ["a", "b", "c"]}).to_csv(folder / "customers.csv", index=False)
    pd.DataFrame({
        "transaction_id": ["a1", "a2", "b1", "b2", "b3", "c1"],
        "customer_id": ["a", "a", "b", "b", "b", "c"],
        "timestamp": ["2026-06-20 10:00", "2026-06-25 10:00", "2026-06-10 10:00", "2026-07-05 10:00",
                      "2026-07-10 10:00", "2026-03-01 10:00"],
        "amount": [80.0, 70.0, 30.0, 60.0, 55.0, 600.0]}).to_csv(folder / "transactions.csv", index=False)
    return load_validated(folder, run_time=datetime(2026, 8, 1))


def run(store, validation, as_of: str, text: str = LOYAL):
    when = datetime.fromisoformat(as_of)
    return refresh(store, parse_segments(text), build_feature_table(validation, when).table, None, when)


def test_refresh_records_entries_and_exits_with_causes(store_url, small_data):
    store = SegmentStore(store_url)
    first = run(store, small_data, "2026-07-01")
    assert first.written and set(store.current.memberships()["segment"] + ":" + store.current.memberships()["customer_id"]) == {
        "loyal:a", "big_spender:c"}
    second = run(store, small_data, "2026-07-15")
    log = store.changes.log(start=datetime(2026, 7, 15))
    moves = {(r.customer_id, r.segment, r.change) for r in log.itertuples()}
    assert moves == {("a", "loyal", "exited"), ("b", "loyal", "entered")}
    assert second.changes == 2
    exit_cause = log[log["customer_id"] == "a"]["cause"].iloc[0]
    # the 14-day window passed without any new event: both conditions flipped, with their old and new values
    assert {(c["field"], c["old"], c["new"]) for c in exit_cause} == {("orders_count_14d", 2, 0),
                                                                      ("spend_sum_14d", 150.0, 0.0)}
    enter_cause = log[log["customer_id"] == "b"]["cause"].iloc[0]
    assert [(c["field"], c["old"], c["new"]) for c in enter_cause] == [("orders_count_14d", 0, 2),
                                                                       ("spend_sum_14d", 0.0, 115.0)]
    assert "Purchases in the last 14 days 0 -> 2" in enter_cause[0]["text"]
    store.close()


def test_refreshing_the_same_as_of_again_writes_nothing(store_url, small_data):
    store = SegmentStore(store_url)
    run(store, small_data, "2026-07-01")
    log_rows, states = len(store.changes.log()), store.current.states()
    again = run(store, small_data, "2026-07-01")
    assert not again.written and again.changes == 0
    assert len(store.changes.log()) == log_rows and store.current.states() == states
    store.close()


def test_a_refresh_before_the_last_one_is_refused(store_url, small_data):
    store = SegmentStore(store_url)
    run(store, small_data, "2026-07-15")
    with pytest.raises(RefreshOrderError, match="would rewrite history"):
        run(store, small_data, "2026-07-01")
    store.close()


def test_a_segment_referring_to_another_moves_with_it_and_says_why(store_url, small_data):
    store = SegmentStore(store_url)
    text = LOYAL.replace("spend_sum_365d >= 500", "spend_sum_365d >= 100")  # a (150) and c (600) are big spenders
    run(store, small_data, "2026-07-01", text)
    assert {s["segment"] for s in store.current.customer("a")["segments"]} == {"loyal", "big_spender", "loyal_big_spender"}
    run(store, small_data, "2026-07-15", text)
    moves = store.changes.log(segment="loyal_big_spender", start=datetime(2026, 7, 15))
    assert dict(zip(moves["customer_id"], moves["change"], strict=True)) == {"a": "exited", "b": "entered"}
    exits = moves[moves["customer_id"] == "a"]
    assert exits["cause"].iloc[0][0]["field"] == "segment loyal" and exits["cause"].iloc[0][0]["new"] is False
    store.close()


def test_members_of_a_removed_segment_exit(store_url, small_data):
    store = SegmentStore(store_url)
    run(store, small_data, "2026-07-01")
    run(store, small_data, "2026-07-02", "segments:\n  loyal: {when: {all: [orders_count_14d >= 2]}}\n")
    removed = store.changes.log(segment="big_spender", start=datetime(2026, 7, 2))
    assert removed["customer_id"].tolist() == ["c"] and removed["change"].tolist() == ["exited"]
    assert "no longer in the definitions" in removed["cause"].iloc[0][0]["text"]
    store.close()


def test_default_segments_have_sensible_sizes_on_generated_data(tmp_path, generated_validation):
    """Rule segments of the shipped file on the generated programme (4,000 customers): none empty, none everyone,
    lifecycle stages disjoint, and VIP the top-20% on two measures (so at most 20%)."""
    as_of = datetime(2026, 7, 1)
    features = build_feature_table(generated_validation, as_of).table
    store = SegmentStore(f"sqlite:///{tmp_path / 'segments.db'}")
    report = refresh(store, load_segments(), features, None, as_of)
    sizes = report.sizes.set_index("segment")["members"] / len(features)
    for name in ("loyal", "vip", "inactive", "serial_returners", "lifecycle_new", "lifecycle_active",
                 "lifecycle_lapsing", "lifecycle_lapsed", "lifecycle_reactivated", "engaged_non_buyers"):
        assert 0.003 < sizes[name] < 0.6, (name, sizes[name])
    assert sizes["vip"] <= 0.2
    stages = store.current.memberships()
    stages = stages[stages["segment"].str.startswith("lifecycle_")]
    assert not stages["customer_id"].duplicated().any()
    assert set(report.skipped) == {"likely_to_churn", "at_risk_vip", "best_members_lookalike", "cluster",
                                   "persuadable"}
    holdout_share = report.sizes["holdout"].sum() / report.sizes["members"].sum()
    assert 0.07 < holdout_share < 0.13
    store.close()


def test_a_population_is_kept_on_disk_in_customer_order_until_closed(small_data):
    """Issue 14: a refresh's evaluated population lives in a temporary file, read a chunk of customers at a time
    with the id range each chunk covers; customers out of id order are refused (the ranges rely on it)."""
    from serving.segments.refresh import evaluate_batches, evaluate_population

    features = build_feature_table(small_data, datetime(2026, 7, 1)).table
    population = evaluate_population(parse_segments(LOYAL), features.iloc[::-1], None)  # sorted on the way in
    assert population.read()["customer_id"].tolist() == ["a", "b", "c"] and population.rows == 3
    chunks = [(values["customer_id"].tolist(), membership["loyal"].tolist(), low, high)
              for values, membership, low, high in population.id_chunks(rows=2)]
    assert chunks == [(["a", "b"], [True, False], None, "c"), (["c"], [False], "c", None)]
    assert population.count_of({"b", "c", "x"}) == 2 and population.rows_of({"c"})["customer_id"].tolist() == ["c"]
    population.close()
    assert not population.path.exists()

    unordered, _ = evaluate_batches(parse_segments(LOYAL), [features.iloc[::-1]], None)
    with pytest.raises(ValueError, match="customer-id order"):
        list(unordered.chunks())
    unordered.close()


def test_a_refresh_in_chunks_writes_what_one_chunk_writes(store_url, tmp_path, monkeypatch, generated_validation):
    """Issue 14: a refresh compares a chunk of customers at a time with the store (their stored members and states
    read by id range) and spills the chunk's changes to disk. Chunks of 97 customers write the same log, membership
    and states as one chunk: over ids whose order differs by case, punctuation and accents (ranges compare code
    points on both backends), a customer the second population no longer has, and a segment removed from it."""
    import serving.segments.refresh as refresh_module

    def relabelled(as_of: datetime, drop: int = 0) -> pd.DataFrame:
        table = build_feature_table(generated_validation, datetime.fromisoformat(as_of)).table
        marks = ["a", "B", "_", "é", "Z-", "a.", "ä"]
        table["customer_id"] = [f"{marks[i % len(marks)]}{i}" for i in range(len(table))]
        return table.iloc[drop:].reset_index(drop=True)

    if store_url.startswith("postgresql"):
        _order_text_by_locale(store_url)
    first, second = relabelled("2026-05-01"), relabelled("2026-06-01", drop=3)
    shipped = load_segments()
    fewer = parse_segments(shipped.text.replace("  inactive:", "  inactive_removed_now:", 1))  # one gone, one new
    assert set(shipped.names()) - set(fewer.names()) == {"inactive"}

    def written(url: str, chunk: int) -> tuple:
        monkeypatch.setattr(refresh_module, "PLAN_CHUNK", chunk)
        store = SegmentStore(url)
        reports = [refresh(store, shipped, first, None, datetime(2026, 5, 1)),
                   refresh(store, fewer, second, None, datetime(2026, 6, 1))]
        log = store.changes.log()
        rows = sorted(zip(log["customer_id"], log["segment"], log["change"], log["at"], log["cause"].map(repr),
                          log["source"], strict=True))
        members = store.current.memberships().drop(columns="entered_at")
        result = (rows, members.values.tolist(), dict(store.current.states()),
                  [r.sizes.to_dict("records") for r in reports])
        store.close()
        return result

    in_chunks = written(store_url, 97)
    whole = written(f"sqlite:///{tmp_path / 'whole.db'}", 10**9)
    for got, expected in zip(in_chunks, whole, strict=True):  # log, membership, states, size tables
        assert len(got) == len(expected) and got == expected
    log = in_chunks[0]
    assert len({row[0] for row in log}) > 1000 and any(row[1] == "inactive" and row[2] == "exited" for row in log)


def _order_text_by_locale(url: str) -> None:
    """Make the (empty) PostgreSQL test database order text by an English ICU locale (`a1 < B1 < Z-4`), not by code
    point as `.ci/run`'s server does (`B1 < Z-4 < a1`), as many installations do."""
    import os

    from sqlalchemy import create_engine, make_url

    name = make_url(url).database
    admin = create_engine(make_url(url).set(database=make_url(os.environ["SEGMENTS_TEST_PG_URL"]).database),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}"')
        conn.exec_driver_sql(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                             "LOCALE 'C'")
    admin.dispose()

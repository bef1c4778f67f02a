"""The segment language: parsing and checking definitions, every operator, nesting, references, causes, holdouts."""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from features.segments import (
    Fields,
    SegmentDefinitionError,
    causes,
    evaluate,
    fit_thresholds,
    in_holdout,
    load_segments,
    parse_segments,
)


def seg(when: str, kind: str = "rule") -> str:
    return f"segments:\n  s:\n    kind: {kind}\n    when: {when}\n"


VALUES = pd.DataFrame({
    "customer_id": ["a", "b", "c", "d"],
    "orders_count_90d": pd.array([0, 2, 5, None], dtype="Int64"),
    "region": pd.array(["north", "south", None, "north"], dtype="string"),
    "loyalty_member": pd.array([True, False, None, True], dtype="boolean"),
    "churn_band": ["high", "low", "medium", "high"],
})


def members(when: str, values: pd.DataFrame = VALUES, kind: str = "rule") -> list[str]:
    segments = parse_segments(seg(when, kind))
    result = evaluate(segments, values, fit_thresholds(segments, values))
    return result.index[result["s"].to_numpy()].tolist()


@pytest.mark.parametrize(("when", "expected"), [
    ("orders_count_90d > 2", ["c"]),
    ("orders_count_90d >= 2", ["b", "c"]),
    ("orders_count_90d < 2", ["a"]),          # d is missing: a missing value fails every comparison
    ("orders_count_90d <= 2", ["a", "b"]),
    ("orders_count_90d == 0", ["a"]),
    ("orders_count_90d != 0", ["b", "c"]),
    ("'orders_count_90d between [2, 5]'", ["b", "c"]),  # inclusive at both ends
    ("'region in [north, east]'", ["a", "d"]),
    ("'region not in [north]'", ["b"]),
    ("region is null", ["c"]),
    ("region is not null", ["a", "b", "d"]),
    ("region == south", ["b"]),
    ("loyalty_member == true", ["a", "d"]),
    ("loyalty_member != true", ["b"]),
    ("orders_count_90d in top 34%", ["c"]),    # quantile 0.66 of [0, 2, 5] = 2.64 -> only c
    ("orders_count_90d in bottom 34%", ["a"]),
])
def test_every_operator(when, expected):
    assert members(when) == expected


def test_all_any_not_nest():
    when = "{any: [orders_count_90d >= 5, {all: [region == north, {not: loyalty_member == false}]}]}"
    assert members(when) == ["a", "c", "d"]
    assert members("{not: orders_count_90d >= 2}") == ["a", "d"]  # not of a comparison holds for a missing value


def test_predictive_segments_read_model_outputs_and_other_segments():
    text = ("segments:\n  north: {when: region == north}\n"
            "  at_risk_north: {kind: predictive, when: {all: [segment north, churn_band == high]}}\n")
    segments = parse_segments(text)
    result = evaluate(segments, VALUES, {})
    assert result["at_risk_north"].tolist() == [True, False, False, True]


@pytest.mark.parametrize(("text", "message"), [
    (seg("orders_cnt_90d >= 2"), "unknown field 'orders_cnt_90d' (did you mean orders_count_90d"),
    (seg("orders_count_90d => 2"), "expected '<field> <operator> <value>'"),
    (seg("orders_count_90d >= two"), "orders_count_90d takes a number, got 'two'"),
    (seg("region > 3"), "> needs a numeric field; region is string"),
    (seg("'orders_count_90d between [5, 2]'"), "low is above high"),
    (seg("'orders_count_90d between [1]'"), "between takes [low, high]"),
    (seg("'region in []'"), "in takes a non-empty list"),
    (seg("churn_band == hihg", "predictive"), "churn_band takes one of low, medium, high"),
    (seg("churn_band == high"), "churn_band is a model output; use kind: predictive"),
    (seg("loyalty_member > 1"), "needs a numeric field"),
    (seg("orders_count_90d in top 120%"), "percentage in (0, 100)"),
    (seg("segment nope"), "no segment named 'nope'"),
    ("segments:\n  s: {kind: magic, when: orders_count_90d > 1}\n", "unknown kind 'magic'"),
    ("segments:\n  s: {when: orders_count_90d > 1, colour: red}\n", "unknown key 'colour'"),
    ("segments:\n  Bad-Name: {when: orders_count_90d > 1}\n", "names are lower case"),
    ("segments:\n  s: {kind: lookalike}\n", "needs `seed:`"),
    ("segments: [a, b]\n", "non-empty `segments:` mapping"),
    ("segments: {s: {when: [}\n", "not valid YAML"),
])
def test_definition_errors_name_segment_and_condition(text, message):
    with pytest.raises(SegmentDefinitionError) as error:
        parse_segments(text, "mine.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("mine.yaml:")


def test_cycles_are_refused_with_the_path():
    text = ("segments:\n  a: {when: {all: [segment b, orders_count_90d > 0]}}\n  b: {when: segment c}\n"
            "  c: {when: segment a}\n")
    with pytest.raises(SegmentDefinitionError, match=r"cycle: a -> b -> c -> a"):
        parse_segments(text)


def test_all_problems_are_reported_at_once():
    text = "segments:\n  s: {when: nope > 1}\n  t: {when: region >= 2}\n"
    with pytest.raises(SegmentDefinitionError) as error:
        parse_segments(text)
    assert len(error.value.problems) == 2


def test_segments_without_their_data_or_model_are_skipped_with_a_reason():
    segments = load_segments()
    usable, skipped = segments.resolve(Fields.of(["orders_count_90d", "orders_count_14d", "spend_sum_14d"], [], None))
    assert "loyal" in usable.names() and "inactive" in usable.names()
    assert "churn_band" in skipped["likely_to_churn"] and "train" in skipped["likely_to_churn"]
    assert "engagement_events_90d" in skipped["engaged_non_buyers"]
    assert "refers to vip" in skipped["at_risk_vip"] or "churn_band" in skipped["at_risk_vip"]
    assert skipped["cluster"].startswith("no cluster model")


def test_cluster_segments_expand_to_one_per_cluster():
    segments = parse_segments("segments:\n  cluster: {kind: cluster}\n")
    fields = Fields.of(["orders_count_90d"], ["cluster_id", "cluster_name"], {0: "bargain hunters", 1: "loyal"})
    usable, skipped = segments.resolve(fields)
    assert usable.names() == ["cluster_0", "cluster_1"] and not skipped
    values = pd.DataFrame({"customer_id": ["a", "b"], "cluster_id": [1, 0], "cluster_name": ["loyal", "x"]})
    assert evaluate(usable, values, {})["cluster_1"].tolist() == [True, False]


def test_the_default_file_has_the_promised_segments():
    names = load_segments().names()
    for name in ("loyal", "vip", "inactive", "serial_returners", "likely_to_churn", "at_risk_vip", "lifecycle_new",
                 "lifecycle_active", "lifecycle_lapsing", "lifecycle_lapsed", "lifecycle_reactivated",
                 "engaged_non_buyers", "best_members_lookalike", "cluster"):
        assert name in names
    assert names.index("vip") < names.index("at_risk_vip")  # evaluation order follows references


def test_causes_name_the_flipped_condition_with_old_and_new_values():
    segments = parse_segments("segments:\n  loyal: {when: {all: [orders_count_14d >= 2, spend_sum_14d > 100]}}\n")
    old = pd.DataFrame({"customer_id": ["a", "b"], "orders_count_14d": [1, 3], "spend_sum_14d": [150.0, 150.0]})
    new = pd.DataFrame({"customer_id": ["a", "b"], "orders_count_14d": [2, 3], "spend_sum_14d": [150.0, 90.0]})
    found = causes(segments["loyal"], old, new, {}, {}, {}, {})
    assert found[0] == [{"condition": "orders_count_14d >= 2", "field": "orders_count_14d", "old": 1, "new": 2,
                         "text": "Purchases in the last 14 days 1 -> 2 (orders_count_14d >= 2: now true)"}]
    assert [(c["field"], c["old"], c["new"]) for c in found[1]] == [("spend_sum_14d", 150.0, 90.0)]


def test_holdout_is_deterministic_about_the_share_and_independent_of_membership():
    ids = [f"c{i}" for i in range(20_000)]
    held = in_holdout(ids, "vip", 10)
    assert abs(held.mean() - 0.10) < 0.01
    assert np.array_equal(held[:100], in_holdout(ids[:100], "vip", 10))  # stable for any subset of members
    assert not np.array_equal(held, in_holdout(ids, "loyal", 10))          # a different draw per segment
    assert in_holdout(ids, "vip", 0).sum() == 0


def test_window_conditions_at_their_boundaries(tmp_path):
    """An order exactly 14 days before as_of counts in the 14-day window; one microsecond earlier it does not."""
    from features.pipeline import build_feature_table, load_validated

    as_of = datetime(2026, 7, 1)
    customers = pd.DataFrame({"customer_id": ["in", "out"], "signup_date": ["2026-01-01", "2026-01-01"]})
    transactions = pd.DataFrame({
        "transaction_id": ["t1", "t2", "t3", "t4"], "customer_id": ["in", "in", "out", "out"],
        "timestamp": ["2026-06-17 00:00:00", "2026-06-30 12:00:00", "2026-06-16 23:59:59.999999",
                      "2026-06-30 12:00:00"],
        "amount": [60.0, 60.0, 60.0, 60.0]})
    events = pd.DataFrame(columns=["event_id", "customer_id", "timestamp", "event_type"])
    folder = tmp_path / "data"
    folder.mkdir()
    for name, frame in (("customers", customers), ("transactions", transactions), ("events", events)):
        frame.to_csv(folder / f"{name}.csv", index=False)
    features = build_feature_table(load_validated(folder, run_time=as_of), as_of).table
    loyal = parse_segments("segments:\n  loyal: {when: {all: [orders_count_14d >= 2, spend_sum_14d > 100]}}\n")
    result = evaluate(loyal, features, {})
    assert result.loc["in", "loyal"] and not result.loc["out", "loyal"]

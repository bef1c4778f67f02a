"""The segment language: parsing and checking definitions, every operator, nesting, references, causes, holdouts."""

import math
import operator
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from features.catalog import FEATURES_BY_NAME
from features.segments import (
    SINGLE_OUTPUTS,
    FieldArrays,
    Fields,
    Group,
    SegmentDefinitionError,
    SegmentRef,
    _plain_values,
    causes,
    evaluate,
    fit_thresholds,
    in_holdout,
    leaf_mask,
    load_segments,
    memberships,
    parse_segments,
    plain,
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


OPERATOR_CASES = [
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
]


@pytest.mark.parametrize(("when", "expected"), OPERATOR_CASES)
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


# ---------------------------------------------------------------------------------------------------------------
# evaluate (arrays per field) against a plain per-row reference of the language, on random frames with nulls


def _is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _reference_leaf(leaf, row: dict, thresholds: dict, members: dict) -> bool:
    """The language as documented, one row at a time in plain Python."""
    if isinstance(leaf, SegmentRef):
        return members[leaf.segment]
    x, op, value = row[leaf.field], leaf.op, leaf.value
    if op in ("is null", "is not null"):
        return _is_missing(x) == (op == "is null")
    if _is_missing(x):
        return False  # a missing value fails every comparison
    if op in ("in top", "in bottom"):
        value = thresholds.get(leaf.text)
        if value is None or math.isnan(value):
            return False  # no threshold: nobody is in the top or bottom
        op = ">=" if op == "in top" else "<="
    if op == "in":
        return x in value
    if op == "not in":
        return x not in value
    if op == "between":
        return value[0] <= x <= value[1]
    return {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
            "!=": operator.ne}[op](x, value)


def _reference_node(node, row: dict, thresholds: dict, members: dict) -> bool:
    if isinstance(node, Group):
        parts = [_reference_node(part, row, thresholds, members) for part in node.parts]
        return {"all": all, "any": any}[node.mode](parts) if node.mode != "not" else not parts[0]
    return _reference_leaf(node, row, thresholds, members)


def _reference_evaluate(segments, values: pd.DataFrame, thresholds: dict) -> dict[str, list[bool]]:
    rows = values.to_dict(orient="records")
    out: dict[str, list[bool]] = {s.name: [] for s in segments}
    for i, row in enumerate(rows):
        members: dict[str, bool] = {}
        for segment in segments:  # evaluation order: references come first
            members[segment.name] = bool(_reference_node(segment.when, row, thresholds, members))
            out[segment.name].append(members[segment.name])
    return out


# Values near the shipped thresholds (2, 3, 30, 90, 100, 180, 0.3) so that both sides of each condition occur.
_NUMBERS = [0, 1, 2, 3, 5, 30, 31, 90, 91, 100, 100.5, 180, 181, 0.3, 0.25, 7.5]
_TEXTS = ["north", "south", "east", "west", "1", ""]
_CLUSTER_NAMES = {0: "bargain hunters", 1: "loyal regulars", 2: "new"}


def _random_column(kind: str, n: int, rng: np.random.Generator) -> pd.Series:
    """One column of `kind` in a random representation, about a fifth missing as None, NaN or pd.NA."""
    pool = {"number": _NUMBERS, "string": _TEXTS, "boolean": [True, False], "band": ["low", "medium", "high"]}[kind]
    if kind == "number" and rng.random() < 0.3:
        pool = list(range(4))  # few distinct values: ties at the thresholds and == hits
    raw = [pool[rng.integers(len(pool))] for _ in range(n)]
    missing = rng.random(n) < 0.2
    nulls = [None, np.nan, pd.NA]
    as_object = [nulls[rng.integers(3)] if m else v for v, m in zip(raw, missing, strict=True)]
    choice = rng.integers(3)
    if choice == 0:  # a pandas nullable / typed column
        typed = {"number": "Float64" if any(isinstance(v, float) for v in raw) else "Int64", "string": "string",
                 "boolean": "boolean", "band": "category"}[kind]
        return pd.Series([None if m else v for v, m in zip(raw, missing, strict=True)], dtype=typed)
    if choice == 1 and kind in ("number", "string"):  # NumPy floats with NaN / pandas str with NaN
        return pd.Series([np.nan if m else v for v, m in zip(raw, missing, strict=True)],
                         dtype=float if kind == "number" else "str")
    return pd.Series(as_object, dtype=object)  # plain Python objects, every kind of null


def _random_values(fields: dict[str, str], n: int, rng: np.random.Generator) -> pd.DataFrame:
    columns = {"customer_id": [f"c{i}" for i in range(n)]}
    columns.update({name: _random_column(kind, n, rng) for name, kind in fields.items()})
    return pd.DataFrame(columns)


def _shipped_segments():
    """The shipped file with every look-alike and cluster segment resolved (3 clusters)."""
    shipped = load_segments()
    outputs = [*SINGLE_OUTPUTS, "lookalike_best_members_score", "lookalike_best_members_percentile"]
    features = sorted({f for s in shipped for f in s.fields()} - set(outputs))
    usable, skipped = shipped.resolve(Fields.of(features, outputs, _CLUSTER_NAMES))
    assert not skipped
    return usable


def _operator_segments():
    """Every case of test_every_operator and the nesting test as one segment each, plus `in` on numbers and bands."""
    extra = ["'orders_count_90d in [0, 2]'", "'orders_count_90d not in [0, 2.5]'", "'churn_band in [high, medium]'",
             "churn_band != high", "loyalty_member == false", "'orders_count_90d between [0.5, 3]'",
             "{any: [orders_count_90d >= 5, {all: [region == north, {not: loyalty_member == false}]}]}",
             "{not: orders_count_90d >= 2}", "{all: [segment s0, {not: segment s9}]}"]
    whens = [when for when, _ in OPERATOR_CASES] + extra
    text = "segments:\n" + "".join(f"  s{i}:\n    kind: predictive\n    when: {w}\n" for i, w in enumerate(whens))
    return parse_segments(text)


@pytest.mark.parametrize("rows", [1, 500])
@pytest.mark.parametrize("which", ["shipped", "operators"])
def test_evaluate_matches_a_per_row_reference_on_random_frames_with_nulls(which, rows):
    segments = _shipped_segments() if which == "shipped" else _operator_segments()
    catalog = Fields.of(sorted(FEATURES_BY_NAME), [*SINGLE_OUTPUTS, "lookalike_best_members_percentile",
                                                   "lookalike_best_members_score"], _CLUSTER_NAMES)
    fields = {name: catalog.kind(name) for segment in segments for name in sorted(segment.fields())}
    rng = np.random.default_rng(7 if rows == 1 else 8)
    population = _random_values(fields, 2_000, rng)  # thresholds come from a population, as in serving
    fitted = fit_thresholds(segments, population)
    first, last = min(fitted), max(fitted)
    threshold_sets = [fitted, {**fitted, first: float("nan")},  # as fitted; one NaN; one missing (both: false)
                      {text: value for text, value in fitted.items() if text != last}]
    checked = 0
    for trial in range(60 if rows == 1 else 4):
        values = _random_values(fields, rows, rng)
        before = values.copy(deep=True)
        thresholds = threshold_sets[trial % len(threshold_sets)]
        expected = _reference_evaluate(segments, values, thresholds)
        result = evaluate(segments, values, thresholds)
        assert result.index.tolist() == values["customer_id"].tolist()
        assert list(result.columns) == segments.names()
        for name in segments.names():
            assert result[name].tolist() == expected[name], (name, values.to_dict(orient="list"))
            checked += sum(expected[name])
        # the fields split over two frames (as /score reads features and scores without concatenating them)
        split = len(values.columns) // 2
        two_frames = memberships(segments, FieldArrays(values.iloc[:, :split], values.iloc[:, split:]), thresholds)
        assert {name: mask.tolist() for name, mask in two_frames.items()} == expected
        # leaf_mask alone (as causes and the counterfactual call it) agrees with the reference too
        members = {name: result[name].to_numpy() for name in result.columns}
        for segment in segments:
            for leaf in segment.leaves():
                want = [bool(_reference_leaf(leaf, row, thresholds, {k: v[i] for k, v in members.items()}))
                        for i, row in enumerate(values.to_dict(orient="records"))]
                assert leaf_mask(leaf, values, thresholds, members).tolist() == want, leaf
        pd.testing.assert_frame_equal(values, before)  # the caller's frame is left as it was
    assert checked > 0  # some rows are members: the comparison is not between two all-false frames


def test_holdout_is_the_documented_sha256_bucket():
    """`in_holdout` hashes in DuckDB; the rule it documents, computed with hashlib, gives the same customers, for
    any id text (non-ASCII, empty, numbers given as ints) and any percent."""
    import hashlib
    import random

    from features.segments import in_holdout

    def documented(ids, segment, percent):
        return [int.from_bytes(hashlib.sha256(f"{segment}\x1f{cid}".encode()).digest()[:4], "big") % 10_000
                < round(percent * 100) for cid in ids]

    rng = random.Random(7)
    ids = [f"C{i:07d}" for i in range(3000)] + ["é漢字", "", "a b", 12345] + [
        "".join(rng.choice("abcXYZ019-_é ") for _ in range(rng.randint(1, 30))) for _ in range(2000)]
    for segment, percent in [("vip", 10), ("cluster_0", 2.5), ("two words", 50), ("loyal", 0), ("all", 100)]:
        expected = documented(ids, segment, percent)
        assert in_holdout(ids, segment, percent).tolist() == expected
        assert in_holdout(pd.Index([str(i) for i in ids], dtype="str"), segment, percent).tolist() == expected
    held = in_holdout(ids, "vip", 10)
    assert 0.08 < held.mean() < 0.12 and in_holdout([], "vip", 10).tolist() == []


@pytest.mark.parametrize("column", [
    pd.Series([1.5, np.nan, -0.0]), pd.Series([1, 2], dtype="int64"), pd.Series([1.5, None], dtype="Float64"),
    pd.Series([1, None], dtype="Int64"), pd.Series([True, None], dtype="boolean"), pd.Series([True, False]),
    pd.Series(["a", None], dtype="string"), pd.Series(["a", None, np.nan], dtype=object),
    pd.Series(["a", None], dtype="category"), pd.Series([1.5, np.nan], dtype="float32"),
    pd.Series([pd.Timestamp("2026-01-01"), pd.NaT]),
], ids=lambda column: str(column.dtype))
def test_a_causes_values_converted_at_once_equal_plain_value_by_value(column):
    expected = [plain(v) for v in column.tolist()]
    converted = _plain_values(column)
    assert converted == expected and [type(v) for v in converted] == [type(v) for v in expected]
    assert None in converted or column.notna().all()

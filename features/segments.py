"""The segment language: dynamic segments declared in YAML, validated, and evaluated over feature and score rows.

A segments file (the default ships as `features/segments.yaml`)::

    holdout_percent: 10            # default share of each segment kept out of campaigns
    segments:
      loyal:
        description: At least 2 purchases in the last 14 days, totalling over 100
        when:
          all:
            - orders_count_14d >= 2
            - spend_sum_14d > 100
      at_risk_vip:
        kind: predictive
        when: {all: [segment vip, churn_band == high]}
      best_members_lookalike: {kind: lookalike, seed: best_members, reach: 10}
      clusters: {kind: cluster}    # one segment per behavioural cluster: cluster_0, cluster_1, ...

A condition is `<field> <operator> [value]`. Fields are catalog features or model outputs (churn_probability,
churn_band, expected_purchases, expected_spend, lookalike_<seed>_score, lookalike_<seed>_percentile, cluster_id,
cluster_name, uplift_score); `segment <name>` is true for members of another segment. Operators: > >= < <= == != in, not in,
between [lo, hi] (inclusive), is null, is not null, and `in top N%` / `in bottom N%` (thresholds fitted on the whole
population at a batch refresh and reused for single customers until the next one). Conditions nest with all / any /
not. A missing value makes every comparison false (and `is null` true), so `not` of a comparison holds for it.

Kinds: rule (features only), predictive (model outputs, may mix with features), lookalike (seed + reach: the top
`reach` percent by look-alike percentile), cluster (expands to one segment per cluster of the served model).

Everything is checked before anything runs: unknown fields (with the nearest names), bad operators, values of the
wrong type, unknown or cyclic segment references; each error names the segment and the condition.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from features.catalog import FEATURES_BY_NAME
from features.outputs import BANDS, OUTPUTS, find_output, label_of_output

DEFAULT_HOLDOUT_PERCENT = 10.0
KINDS = ("rule", "predictive", "lookalike", "cluster")
COMPARISONS = (">", ">=", "<", "<=", "==", "!=")
OPERATORS = (*COMPARISONS, "in", "not in", "between", "is null", "is not null", "in top", "in bottom")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CONDITION = re.compile(
    r"^\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s+"
    r"(?P<op>>=|<=|==|!=|>|<|not in|in top|in bottom|in|between|is not null|is null)(?:\s+|$)(?P<value>.*)$")
_SEGMENT_REF = re.compile(r"^\s*segment\s+(?P<name>\S+)\s*$")

# Model outputs a condition may use (features/outputs.py): the ones with one column; look-alikes have one per seed.
SINGLE_OUTPUTS = {o.name: o.field for o in OUTPUTS if not o.per_seed}
_DTYPE_KIND = {"int64": "number", "float64": "number", "string": "string", "boolean": "boolean"}


class SegmentDefinitionError(ValueError):
    """A segments file that cannot be used; `problems` lists every problem found, each naming segment and condition."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s) in the segment definitions:\n  - "
                         + "\n  - ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# The parsed form


@dataclass(frozen=True)
class Condition:
    """One comparison of a field, as written (`text`) and parsed."""

    field: str
    op: str
    value: object = None
    text: str = ""


@dataclass(frozen=True)
class SegmentRef:
    """`segment <name>`: true for the members of another segment."""

    segment: str
    text: str = ""


@dataclass(frozen=True)
class Group:
    """all / any / not over conditions, references and groups."""

    mode: str
    parts: tuple


@dataclass
class Segment:
    name: str
    kind: str
    when: object
    description: str = ""
    holdout_percent: float = DEFAULT_HOLDOUT_PERCENT
    cluster_id: int | None = None

    def leaves(self) -> list[Condition | SegmentRef]:
        return list(_leaves(self.when))

    def references(self) -> set[str]:
        return {leaf.segment for leaf in self.leaves() if isinstance(leaf, SegmentRef)}

    def fields(self) -> set[str]:
        return {leaf.field for leaf in self.leaves() if isinstance(leaf, Condition)}


def _leaves(node):
    if isinstance(node, Group):
        for part in node.parts:
            yield from _leaves(part)
    elif node is not None:
        yield node


@dataclass
class Fields:
    """What conditions may refer to: features (name -> dtype) and model outputs (name -> kind), cluster names."""

    features: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)
    cluster_names: dict[int, str] | None = None
    any_seed: bool = False  # checking a file on its own: every look-alike seed may exist

    @classmethod
    def catalog(cls) -> Fields:
        """Every catalog feature and every model output (any look-alike seed): for checking a file on its own."""
        return cls({name: f.dtype for name, f in FEATURES_BY_NAME.items()}, dict(SINGLE_OUTPUTS), None,
                   any_seed=True)

    @classmethod
    def of(cls, feature_names: list[str], score_columns: list[str], cluster_names: dict[int, str] | None) -> Fields:
        """The fields one run really has: its feature table's columns and its models' score columns."""
        outputs = {column: found[0].field for column in score_columns if (found := find_output(column))}
        return cls({n: FEATURES_BY_NAME[n].dtype for n in feature_names if n in FEATURES_BY_NAME}, outputs,
                   cluster_names)

    def kind(self, name: str) -> str | None:
        if name in self.features:
            return _DTYPE_KIND[self.features[name]]
        if name in self.outputs:
            return self.outputs[name]
        found = find_output(name) if self.any_seed else None
        return found[0].field if found else None


def is_output(name: str) -> bool:
    return find_output(name) is not None


def label_of(name: str) -> str:
    if name in FEATURES_BY_NAME:
        return FEATURES_BY_NAME[name].label
    return label_of_output(name) or name


# ---------------------------------------------------------------------------------------------------------------
# Reading and checking a file


@dataclass
class SegmentSet:
    """Parsed definitions in evaluation order (a segment after those it refers to)."""

    segments: dict[str, Segment]
    source: str = ""
    text: str = ""

    @property
    def definitions_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def __getitem__(self, name: str) -> Segment:
        return self.segments[name]

    def __iter__(self):
        return iter(self.segments.values())

    def names(self) -> list[str]:
        return list(self.segments)

    def definition_of(self, name: str) -> Segment | None:
        """The definition behind segment `name`: its own, or for a cluster segment `<spec>_<id>` (expanded when
        resolved against a cluster model) its spec's; None when nothing defines it."""
        if name in self.segments:
            return self.segments[name]
        spec, _, cluster_id = name.rpartition("_")
        segment = self.segments.get(spec)
        return segment if segment is not None and segment.kind == "cluster" and cluster_id.isdigit() else None

    def closure(self, names: list[str]) -> SegmentSet:
        """The named segments and every segment they refer to, in evaluation order."""
        needed, stack = set(), list(names)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack += self.segments[name].references()
        return SegmentSet({n: s for n, s in self.segments.items() if n in needed}, self.source, self.text)

    def resolve(self, fields: Fields) -> tuple[SegmentSet, dict[str, str]]:
        """Expand cluster segments, check every field against what this run has, and drop the segments whose
        fields the data or the loaded models cannot give (with their dependents). Returns (usable set,
        {skipped segment: reason})."""
        expanded: dict[str, Segment] = {}
        for segment in self:
            if segment.kind == "cluster" and segment.cluster_id is None and fields.cluster_names is not None:
                for cid, cname in sorted(fields.cluster_names.items()):
                    expanded[f"{segment.name}_{cid}"] = Segment(
                        f"{segment.name}_{cid}", "cluster", Condition("cluster_id", "==", cid, f"cluster_id == {cid}"),
                        f"Behavioural cluster {cid}: {cname}", segment.holdout_percent, cid)
            else:
                expanded[segment.name] = segment
        skipped: dict[str, str] = {}
        for segment in expanded.values():
            if segment.kind == "cluster" and segment.cluster_id is None:
                skipped[segment.name] = "no cluster model is loaded (segments train clusters)"
                continue
            missing = sorted(f for f in segment.fields() if fields.kind(f) is None)
            if missing:
                skipped[segment.name] = _missing_reason(missing)
                continue
            gone = sorted(r for r in segment.references() if r in skipped)
            if gone:
                skipped[segment.name] = f"refers to {', '.join(gone)}, which cannot be evaluated"
        problems = [f"segment {s.name!r}: {p}" for s in expanded.values() if s.name not in skipped
                    for p in _value_problems(s, fields)]
        if problems:
            raise SegmentDefinitionError(self.source, problems)
        usable = {n: s for n, s in expanded.items() if n not in skipped}
        return SegmentSet(usable, self.source, self.text), skipped


def _missing_reason(missing: list[str]) -> str:
    models = [m for m in missing if is_output(m)]
    if models:
        return f"needs model output {', '.join(models)}, which no loaded model gives (train and promote it)"
    return f"needs {', '.join(missing)}, which this data cannot build (a source column or table is missing)"


def default_segments_path() -> Path:
    return Path(str(resources.files("features") / "segments.yaml"))


def load_segments(path: Path | None = None) -> SegmentSet:
    """Read and check a segments file (the default when `path` is None) against the catalog and the model outputs;
    `SegmentSet.resolve` then checks it against what one run really has. Raises SegmentDefinitionError listing
    every problem."""
    path = Path(path) if path is not None else default_segments_path()
    try:
        text = path.read_text()
    except OSError as exc:
        raise SegmentDefinitionError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    return parse_segments(text, str(path))


def parse_segments(text: str, source: str = "<segments>") -> SegmentSet:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SegmentDefinitionError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(document, dict) or not isinstance(document.get("segments"), dict) or not document["segments"]:
        raise SegmentDefinitionError(source, [("expected a mapping with a non-empty `segments:` mapping of name -> "
                                               "definition")])
    default_holdout, problems = _holdout(document.get("holdout_percent", DEFAULT_HOLDOUT_PERCENT), "file", [])
    segments: dict[str, Segment] = {}
    for name, spec in document["segments"].items():
        segment = _parse_segment(str(name), spec, DEFAULT_HOLDOUT_PERCENT if default_holdout is None else default_holdout,
                                 problems)
        if segment is not None:
            segments[segment.name] = segment
    fields = Fields.catalog()
    for segment in segments.values():
        problems += [f"segment {segment.name!r}: {p}" for p in _reference_problems(segment, segments, fields)]
    if not problems:
        problems += _cycles(segments)
    if problems:
        raise SegmentDefinitionError(source, problems)
    return SegmentSet({n: segments[n] for n in _evaluation_order(segments)}, source, text)


def _holdout(value, where: str, problems: list[str]) -> tuple[float | None, list[str]]:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 100:
        problems.append(f"{where}: holdout_percent must be a number in [0, 100), got {value!r}")
        return None, problems
    return float(value), problems


def _parse_segment(name: str, spec, default_holdout: float, problems: list[str]) -> Segment | None:
    where = f"segment {name!r}"
    if not NAME.match(name):
        problems.append(f"{where}: names are lower case letters, digits and _ (starting with a letter)")
        return None
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a mapping with `when:` (or kind: lookalike / cluster)")
        return None
    allowed = {"kind", "description", "when", "holdout_percent", "seed", "reach"}
    for key in sorted(set(spec) - allowed):
        problems.append(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    kind = spec.get("kind", "rule")
    if kind not in KINDS:
        problems.append(f"{where}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        return None
    holdout = default_holdout
    if "holdout_percent" in spec:
        given = _holdout(spec["holdout_percent"], where, problems)[0]
        holdout = default_holdout if given is None else given
    description = str(spec.get("description") or "")
    if kind == "lookalike":
        when = _lookalike_condition(spec, where, problems)
    elif kind == "cluster":
        cluster_id = spec.get("when")
        if cluster_id is not None:
            problems.append(f"{where}: a cluster segment takes no `when:`; it becomes one segment per cluster")
        return Segment(name, kind, None, description or "One segment per behavioural cluster", holdout)
    elif "when" not in spec:
        problems.append(f"{where}: a {kind} segment needs `when:` (its conditions)")
        return None
    else:
        when = _parse_node(spec["when"], where, problems)
    if when is None:
        return None
    return Segment(name, kind, when, description, holdout)


def _lookalike_condition(spec: dict, where: str, problems: list[str]) -> Condition | None:
    seed, reach = spec.get("seed"), spec.get("reach", 10)
    if not isinstance(seed, str) or not seed:
        problems.append(f"{where}: a lookalike segment needs `seed:` (the seed segment its model was trained on)")
        return None
    if isinstance(reach, bool) or not isinstance(reach, int | float) or not 0 < reach <= 100:
        problems.append(f"{where}: reach must be a percentage in (0, 100], got {reach!r}")
        return None
    column = f"lookalike_{seed}_percentile"
    return Condition(column, ">=", 100.0 - float(reach), f"{column} >= {100 - reach:g}")


def _parse_node(node, where: str, problems: list[str]):
    if isinstance(node, str):
        return _parse_leaf(node, where, problems)
    if isinstance(node, dict) and len(node) == 1:
        (mode, body), = node.items()
        if mode in ("all", "any"):
            if not isinstance(body, list) or not body:
                problems.append(f"{where}: `{mode}:` takes a non-empty list of conditions")
                return None
            parts = [_parse_node(part, where, problems) for part in body]
            return Group(mode, tuple(parts)) if all(p is not None for p in parts) else None
        if mode == "not":
            part = _parse_node(body, where, problems)
            return Group("not", (part,)) if part is not None else None
    problems.append(f"{where}: cannot read {node!r}: write a condition like 'orders_count_90d >= 2', or a mapping "
                    f"with one key all / any (a list) or not")
    return None


def _parse_leaf(text: str, where: str, problems: list[str]):
    ref = _SEGMENT_REF.match(text)
    if ref:
        return SegmentRef(ref["name"], text.strip())
    match = _CONDITION.match(text)
    if not match:
        problems.append(f"{where}, condition {text!r}: expected '<field> <operator> <value>' with an operator "
                        f"among {', '.join(OPERATORS)}, or 'segment <name>'")
        return None
    op, raw = match["op"], match["value"].strip()
    if op in ("is null", "is not null"):
        if raw:
            problems.append(f"{where}, condition {text!r}: {op} takes no value")
            return None
        return Condition(match["field"], op, None, text.strip())
    if op in ("in top", "in bottom"):
        number = raw.removesuffix("%").strip()
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is None or not 0 < value < 100:
            problems.append(f"{where}, condition {text!r}: {op} takes a percentage in (0, 100), e.g. 'in top 20%'")
            return None
        return Condition(match["field"], op, value, text.strip())
    try:
        value = condition_value(raw) if raw else None
    except ValueError as exc:
        problems.append(f"{where}, condition {text!r}: {exc}")
        return None
    if value is None:
        problems.append(f"{where}, condition {text!r}: {op} needs a value")
        return None
    return Condition(match["field"], op, value, text.strip())


MAX_VALUE_TEXT = 10_000  # characters of one condition value (a long `in [...]` list fits)


class _ValueLoader(yaml.SafeLoader):
    """YAML for one condition value: no aliases, so a short text can never expand into a huge value."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in a condition value")
        return super().compose_node(parent, index)


def condition_value(raw: str):
    """The value of a condition: a number (finite), text, true/false, or a flat [list] of them. ValueError says
    what is wrong, quoting the text as given (never an expansion of it)."""
    if len(raw) > MAX_VALUE_TEXT:
        raise ValueError(f"the value is {len(raw):,} characters long; at most {MAX_VALUE_TEXT:,}")
    try:
        value = yaml.load(raw, Loader=_ValueLoader)  # a SafeLoader without aliases
    except RecursionError:
        raise ValueError(f"the value {raw[:100]!r}... is nested too deeply") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"cannot read the value {raw[:100]!r}: {problem}") from None
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float) and not np.isfinite(item):
            raise ValueError(f"the value {raw[:100]!r} is not a finite number")
        if not (item is None or isinstance(item, str | int | float | bool)):
            raise ValueError(f"the value {raw[:100]!r} is not a number, text, true/false or a flat [list] of them")
    return value


def _reference_problems(segment: Segment, segments: dict[str, Segment], fields: Fields) -> list[str]:
    problems = []
    for leaf in segment.leaves():
        if isinstance(leaf, SegmentRef):
            if leaf.segment not in segments:
                near = difflib.get_close_matches(leaf.segment, list(segments), n=1)
                problems.append(f"condition {leaf.text!r}: no segment named {leaf.segment!r}"
                                + (f" (did you mean {near[0]}?)" if near else ""))
            elif leaf.segment == segment.name:
                problems.append(f"condition {leaf.text!r}: a segment cannot refer to itself")
            continue
        if fields.kind(leaf.field) is None:
            known = [*fields.features, *fields.outputs, *SINGLE_OUTPUTS]
            near = difflib.get_close_matches(leaf.field, known, n=2)
            problems.append(f"condition {leaf.text!r}: unknown field {leaf.field!r}"
                            + (f" (did you mean {' or '.join(near)}?)" if near else ""))
            continue
        if segment.kind == "rule" and is_output(leaf.field):
            problems.append(f"condition {leaf.text!r}: {leaf.field} is a model output; use kind: predictive")
        else:
            problems += [f"condition {leaf.text!r}: {p}" for p in _type_problems(leaf, fields.kind(leaf.field))]
    return problems


def _value_problems(segment: Segment, fields: Fields) -> list[str]:
    return [f"condition {leaf.text!r}: {p}" for leaf in segment.leaves() if isinstance(leaf, Condition)
            for p in _type_problems(leaf, fields.kind(leaf.field))]


def _type_problems(cond: Condition, kind: str) -> list[str]:
    op, value = cond.op, cond.value

    def fits(v) -> bool:
        if kind == "number":
            return isinstance(v, int | float) and not isinstance(v, bool)
        if kind == "boolean":
            return isinstance(v, bool)
        if kind == "band":
            return v in BANDS
        return isinstance(v, str | int | float) and not isinstance(v, bool)

    if op in ("is null", "is not null"):
        return []
    if op in ("in top", "in bottom", "<", "<=", ">", ">=", "between") and kind != "number":
        return [f"{op} needs a numeric field; {cond.field} is {kind}"]
    if op == "between":
        if not (isinstance(value, list) and len(value) == 2 and all(fits(v) for v in value)):
            return [f"between takes [low, high] of {kind} values, got {value!r}"]
        if kind == "number" and value[0] > value[1]:
            return [f"between [{value[0]}, {value[1]}]: low is above high"]
        return []
    if op in ("in", "not in"):
        if not (isinstance(value, list) and value and all(fits(v) for v in value)):
            return [f"{op} takes a non-empty list of {kind} values, e.g. [a, b], got {value!r}"]
        return []
    if op in ("in top", "in bottom"):
        return []
    if not fits(value):
        expected = {"band": f"one of {', '.join(BANDS)}", "boolean": "true or false"}.get(kind, f"a {kind}")
        return [f"{cond.field} takes {expected}, got {value!r}"]
    if kind == "boolean" and op not in ("==", "!="):
        return [f"{op} does not apply to a true/false field"]
    return []


def _cycles(segments: dict[str, Segment]) -> list[str]:
    problems, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = path[path.index(name):] + [name]
            problems.append(f"segment {name!r}: segments refer to each other in a cycle: {' -> '.join(cycle)}")
            return
        state[name] = "open"
        for ref in sorted(segments[name].references()):
            visit(ref, [*path, name])
        state[name] = "done"

    for name in segments:
        visit(name, [])
    return problems


def _evaluation_order(segments: dict[str, Segment]) -> list[str]:
    order, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for ref in sorted(segments[name].references()):
            visit(ref)
        order.append(name)

    for name in segments:
        visit(name)
    return order


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def threshold_quantiles(segments: SegmentSet) -> dict[str, tuple[str, float]]:
    """Every `in top N%` / `in bottom N%` condition: its text -> (field, the quantile of the field that cuts it)."""
    return {leaf.text: (leaf.field, 1 - leaf.value / 100 if leaf.op == "in top" else leaf.value / 100)
            for segment in segments for leaf in segment.leaves()
            if isinstance(leaf, Condition) and leaf.op in ("in top", "in bottom")}


def fit_thresholds(segments: SegmentSet, values: pd.DataFrame) -> dict[str, float]:
    """The population cut-off of every `in top N%` / `in bottom N%` condition, keyed by condition text: the
    linearly interpolated quantile of the field's numeric values (missing ones left out; NaN when none)."""
    out = {}
    for text, (name, q) in threshold_quantiles(segments).items():
        column = pd.to_numeric(values[name], errors="coerce").dropna()
        out[text] = float(column.quantile(q)) if len(column) else float("nan")
    return out


class FieldArrays:
    """The columns of a values frame as NumPy arrays, converted once per field and evaluation, not once per condition.

    Per field: `present` (not None / NaN / pd.NA / NaT), `numbers` (float64, NaN where missing or not a number: the
    column as is for numeric and boolean dtypes, `pd.to_numeric(errors="coerce")` for the others) and `objects` (the
    values as Python objects, a marker no value equals where missing). Conditions then compare arrays only, so a
    one-row frame costs a few microseconds per condition instead of a few pandas operations.
    """

    def __init__(self, values: pd.DataFrame, *more):
        # More frames, or name -> array mappings (same rows, in order): a field is read from the first that has it,
        # so scores need not be concatenated to the features they belong to (a concat cost more than evaluating one
        # customer).
        self.values, self._frames = values, (values, *more)
        self._columns: dict[str, pd.Series] = {}
        self._present: dict[str, np.ndarray] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._objects: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.values)

    def column(self, name: str) -> pd.Series:
        column = self._columns.get(name)
        if column is None:
            frame = next((f for f in self._frames if name in f), self.values)  # else the frame's KeyError
            column = frame[name]
            if not isinstance(column, pd.Series):
                column = pd.Series(column, copy=False)
            self._columns[name] = column
        return column

    def present(self, name: str) -> np.ndarray:
        present = self._present.get(name)
        if present is None:
            column = self.column(name)
            kind = column.dtype.kind if isinstance(column.dtype, np.dtype) else None
            if kind in ("i", "u", "b"):  # NumPy integers and booleans cannot be missing
                present = np.ones(len(column), dtype=bool)
            elif kind == "f":
                present = ~np.isnan(column.to_numpy())
            else:
                present = ~np.asarray(pd.isna(column.array), dtype=bool)
            self._present[name] = present
        return present

    def numbers(self, name: str) -> np.ndarray:
        numbers = self._numbers.get(name)
        if numbers is None:
            column = self.column(name)
            if isinstance(column.dtype, np.dtype) and column.dtype.kind in ("i", "u", "f", "b"):
                numbers = column.to_numpy().astype(float, copy=False)  # read only: may be the caller's data
            else:
                if not pd.api.types.is_numeric_dtype(column.dtype):  # text, categories: what to_numeric makes of them
                    column = pd.to_numeric(column, errors="coerce")   # (identity for numeric and boolean dtypes)
                numbers = column.to_numpy(dtype=float, na_value=np.nan)
            self._numbers[name] = numbers
        return numbers

    def objects(self, name: str) -> np.ndarray:
        objects = self._objects.get(name)
        if objects is None:  # np.where: a new array, never a view of the caller's column
            objects = self._objects[name] = np.where(self.present(name), self.column(name).to_numpy(dtype=object),
                                                     _MISSING)
        return objects


def leaf_mask(leaf: Condition | SegmentRef, values: pd.DataFrame | FieldArrays, thresholds: dict[str, float],
              members: dict[str, np.ndarray]) -> np.ndarray:
    """True where the leaf holds, per row of `values`; missing values fail every comparison.

    `values`: the frame, or its `FieldArrays` when several conditions read it (each field is converted once)."""
    if isinstance(leaf, SegmentRef):
        return members[leaf.segment]
    arrays = values if isinstance(values, FieldArrays) else FieldArrays(values)
    present = arrays.present(leaf.field)
    op, value = leaf.op, leaf.value
    if op in ("is null", "is not null"):
        return ~present if op == "is null" else present
    if op in ("in top", "in bottom"):
        op, value = (">=", "<=")[op == "in bottom"], thresholds.get(leaf.text, float("nan"))
    if _numeric(value):
        with np.errstate(invalid="ignore"):
            hit = _compare(arrays.numbers(leaf.field), op, value)
    else:  # text, bands and booleans, compared as Python objects
        hit = _compare(arrays.objects(leaf.field), op, value)
    return np.asarray(hit, dtype=bool) & present


_MISSING = "\x00missing"


def _numeric(value) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_numeric(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(data: np.ndarray, op: str, value) -> np.ndarray:
    if op in ("in", "not in"):
        hit = _isin(data, value)
        return hit if op == "in" else ~hit
    if op == "between":
        return (data >= value[0]) & (data <= value[1])
    return _COMPARE[op](data, value)


_COMPARE = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal,
            "!=": np.not_equal}


def _isin(data: np.ndarray, value: list) -> np.ndarray:
    """`pd.Series(data).isin(value)` without building a Series: NaN matches NaN (as in pandas), Python objects match
    by hash and ==."""
    if data.dtype.kind == "f":
        wanted = np.asarray(value, dtype=float)
        hit = np.isin(data, wanted)
        return hit | np.isnan(data) if np.isnan(wanted).any() else hit
    wanted = set(value)
    return np.fromiter((item in wanted for item in data), dtype=bool, count=len(data))


def node_mask(node, values: pd.DataFrame | FieldArrays, thresholds: dict, members: dict) -> np.ndarray:
    if not isinstance(values, FieldArrays):
        values = FieldArrays(values)
    if isinstance(node, Group):
        masks = [node_mask(part, values, thresholds, members) for part in node.parts]
        if node.mode == "not":
            return ~masks[0]
        if not masks:  # as numpy's reduce of nothing: all() holds, any() does not
            return np.full(len(values), node.mode == "all")
        combine = np.logical_and if node.mode == "all" else np.logical_or
        out = masks[0]
        for mask in masks[1:]:  # pairwise: reduce() over a list first copies it into a 2-D array
            out = combine(out, mask)
        return out
    return leaf_mask(node, values, thresholds, members)


def evaluate(segments: SegmentSet, values: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Membership of every row of `values` (customer_id plus the fields) in every segment: a boolean frame indexed
    by customer_id with one column per segment, evaluated in dependency order.

    Each field is converted to arrays once (`FieldArrays`) and every condition compares arrays, so the cost is a few
    microseconds per condition for one row and scales with the rows for a population."""
    members = memberships(segments, FieldArrays(values), thresholds)
    index = pd.Index(values["customer_id"].astype(str), name="customer_id")
    if not members:
        return pd.DataFrame(members, index=index)
    # One 2-D block: a frame from a dict of 20 one-row arrays costs ~3x as much (~90 instead of ~30 us).
    return pd.DataFrame(np.column_stack(list(members.values())), index=index, columns=list(members))


def memberships(segments: SegmentSet, arrays: FieldArrays, thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    """Segment name -> membership mask per row of `arrays`, evaluated in dependency order (what `evaluate` frames)."""
    members: dict[str, np.ndarray] = {}
    for segment in segments:
        members[segment.name] = np.asarray(node_mask(segment.when, arrays, thresholds, members), dtype=bool)
    return members


def in_holdout(customer_ids, segment: str, percent: float) -> np.ndarray:
    """The deterministic holdout: a customer is held out of `segment` when the first 4 bytes of the SHA-256 of
    "<segment>\x1f<customer_id>" (UTF-8), as a big-endian number, modulo 10,000 fall below `percent` x 100. Stable
    while membership changes, independent across segments.

    Hashed by DuckDB, on both cores (a refresh or report at 1M customers hashes millions of members: ~1.2 us each
    in a Python loop); tests/test_segments.py checks it against hashlib.
    """
    ids = pa.array(pd.Series(customer_ids, dtype=object).astype(str), type=pa.string())
    if not len(ids):
        return np.zeros(0, dtype=bool)
    con = duckdb.connect()
    try:
        con.register("ids", pa.table({"customer_id": ids}))
        held = con.execute(
            "SELECT ('0x' || left(sha256(? || chr(31) || customer_id), 8))::UBIGINT % 10000 < ? FROM ids",
            [segment, round(percent * 100)]).fetchnumpy()
    finally:
        con.close()
    return np.asarray(next(iter(held.values())), dtype=bool)


# ---------------------------------------------------------------------------------------------------------------
# Causes


def causes(segment: Segment, old: pd.DataFrame, new: pd.DataFrame, old_thresholds: dict, new_thresholds: dict,
           old_members: dict[str, np.ndarray], new_members: dict[str, np.ndarray]) -> list[list[dict]]:
    """Per row (old and new values of the same customers, aligned): the conditions of `segment` whose truth flipped,
    each with the field, old and new values (and thresholds for top/bottom conditions). A row with no previous
    evaluation has missing old values."""
    flipped: list[list[dict]] = [[] for _ in range(len(new))]
    old_arrays, new_arrays = FieldArrays(old), FieldArrays(new)  # each field converted once for every leaf
    for leaf in segment.leaves():
        before = leaf_mask(leaf, old_arrays, old_thresholds, old_members)
        after = leaf_mask(leaf, new_arrays, new_thresholds, new_members)
        rows = np.flatnonzero(before != after)
        if not len(rows):
            continue
        # The flipped rows' values, read once per leaf (a pandas lookup per cause was most of a refresh's time)
        values = None if isinstance(leaf, SegmentRef) else (_plain_values(old_arrays.column(leaf.field).iloc[rows]),
                                                            _plain_values(new_arrays.column(leaf.field).iloc[rows]))
        label = None if isinstance(leaf, SegmentRef) else label_of(leaf.field)  # once per leaf: millions of causes
        for k, i in enumerate(rows):
            pair = None if values is None else (values[0][k], values[1][k])
            flipped[i].append(_cause(leaf, label, pair, bool(before[i]), bool(after[i]), old_thresholds,
                                     new_thresholds))
    return flipped


def _cause(leaf, label: str | None, values: tuple | None, was: bool, now: bool, old_thresholds: dict,
           new_thresholds: dict) -> dict:
    """One flipped condition; `label`: its field's label, `values`: the field's (old, new) value, `plain`, for a
    condition on a field."""
    if isinstance(leaf, SegmentRef):
        verb = "joined" if now else "left"
        return {"condition": leaf.text, "field": f"segment {leaf.segment}", "old": was, "new": now,
                "text": f"{verb} segment {leaf.segment}"}
    before, after = values
    cause = {"condition": leaf.text, "field": leaf.field, "old": before, "new": after,
             "text": f"{label} {_show(before)} -> {_show(after)} ({leaf.text}: "
                     f"{'now true' if now else 'no longer true'})"}
    if leaf.op in ("in top", "in bottom"):
        cause["threshold_old"] = plain(old_thresholds.get(leaf.text))
        cause["threshold_new"] = plain(new_thresholds.get(leaf.text))
    return cause


def _plain_values(column: pd.Series) -> list:
    """`plain` of every value of `column`, converted by pandas in one pass (a first refresh at 1M customers has
    millions of causes, and a `plain` call per value took seconds of it). Datetimes, which no segment field holds
    today, go value by value: pandas would keep their NaT."""
    if column.dtype.kind in "mM":
        return [plain(v) for v in column.tolist()]
    return column.to_numpy(dtype=object, na_value=None).tolist()


def plain(value):
    """A JSON-ready scalar (None for missing)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)

"""Segment membership: evaluate the segments on feature and score rows, diff against the store, explain each change.

One path for both doors: a batch refresh (`segments refresh`, every customer as of a date) and an event arriving at
the service (one customer, now). Both build the rows with the same feature code and score them with the same
bundle, then call `changes_for`, which compares the new membership with the stored one and gives every entry and
exit its cause: the conditions whose truth flipped, with the old and new values.
"""

from __future__ import annotations

import pickle
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.outputs import columns_of
from features.pipeline import read_feature_rows, read_frame_batches, write_frame_batches
from features.segments import (
    Condition,
    FieldArrays,
    Fields,
    SegmentSet,
    causes,
    evaluate,
    fit_thresholds,
    in_holdout,
    load_segments,
    memberships,
    threshold_quantiles,
)
from features.time import utc_now
from serving.segments.store import Change, JSONText, StoredStates, json_text, paused_gc
from training.bundle import ScoringBundle
from training.tracking import kind_of

STATE_CHUNK = 100_000  # customers whose states are encoded at once
PLAN_CHUNK = 100_000  # customers a refresh compares with the store at once (their changes are spilled to disk)
REMOVED_CAUSE = {"condition": None, "field": None, "old": True, "new": None,
                 "text": "the segment is no longer in the definitions"}


def cluster_names(bundle: ScoringBundle | None) -> dict[int, str] | None:
    """Cluster id -> name of the bundle's model that outputs cluster names (None without one)."""
    for name, model in (bundle.models.items() if bundle else []):
        if "cluster_name" in columns_of(kind_of(name)[0]):
            return dict(enumerate(model.names_))
    return None


def segment_values(features: pd.DataFrame, bundle: ScoringBundle | None,
                   scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Feature rows plus the bundle's score columns: what segment conditions read.

    `scores`: `bundle.score(features)` when the caller has it already (the scoring service scores once per request).
    """
    features = features.reset_index(drop=True)
    if bundle is None or not bundle.models or features.empty:
        return features
    scores = (bundle.score_in_chunks(features) if scores is None else scores).drop(columns="customer_id")
    return pd.concat([features, scores.reset_index(drop=True)], axis=1)


def run_fields(values: pd.DataFrame, bundle: ScoringBundle | None) -> Fields:
    columns = [c for c in values.columns if c != "customer_id"]
    return Fields.of(columns, columns, cluster_names(bundle))


def served_segments(segments_file: Path | None, features: pd.DataFrame,
                    bundle: ScoringBundle | None) -> tuple[SegmentSet, dict[str, str]]:
    """The segments file (the shipped one when None) resolved against the columns of `features` and the bundle's
    outputs: (usable set, {skipped segment: reason}). What the event path, /score and batch scoring evaluate."""
    sample = segment_values(features.head(1), bundle)  # resolution reads column names and cluster names only
    return load_segments(segments_file).resolve(run_fields(sample, bundle))


# ---------------------------------------------------------------------------------------------------------------
# Population thresholds outside a refresh: the event path and the scoring service reuse the last refresh's.

TOP_BOTTOM = ("in top", "in bottom")


class LastRefresh:
    """The store's last batch refresh (id, as_of, thresholds), read again only when a newer refresh is recorded.

    One per service worker, shared by the event path and /score, so both evaluate `in top N%` conditions with the
    same population thresholds; the check costs one indexed `max(id)` per call.
    """

    def __init__(self, store):
        self.store = store
        self._seen: tuple[int | None, dict | None] | None = None  # (id, refresh) of the last read

    def read(self, conn=None) -> dict | None:
        """The last refresh (as `SegmentStore.last_refresh` gives it), None before the first."""
        latest = self.store.current.last_refresh_id(conn)
        seen = self._seen
        if seen is None or seen[0] != latest:
            # Read after the id: this refresh is at least as new as `latest` (a newer one is read next time).
            seen = self._seen = (latest, self.store.current.last_refresh(conn))
        return seen[1]


def lacking_thresholds(segments: SegmentSet, thresholds: dict, last_refresh_as_of: datetime | None) -> dict[str, str]:
    """{segment: reason} of the segments with an `in top/bottom N%` condition `thresholds` has no value for, and of
    the segments referring to them: evaluated without a threshold they would be false for everyone, not "not in"."""
    lacking: dict[str, str] = {}
    for segment in segments:  # evaluation order: a segment comes after those it refers to
        missing = [leaf.text for leaf in segment.leaves()
                   if isinstance(leaf, Condition) and leaf.op in TOP_BOTTOM and leaf.text not in thresholds]
        gone = sorted(ref for ref in segment.references() if ref in lacking)
        if missing:
            conditions = ", ".join(repr(text) for text in missing)
            lacking[segment.name] = (
                f"{conditions} needs the population threshold of a batch refresh; none has run yet "
                f"(segments refresh --as-of ...)" if last_refresh_as_of is None else
                f"{conditions} has no threshold in the last refresh (as of {last_refresh_as_of:%Y-%m-%d %H:%M}), "
                f"made with other definitions: run segments refresh again")
        elif gone:
            lacking[segment.name] = f"refers to {', '.join(gone)}, which cannot be evaluated"
    return lacking


@dataclass(frozen=True)
class SegmentRules:
    """The served segments as scoring evaluates them, outside a refresh: by definition (no holdout applied), with
    fixed population thresholds for `in top/bottom N%`, so a customer's segments never depend on who else is scored.

    `thresholds_from` says where the thresholds come from (shown to users); `thresholds_as_of` is the as_of of the
    refresh they come from (None when fitted on a scored population, or when there is no refresh).
    """

    evaluated: SegmentSet
    thresholds: dict[str, float]
    not_evaluated: dict[str, str]
    thresholds_from: str
    thresholds_as_of: datetime | None = None

    @classmethod
    def of_refresh(cls, usable: SegmentSet, skipped: dict[str, str], refresh: dict | None) -> SegmentRules:
        """With the thresholds of a refresh (`LastRefresh.read`); segments lacking theirs are not evaluated."""
        as_of = refresh["as_of"] if refresh else None
        thresholds = refresh["thresholds"] if refresh else {}
        lacking = lacking_thresholds(usable, thresholds, as_of)
        evaluated = SegmentSet({n: s for n, s in usable.segments.items() if n not in lacking}, usable.source,
                               usable.text)
        source = f"the refresh as of {as_of.isoformat()}" if refresh else "none (no batch refresh yet)"
        return cls(evaluated, thresholds, {**skipped, **lacking}, source, as_of)

    @classmethod
    def fitted(cls, usable: SegmentSet, skipped: dict[str, str], population: Population) -> SegmentRules:
        """With thresholds fitted on a whole `population`, as a refresh fits them."""
        return cls(usable, population.fit_thresholds(usable), dict(skipped),
                   f"fitted on the {population.rows:,} scored customers")

    def segments_of(self, features: pd.DataFrame, scores, bundle: ScoringBundle | None) -> list[list[str]]:
        """Per row of `features` (aligned with its `scores`: the bundle's score frame or its columns): the sorted names
        of the evaluated segments it is in.

        The same evaluation as `evaluate` (vectorised per condition) over the features and scores as they are: the
        conditions read each field from whichever has it, without concatenating them (`segment_values`), which
        cost more than evaluating one customer. `bundle`: the bundle `scores` came from (None: features only).
        """
        frames = (features, scores) if bundle is not None and bundle.models else (features,)
        members = memberships(self.evaluated, FieldArrays(*frames), self.thresholds)
        names = sorted(members)
        if not names:
            return [[] for _ in range(len(features))]
        hits = np.column_stack([members[name] for name in names])
        return [[name for name, hit in zip(names, row, strict=True) if hit] for row in hits.tolist()]


@dataclass
class Changes:
    """What one evaluation changes: log rows, customer states to store, and the new membership."""

    changes: list[Change] = field(default_factory=list)
    states: dict[str, JSONText] = field(default_factory=dict)
    membership: pd.DataFrame | None = None


def state_columns(segments: SegmentSet) -> list[str]:
    """The fields the segments read: what a customer's stored state holds and causes compare."""
    return sorted({f for s in segments for f in s.fields()})


def stored_state_values(values_columns: list[str], customer_ids: list[str], states: Mapping[str, dict]) -> pd.DataFrame:
    """Old values of the given customers as a frame (missing for a customer never evaluated), as they were stored:
    objects, so a stored 2 stays 2 whichever other customers are read with it (a float column made it 2.0)."""
    frame = pd.DataFrame([states.get(cid) or {} for cid in customer_ids], columns=values_columns, dtype=object)
    frame["customer_id"] = customer_ids
    return frame


def membership_matrix(stored: pd.DataFrame, customer_ids: pd.Index, segments: list[str]) -> pd.DataFrame:
    """The stored membership (segment, customer_id rows) as a boolean customers x segments frame."""
    if customer_ids.is_unique:  # one row per customer (always, in practice): set the cells by position at once
        rows = customer_ids.get_indexer(stored["customer_id"])
        columns = pd.Index(segments).get_indexer(stored["segment"])
        known = (rows >= 0) & (columns >= 0)
        cells = np.zeros((len(customer_ids), len(segments)), dtype=bool)
        cells[rows[known], columns[known]] = True
        return pd.DataFrame(cells, index=customer_ids, columns=segments)
    matrix = pd.DataFrame(False, index=customer_ids, columns=segments)
    known = stored[stored["segment"].isin(segments) & stored["customer_id"].isin(customer_ids)]
    for segment, group in known.groupby("segment"):
        matrix.loc[group["customer_id"].to_numpy(), segment] = True
    return matrix


def changes_for(segments: SegmentSet, values: pd.DataFrame, thresholds: dict, stored_members: pd.DataFrame,
                stored_states: Mapping[str, dict], old_thresholds: dict, at: datetime, source: str,
                new: pd.DataFrame | None = None) -> Changes:
    """Entries and exits (with causes) of the customers in `values` against what the store holds for them.

    `stored_members` (segment, customer_id) and `stored_states` must cover these customers; members of segments no
    longer defined exit with REMOVED_CAUSE (only in a batch refresh, which sees every customer). `new`: the rows'
    membership when evaluated already (`evaluate(segments, values, thresholds)`, e.g. on Spark).
    """
    new = evaluate(segments, values, thresholds) if new is None else new
    old = membership_matrix(stored_members, new.index, segments.names())
    columns = state_columns(segments)
    result = Changes(membership=new)
    new_cells, old_cells = new.to_numpy(), old.to_numpy()
    flipped = new_cells != old_cells
    rows = np.flatnonzero(flipped.any(axis=1))
    if len(rows):
        ids = new.index[rows].tolist()
        old_values = stored_state_values(columns, ids, stored_states)
        new_values = values[["customer_id", *columns]]  # what causes read
        if len(rows) < len(values):  # else every row (an event's one): a take of a wide frame costs ~0.3 ms
            new_values = new_values.iloc[rows]
        new_values = new_values.reset_index(drop=True)
        old_members = dict(zip(old.columns, old_cells[rows].T, strict=True))
        new_members = dict(zip(new.columns, new_cells[rows].T, strict=True))
        for j, segment in enumerate(segments):
            moved = np.flatnonzero(flipped[rows, j])
            if not len(moved):
                continue
            if len(moved) == len(rows):  # every flipped customer (one, for an event): the frames as they are
                why = causes(segment, old_values, new_values, old_thresholds, thresholds, old_members, new_members)
            else:
                why = causes(segment, old_values.iloc[moved].reset_index(drop=True),
                             new_values.iloc[moved].reset_index(drop=True), old_thresholds, thresholds,
                             {s: m[moved] for s, m in old_members.items()},
                             {s: m[moved] for s, m in new_members.items()})
            # A refresh logs millions of changes: their causes are kept as the JSON text the store writes (an
            # event's are answered to the caller as they are).
            if source == "refresh":
                why = [json_text(cause) for cause in why]
            kinds = np.where(new_members[segment.name][moved], "entered", "exited").tolist()
            result.changes += [Change(ids[i], segment.name, kind, at, cause, source)
                               for i, kind, cause in zip(moved.tolist(), kinds, why, strict=True)]
    if source == "refresh":
        gone = stored_members[~stored_members["segment"].isin(segments.names())]
        removed = json_text([REMOVED_CAUSE])
        result.changes += [Change(cid, seg, "exited", at, removed, source)
                           for seg, cid in zip(gone["segment"], gone["customer_id"], strict=True)]
    result.states = changed_states(values, columns, stored_states)
    return result


def changed_states(values: pd.DataFrame, columns: list[str], stored: Mapping[str, dict]) -> dict[str, JSONText]:
    """The values conditions read, per customer, in the store's JSON text, where it differs from the stored text
    (so re-running writes nothing). Compared as text: stored states are not parsed, new ones not kept as dicts."""
    stored_text = stored.text if isinstance(stored, StoredStates) else (
        lambda cid: json_text(stored[cid]) if cid in stored else None)
    out = {}
    for start in range(0, len(values), STATE_CHUNK):  # a million rows as dicts at once took ~1.3 GB
        # One chunk is the frame itself: a slice of a frame of many columns costs ~0.4 ms (an event's one row).
        chunk = values if len(values) <= STATE_CHUNK else values.iloc[start : start + STATE_CHUNK]
        ids = chunk["customer_id"].astype(str).tolist()
        # Columns as lists of Python scalars zipped into records (NaN stays NaN: the store writes it as null, as
        # `plain` would): what `to_dict("records")` gives, without its boxing cell by cell (~1 ms for one customer).
        lists = [chunk[name].tolist() for name in columns]
        rows = zip(*lists, strict=True) if lists else [()] * len(ids)
        for customer_id, row in zip(ids, rows, strict=True):
            text = json_text(dict(zip(columns, row, strict=True)))
            if text != stored_text(customer_id):
                out[customer_id] = text
    return out



class RefreshOrderError(ValueError):
    """A refresh before the last one: the log only moves forward in time."""


class _Superseded(RuntimeError):
    """Another refresh was written between planning this one and writing it."""


@dataclass
class RefreshReport:
    as_of: datetime
    sizes: pd.DataFrame  # segment, kind, members, holdout, entered, exited
    skipped: dict[str, str]
    changes: int
    written: bool
    kept_newer: int = 0  # customers left as events evaluated them after as_of
    reconciled: int = 0  # customers whose changes were recomputed because events moved them during the refresh


MEMBER_PREFIX = "member of "  # + a segment's name: a population file's column of its membership (`Population.evaluated`)


@dataclass
class Population:
    """Every customer evaluated as of one date, before any comparison with the store: customer_id, the fields the
    segments read and the model scores (and any features asked for), one row per customer in customer-id order, in
    a temporary Parquet file (`path`) that a refresh reads a chunk of customers at a time. Held in memory, these values
    took 48 MB per 250,000 customers and made a refresh's memory grow with the programme.

    evaluated: the file also holds each usable segment's membership (`MEMBER_PREFIX`, evaluated on Spark); else it
    is evaluated from the values, chunk by chunk. The file is removed by `close` (or when the object is collected).
    """

    path: Path
    rows: int
    usable: SegmentSet
    skipped: dict[str, str]
    thresholds: dict
    evaluated: bool = False
    folder: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def chunks(self, rows: int = PLAN_CHUNK) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
        """(values, membership: `evaluate`'s frame) per chunk of `rows` customers in id order (at least one chunk)."""
        member_columns = {MEMBER_PREFIX + name: name for name in self.usable.names()} if self.evaluated else {}
        for chunk in self._file_chunks(rows):
            values = chunk.drop(columns=list(member_columns))
            if not member_columns:
                yield values, evaluate(self.usable, values, self.thresholds)
                continue
            membership = chunk[list(member_columns)].astype(bool).rename(columns=member_columns)
            yield values, membership.set_axis(pd.Index(values["customer_id"].astype(str), name="customer_id"))

    def value_chunks(self, rows: int = PLAN_CHUNK) -> Iterator[pd.DataFrame]:
        """The values alone, per chunk of `rows` customers in id order."""
        return self._file_chunks(rows, self.value_columns())

    def value_columns(self) -> list[str]:
        """The file's columns but the membership ones."""
        return [c for c in pq.read_schema(self.path).names if not c.startswith(MEMBER_PREFIX)]

    def _file_chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """The file (only `columns` when given) `rows` at a time; a ValueError if the ids do not ascend: the id
        ranges a refresh reads the store by rely on it."""
        return in_customer_order(read_frame_batches(self.path, rows, columns))

    def id_chunks(self, rows: int = PLAN_CHUNK) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, str | None, str | None]]:
        """`chunks`, each with the id range [low, high) it covers (None: unbounded). The ranges tile every possible id,
        so each customer the store holds is read with exactly one chunk, also one the population no longer has. Ids
        are ordered by code point, as `Database.id_range` compares them."""
        chunks = self.chunks(rows)
        current, low = next(chunks), None
        for following in chain(chunks, [None]):
            high = None if following is None else str(following[0]["customer_id"].iloc[0])
            yield (*current, low, high)
            current, low = following, high

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The whole population's values (only `columns` when given), for what needs every customer at once."""
        return read_feature_rows(self.path, columns=columns if columns is not None else self.value_columns())

    def rows_of(self, customer_ids: set[str]) -> pd.DataFrame:
        """The values of the customers in `customer_ids`."""
        return pd.concat([values[values["customer_id"].astype(str).isin(customer_ids)]
                          for values in self.value_chunks()], ignore_index=True)

    def count_of(self, customer_ids: set[str]) -> int:
        """How many of `customer_ids` the population holds."""
        ids = pa.array(sorted(customer_ids), type=pa.string())
        return sum(pc.sum(pc.is_in(pc.cast(batch.column(0), pa.string()), value_set=ids)).as_py() or 0
                   for batch in pq.ParquetFile(self.path).iter_batches(columns=["customer_id"]))

    def fit_thresholds(self, segments: SegmentSet) -> dict[str, float]:
        """`fit_thresholds` of `segments` on this population, reading only the fields they rank customers by."""
        fields = sorted({name for name, _ in threshold_quantiles(segments).values()})
        return fit_thresholds(segments, self.read(fields))

    def close(self) -> None:
        if self.folder is not None:
            self.folder.cleanup()


class SpilledChanges:
    """A refresh's planned changes and states, a chunk of customers at a time, in an unnamed temporary file (gone
    with the process, even when killed): a first refresh of a million customers plans ~2.6M changes with causes,
    which took ~2 GB kept in memory until the write, and grew with the customers.

    Every change of a refresh has its as_of and source, so a chunk is spilled as columns of plain strings: pickling
    the `Change` tuples one by one took ~10x as long (13 s of a first refresh at 1M)."""

    def __init__(self, at: datetime, source: str = "refresh"):
        self.at, self.source = at, source
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (kept open until close(): the plan outlives planning)
        self._chunks = 0

    def add(self, changes: Changes) -> None:
        columns = ([c.customer_id for c in changes.changes], [c.segment for c in changes.changes],
                   [c.change for c in changes.changes], [str(c.cause) for c in changes.changes],
                   list(changes.states), [str(state) for state in changes.states.values()])
        pickle.dump(columns, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._chunks += 1

    def __iter__(self) -> Iterator[tuple[list[Change], dict[str, JSONText]]]:
        """(changes, states) per chunk, in planning order."""
        self._file.seek(0)
        for _ in range(self._chunks):
            ids, segments, kinds, causes_text, state_ids, states = pickle.load(self._file)
            yield ([Change(cid, segment, kind, self.at, JSONText(cause), self.source)
                    for cid, segment, kind, cause in zip(ids, segments, kinds, causes_text, strict=True)],
                   dict(zip(state_ids, map(JSONText, states), strict=True)))

    def close(self) -> None:
        self._file.close()


@dataclass
class RefreshPlan:
    """A refresh evaluated against a snapshot of the store, not yet written (`apply_refresh` writes it)."""

    as_of: datetime
    definitions_hash: str
    population: Population
    last: dict | None  # the last refresh when planned
    watermark: int  # the log's last seq before the snapshot was read
    planned: SpilledChanges
    members: MemberCounts  # of the population's new membership

    @staticmethod
    def old_thresholds(last: dict | None) -> dict:
        """The thresholds the stored states were evaluated with: the last refresh's."""
        return last["thresholds"] if last else {}


def evaluate_population(segments: SegmentSet, features: pd.DataFrame, bundle: ScoringBundle | None) -> Population:
    """The values (every feature and the scores), usable segments, skipped {name: reason} and fitted thresholds of
    a whole feature frame as of one date (membership left to the refresh)."""
    ordered = features.assign(_id=features["customer_id"].astype(str)).sort_values("_id", kind="stable")
    return evaluate_batches(segments, [ordered.drop(columns="_id")], bundle, also=tuple(features.columns))[0]


def evaluate_batches(segments: SegmentSet, batches: Iterable[pd.DataFrame], bundle: ScoringBundle | None,
                     also: tuple[str, ...] = ()) -> tuple[Population, pd.DataFrame]:
    """`evaluate_population` over feature batches in customer order, scored one batch at a time and written to the
    population's file as scored, keeping only what a refresh reads (`population_columns`) and the features `also`,
    so neither the features nor the values of the whole population are held; and the first feature row (it names
    the models' outputs in the prediction log)."""
    resolved: dict = {}

    def kept() -> Iterator[pd.DataFrame]:
        for batch in batches:
            values = segment_values(batch, bundle)
            if not resolved:
                usable, skipped = segments.resolve(run_fields(values, bundle))
                keep = population_columns(list(values.columns), list(batch.columns), usable)
                resolved.update(head=batch.head(1), usable=usable, skipped=skipped,
                                keep=keep + [c for c in also if c not in keep])
            yield values[resolved["keep"]]

    folder = tempfile.TemporaryDirectory(prefix="segments-population-")
    try:
        path, rows = write_frame_batches(kept(), Path(folder.name) / "population.parquet")
    except BaseException:
        folder.cleanup()
        raise
    population = Population(path, rows, resolved["usable"], resolved["skipped"], {}, folder=folder)
    population.thresholds = population.fit_thresholds(population.usable)
    return population, resolved["head"]


def in_customer_order(chunks: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`chunks` as they come, checked to hold each customer once in ascending id order (a ValueError if not)."""
    last = None
    for chunk in chunks:
        ids = chunk["customer_id"].astype(str)
        if len(ids) and not (ids.is_monotonic_increasing and ids.is_unique and (last is None or ids.iloc[0] > last)):
            raise ValueError("customers must come once each, in customer-id order")
        last = ids.iloc[-1] if len(ids) else last
        yield chunk


def spilled_population(batches: Iterable[pd.DataFrame], usable: SegmentSet, skipped: dict[str, str],
                       thresholds: dict) -> Population:
    """A population evaluated elsewhere (on Spark), from batches in customer order: each holds the values and, per
    segment, its membership as a `member of <segment>` column (`MEMBER_PREFIX`)."""
    folder = tempfile.TemporaryDirectory(prefix="segments-population-")
    try:
        path, rows = write_frame_batches(batches, Path(folder.name) / "population.parquet")
    except BaseException:
        folder.cleanup()
        raise
    return Population(path, rows, usable, skipped, thresholds, evaluated=True, folder=folder)


def population_columns(columns: list[str], feature_columns: list[str], usable: SegmentSet) -> list[str]:
    """The columns of evaluated values a refresh reads: customer_id, the fields the segments read and every score
    (the prediction log's)."""
    fields = [c for c in state_columns(usable) if c in columns]
    return ["customer_id", *fields, *(c for c in columns if c not in feature_columns and c not in fields)]


def refresh(store, segments: SegmentSet, features: pd.DataFrame, bundle: ScoringBundle | None,
            as_of: datetime, attempts: int = 3) -> RefreshReport:
    """Evaluate every segment for every customer in `features` (as of `as_of`) and record the changes, the
    customers' new states and the refresh in one transaction. The same as_of again writes nothing new."""
    check_order(store.current.last_refresh(), as_of)  # before the long evaluation
    population = evaluate_population(segments, features, bundle)
    try:
        return refresh_population(store, segments, population, as_of, attempts)
    finally:
        population.close()


def refresh_population(store, segments: SegmentSet, population: Population, as_of: datetime,
                       attempts: int = 3) -> RefreshReport:
    """Record a population evaluated as of `as_of` (by DuckDB or Spark) as a refresh of `segments`.

    Evaluating a population takes long, so it runs outside the store's write lock and is compared with a snapshot;
    events may move customers meanwhile. The write then reconciles under the lock (`apply_refresh`): nothing an
    event wrote is lost and the log stays in time order. Killed at any point, a refresh leaves nothing or all of it.
    """
    for _ in range(attempts):
        with paused_gc():
            try:
                return apply_refresh(store, plan_refresh(store, segments, population, as_of))
            except _Superseded:
                continue
    raise RuntimeError(f"other refreshes were written while this one ran, {attempts} times: run it again")


def check_order(last: dict | None, as_of: datetime) -> None:
    """A RefreshOrderError when `as_of` is before the `last` refresh's."""
    if last is not None and as_of < last["as_of"]:
        raise RefreshOrderError(f"the last refresh was as of {last['as_of']:%Y-%m-%d %H:%M}; a refresh as of "
                                f"{as_of:%Y-%m-%d %H:%M} would rewrite history: refresh at that date or later")


def plan_refresh(store, segments: SegmentSet, population: Population, as_of: datetime) -> RefreshPlan:
    """Diff an evaluated population against a snapshot of the store (read without the write lock), a chunk of
    customers at a time: each chunk's stored members and states are read by id range and its changes spilled."""
    last = store.current.last_refresh()
    check_order(last, as_of)
    watermark = store.changes.last_seq()  # read before the snapshot: a change after it is found again at write time
    p = population
    columns = ["customer_id", *state_columns(p.usable)]  # what a diff reads
    planned, members = SpilledChanges(as_of), MemberCounts(p.usable)
    try:
        with store.consistent_read() as conn:  # every chunk is compared with the same snapshot
            for values, membership, low, high in p.id_chunks(PLAN_CHUNK):
                members.add(membership)
                planned.add(changes_for(p.usable, values[columns], p.thresholds,
                                        store.current.member_pairs(conn, low, high),
                                        store.current.states_between(low, high, conn),
                                        RefreshPlan.old_thresholds(last), as_of, "refresh", membership))
    except BaseException:
        planned.close()
        raise
    return RefreshPlan(as_of, segments.definitions_hash, population, last, watermark, planned, members)


def apply_refresh(store, plan: RefreshPlan) -> RefreshReport:
    """Write a plan in one transaction, under the lock that events take too, after reconciling it with the store:

    - customers an event evaluated later than as_of keep their newer membership (a refresh never writes a change
      before one already logged for them);
    - customers an event moved since the snapshot (at or before as_of) get their changes computed again against
      what the store holds now, so no entry or exit is logged twice or lost.

    The planned chunks are written one after the other, so memory holds one chunk's changes. A plan is applied
    once: its spilled changes are gone after (also when another refresh superseded it).
    """
    try:
        return _apply(store, plan)
    finally:
        plan.planned.close()


def _apply(store, plan: RefreshPlan) -> RefreshReport:
    p = plan.population
    with store.transaction() as conn:
        store.write.lock_for_refresh(conn)
        last = store.current.last_refresh(conn)
        if (last and last["id"]) != (plan.last and plan.last["id"]):
            raise _Superseded()
        newer = store.current.evaluated_after(plan.as_of, conn)
        moved = store.changes.customers_since(plan.watermark, conn) - newer
        again = _recomputed(store, conn, plan, moved)

        def chunks() -> Iterator[tuple[list[Change], dict[str, JSONText]]]:
            return chain(_kept(plan.planned, newer | moved), [again])

        repeat = last is not None and last["as_of"] == plan.as_of and last["definitions_hash"] == plan.definitions_hash
        written = not (repeat and not any(changes or states for changes, states in chunks()))
        tally: Counter = Counter()
        if written:
            recorded_at = utc_now()
            for changes, states in chunks():
                store.write.record(conn, changes, states, plan.as_of, recorded_at=recorded_at)
                tally.update((c.segment, c.change) for c in changes)
            store.write.record_refresh(conn, {"as_of": plan.as_of, "definitions_hash": plan.definitions_hash,
                                              "thresholds": p.thresholds, "customers": p.rows,
                                              "changes": tally.total()}, recorded_at)
    kept_newer = p.count_of(newer) if newer else 0
    return RefreshReport(plan.as_of, plan.members.table(tally), p.skipped, tally.total(), written, kept_newer,
                         len(moved))


def _kept(planned: SpilledChanges, left_out: set[str]) -> Iterator[tuple[list[Change], dict[str, JSONText]]]:
    """The planned chunks without the customers in `left_out`."""
    for changes, states in planned:
        if left_out:
            changes = [c for c in changes if c.customer_id not in left_out]
            states = {cid: state for cid, state in states.items() if cid not in left_out}
        yield changes, states


def _recomputed(store, conn, plan: RefreshPlan, moved: set[str]) -> tuple[list[Change], dict[str, JSONText]]:
    """The changes and states of the customers in `moved`, computed again against what the store holds now."""
    if not moved:
        return [], {}
    ids, p = sorted(moved), plan.population
    rows = p.rows_of(moved)
    again = changes_for(p.usable, rows, p.thresholds, store.current.memberships(ids, conn),
                        store.current.states(ids, conn), RefreshPlan.old_thresholds(plan.last), plan.as_of, "refresh")
    return again.changes, again.states


class MemberCounts:
    """Per segment: its members and members held out, added up a chunk of customers at a time."""

    def __init__(self, segments: SegmentSet):
        self.segments = segments
        self.members: Counter = Counter()
        self.holdout: Counter = Counter()

    def add(self, membership: pd.DataFrame) -> None:
        for segment in self.segments:
            members = membership.index[membership[segment.name].to_numpy()]
            self.members[segment.name] += len(members)
            self.holdout[segment.name] += int(in_holdout(members, segment.name, segment.holdout_percent).sum())

    def table(self, tally: Counter) -> pd.DataFrame:
        """Per segment: kind, members, members held out, and the entries and exits written ({(segment, change): n})."""
        return pd.DataFrame([{"segment": s.name, "kind": s.kind, "members": self.members[s.name],
                              "holdout": self.holdout[s.name], "entered": tally[(s.name, "entered")],
                              "exited": tally[(s.name, "exited")]} for s in self.segments],
                            columns=["segment", "kind", "members", "holdout", "entered", "exited"])


def preview(segments: SegmentSet, name: str, population: Population, sample: int = 10,
            seed: int = 0) -> tuple[int, pd.DataFrame, dict[str, str]]:
    """(exact size, a random sample of members with the fields the segment reads, skipped) of `population` (as
    `evaluate_batches` gives it) without saving anything."""
    check_segment_name(segments, name)
    p = population
    if name in p.skipped:
        raise LookupError(f"segment {name!r} cannot be evaluated here: {p.skipped[name]}")
    needed = p.usable.closure([name])
    columns = ["customer_id", *sorted(needed[name].fields())]
    members = pd.concat([values.loc[evaluate(needed, values, p.thresholds)[name].to_numpy(), columns]
                         for values in p.value_chunks()], ignore_index=True)
    return len(members), members.sample(min(sample, len(members)), random_state=seed), p.skipped


def check_segment_name(segments: SegmentSet, name: str) -> None:
    """KeyError unless `name` is a defined segment (or one of a cluster segment's per-cluster segments)."""
    if name not in segments.names() and not any(name.startswith(f"{s.name}_") and s.kind == "cluster"
                                                for s in segments):
        raise KeyError(f"no segment named {name!r}; defined: {', '.join(segments.names())}")

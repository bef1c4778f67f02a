"""Seed segments for look-alike models: who the "customers like these" are.

A seed is one of
- ``rule:<expression>``: a pandas ``DataFrame.eval`` expression over feature columns, e.g.
  ``rule:orders_count_90d >= 3 and top_category_365d == "apparel"``. The columns it names are checked against the
  feature table first (an unknown column is an error that names it). The features the rule uses, and their window
  variants of the same business attribute (all ``orders_count_*`` when the rule uses ``orders_count_14d``), are
  recorded as ``excluded_features`` with the derived features computed from them (aov_365d from spend_sum_365d and
  orders_count_365d): a look-alike model must not see the definition of its own seed.
- ``tag:<tag>``: customers whose ``tags`` (customers table, ';'-separated) contain the tag (case-insensitive).
- ``ids:<path>``: a CSV with a ``customer_id`` column, or a text file with one id per line. Ids that are not in
  the feature table are reported in the definition, not fatal.
- a built-in name: ``best_members`` or ``loyalty_members`` (see `BUILTIN_SEEDS`).

`resolve_seed` turns any of these into the member ids and a JSON-ready definition that the model stores. Members are
always customers of the given feature table (known at its as_of).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import ibis
import ibis.expr.operations as ops
import numpy as np
import pandas as pd

from features.catalog import FEATURES
from features.validate import ValidationResult

# Window suffixes of the catalog's names: "orders_count_14d" and "orders_count_prev_90d" share "orders_count".
_WINDOW_SUFFIX = re.compile(r"_(?:prev_)?(?:\d+d|total)$")
_SHOW_UNKNOWN = 10  # unknown ids listed in the definition (the count is always complete)


class SeedSpecError(ValueError):
    """A seed specification that cannot be resolved: the message says what is wrong and how to write it."""


@dataclass(frozen=True)
class SeedSegment:
    """A seed segment definition (not yet resolved against data).

    Attributes:
        name: short name, used in model names (letters, digits, '_' and '-').
        kind: "rule", "tag" or "ids".
        rule: for rules, the condition (a pandas expression over feature columns).
        top_by, top_share: for rules, optionally keep only the top `top_share` of the matching customers by the
            feature `top_by` (the threshold is computed on the data and recorded in the definition).
        tag: for tags, the tag to look for.
        path: for ids, the file of customer ids.
        description: one line for reports.
        exclude: features a look-alike of this seed must not use beyond those found from the rule (e.g. the
            loyalty features that exist only for members, for a seed of members).
    """

    name: str
    kind: str
    rule: str | None = None
    top_by: str | None = None
    top_share: float | None = None
    tag: str | None = None
    path: str | None = None
    description: str = ""
    exclude: tuple[str, ...] = ()


BUILTIN_SEEDS: dict[str, SeedSegment] = {
    # "Best" = value over the last year among repeat buyers: one big purchase does not make a best member, and
    # the year (not all time) keeps lapsed former big spenders out.
    "best_members": SeedSegment(
        "best_members", "rule", rule="orders_count_365d >= 2", top_by="spend_sum_365d", top_share=0.10,
        description="Top 10% by spend in the last 365 days among customers with at least 2 purchases in them"),
    # Tenure, tier and points exist only for members, and rewards are redeemed only by members: any of them would
    # give membership away, so the model looks for non-members who *behave* like members.
    "loyalty_members": SeedSegment(
        "loyalty_members", "rule", rule="loyalty_member == True",
        description="Members of the loyalty programme at as_of",
        exclude=("loyalty_tenure_days", "loyalty_tier", "points_balance", "points_earned_365d",
                 "points_redeemed_365d", "points_redemption_rate_365d", "reward_redeemed_count_365d")),
}
SPEC_HELP = ("write a seed as 'rule:<condition over feature columns>' (e.g. 'rule:orders_count_90d >= 3'), "
             "'tag:<tag>', 'ids:<file of customer ids>', or a built-in name (" + ", ".join(BUILTIN_SEEDS) + ")")


def parse_seed_spec(spec: str) -> SeedSegment:
    """A seed specification string -> SeedSegment (no data is read)."""
    spec = spec.strip()
    if spec in BUILTIN_SEEDS:
        return BUILTIN_SEEDS[spec]
    kind, sep, body = spec.partition(":")
    body = body.strip()
    if not sep or kind not in ("rule", "tag", "ids"):
        raise SeedSpecError(f"unknown seed '{spec}': {SPEC_HELP}")
    if not body:
        raise SeedSpecError(f"seed '{spec}' is empty after '{kind}:': {SPEC_HELP}")
    digest = hashlib.sha1(body.encode()).hexdigest()[:8]
    if kind == "rule":
        return SeedSegment(f"rule_{digest}", "rule", rule=body, description=f"Customers with {body}")
    if kind == "tag":
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", body)
        return SeedSegment(f"tag_{safe}", "tag", tag=body, description=f"Customers tagged '{body}'")
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(body).stem)
    return SeedSegment(f"ids_{safe}", "ids", path=body, description=f"Customers listed in {body}")


def resolve_seed(name_or_spec: str | SeedSegment, features: pd.DataFrame,
                 validation: ValidationResult | None = None) -> tuple[set[str], dict]:
    """Members of a seed among the customers of `features`, and its definition.

    Args:
        name_or_spec: a built-in name, a 'rule:'/'tag:'/'ids:' specification, or a SeedSegment.
        features: the feature table (customer_id plus feature columns) as of the model's as_of.
        validation: the validated tables; only tag seeds read it (the customers table's tags column).

    Returns:
        (member customer ids, definition) where the definition is JSON-ready: name, kind, description, the spec's
        fields, n_members, members_sha1 (digest of the sorted ids), features_used, excluded_features and
        exclusion_reasons (rules; empty for tags and ids), unknown ids (ids seeds), not_in_features (tags).
    """
    seed = name_or_spec if isinstance(name_or_spec, SeedSegment) else parse_seed_spec(name_or_spec)
    if seed.kind == "rule":
        ids, details = _rule_members(seed, features)
    elif seed.kind == "tag":
        ids, details = _tag_members(seed, features, validation)
    elif seed.kind == "ids":
        ids, details = _listed_members(seed, features)
    else:
        raise SeedSpecError(f"seed '{seed.name}' has unknown kind '{seed.kind}': use rule, tag or ids")
    # The members' digest lets two runs tell whether they used the same seed (an id file can change in place).
    digest = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()
    definition = {"name": seed.name, "kind": seed.kind, "description": seed.description,
                  "excluded_features": [], **details, "n_members": len(ids), "members_sha1": digest}
    return ids, definition


# ---------------------------------------------------------------------------------------------------------------
# Rules


def rule_columns(rule: str, columns: list[str]) -> list[str]:
    """The columns a rule names, in order of first use; an unknown name or a malformed rule raises SeedSpecError."""
    try:
        tree = ast.parse(rule, mode="eval")
    except SyntaxError as exc:
        raise SeedSpecError(f"rule '{rule}' is not a valid condition ({exc.msg} at character {exc.offset}): "
                            "write e.g. 'orders_count_90d >= 3 and loyalty_member == True'") from exc
    names = list(dict.fromkeys(node.id for node in ast.walk(tree) if isinstance(node, ast.Name)))
    unknown = [n for n in names if n not in columns]
    if unknown:
        hints = [f"'{n}'" + (f" (did you mean '{close[0]}'?)" if (close := difflib.get_close_matches(n, columns, 1))
                             else "") for n in unknown]
        raise SeedSpecError(f"rule '{rule}' uses unknown column(s) {', '.join(hints)}: a rule may use the feature "
                            "table's columns (see `segments catalog`)")
    return names


def attribute_variants(used: list[str], columns: list[str]) -> list[str]:
    """Columns that are window variants of the business attributes in `used` (`used` included), in `columns` order.

    Variants share the name without its window suffix (_14d, _30d, _90d, _365d, _total, _prev_90d): using
    orders_count_14d brings in orders_count_30d, ..., orders_count_total and orders_count_prev_90d.
    """
    stems = {_WINDOW_SUFFIX.sub("", name) for name in used}
    return [c for c in columns if c != "customer_id" and (c in used or _WINDOW_SUFFIX.sub("", c) in stems)]


def derived_inputs() -> dict[str, set[str]]:
    """Derived catalog feature -> the features its definition reads (e.g. aov_365d -> spend_sum_365d,
    orders_count_365d), read off the Ibis expressions of the catalog."""
    types = {f.name: f.dtype for f in FEATURES}
    table = ibis.table(types, name="derived")
    return {f.name: {field.name for field in f.expr(table).op().find(ops.Field)}
            for f in FEATURES if f.source == "derived"}


def exclusions(used: list[str], columns: list[str], extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Features a look-alike of a rule seed must not use -> why, in `columns` order.

    The rule's own features, their window variants (same business attribute), the derived features computed from
    any of those (aov_365d from spend_sum_365d, ...), repeated until nothing changes, and `extra` (the seed's own
    list).
    """
    reasons = {c: ("used by the rule" if c in used else "window variant of a feature the rule uses")
               for c in attribute_variants(used, columns)}
    inputs = derived_inputs()
    changed = True
    while changed:
        changed = False
        for name, reads in inputs.items():
            if name in columns and name not in reasons and reads & set(reasons):
                reasons[name] = "computed from " + ", ".join(sorted(reads & set(reasons)))
                changed = True
    reasons.update({c: "excluded by the seed's definition" for c in extra if c in columns and c not in reasons})
    return {c: reasons[c] for c in columns if c in reasons}


def rule_mask(rule: str, features: pd.DataFrame) -> pd.Series:
    """Boolean mask of the rows satisfying `rule` (missing values never satisfy it)."""
    rule_columns(rule, list(features.columns))
    try:
        result = features.eval(rule, engine="python")
    except Exception as exc:  # pandas raises many types for a bad expression; the message is what matters
        raise SeedSpecError(f"rule '{rule}' could not be evaluated on the feature table: {exc}") from exc
    boolean = isinstance(result, pd.Series) and (
        pd.api.types.is_bool_dtype(result.dtype)
        or result.dtype == object and result.map(lambda v: isinstance(v, bool | np.bool_) or pd.isna(v)).all())
    if not boolean:
        raise SeedSpecError(f"rule '{rule}' is not a condition (it gives {getattr(result, 'dtype', type(result))}, "
                            "not true/false per customer): compare a column, e.g. 'orders_count_90d >= 3'")
    return result.astype("boolean").fillna(False).astype(bool)


def _rule_members(seed: SeedSegment, features: pd.DataFrame) -> tuple[set[str], dict]:
    columns = list(features.columns)
    used = rule_columns(seed.rule, columns)
    mask = rule_mask(seed.rule, features)
    resolved = seed.rule
    if seed.top_by is not None:
        used = list(dict.fromkeys([*used, *rule_columns(seed.top_by, columns)]))
        values = features.loc[mask, seed.top_by].astype("float64")
        if values.notna().any():
            threshold = float(np.nanquantile(values.to_numpy(dtype=float, na_value=np.nan), 1.0 - seed.top_share))
            mask &= features[seed.top_by].astype("float64").fillna(-np.inf).to_numpy() >= threshold
            resolved = f"({seed.rule}) and {seed.top_by} >= {threshold!r}"
    ids = set(features.loc[mask, "customer_id"].astype(str))
    reasons = exclusions(used, columns, seed.exclude)
    details = {"rule": seed.rule, "resolved_rule": resolved, "top_by": seed.top_by, "top_share": seed.top_share,
               "features_used": used, "excluded_features": list(reasons), "exclusion_reasons": reasons}
    return ids, details


# ---------------------------------------------------------------------------------------------------------------
# Tags and id lists


def _tag_members(seed: SeedSegment, features: pd.DataFrame,
                 validation: ValidationResult | None) -> tuple[set[str], dict]:
    if validation is None or "customers" not in validation.tables:
        raise SeedSpecError(f"seed 'tag:{seed.tag}' needs the customers table (with a tags column), but no "
                            "customers table was loaded: add customers.csv|parquet to --data")
    if "tags" not in validation.columns.get("customers", []):
        raise SeedSpecError(f"seed 'tag:{seed.tag}': the customers table ({validation.sources.get('customers')}) "
                            "has no tags column: add one (';'-separated tags) or use a rule: or ids: seed")
    table = validation.con.execute("SELECT customer_id, tags FROM customers WHERE tags IS NOT NULL").df()
    wanted = seed.tag.strip().lower()
    tagged = {str(cid) for cid, tags in zip(table["customer_id"], table["tags"]) if wanted in _tag_set(tags)}
    known = set(features["customer_id"].astype(str))
    return tagged & known, {"tag": seed.tag, "not_in_features": len(tagged - known)}


def _tag_set(tags) -> set[str]:
    """Tags of one customer as lower-case strings: a ';'-separated string or a list."""
    values = tags.split(";") if isinstance(tags, str) else list(tags)
    return {str(v).strip().lower() for v in values if str(v).strip()}


def read_id_file(path: Path) -> list[str]:
    """Customer ids from a CSV with a customer_id column, or a file with one id per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise SeedSpecError(f"seed file '{path}' does not exist: give a CSV with a customer_id column or a text "
                            "file with one customer id per line")
    lines = path.read_text().splitlines()
    header = [c.strip().strip('"') for c in lines[0].split(",")] if lines else []
    if "customer_id" in header:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        values = frame["customer_id"].tolist()
    else:
        values = lines
    return [v.strip() for v in values if v.strip()]


def _listed_members(seed: SeedSegment, features: pd.DataFrame) -> tuple[set[str], dict]:
    listed = list(dict.fromkeys(read_id_file(Path(seed.path))))
    known = set(features["customer_id"].astype(str))
    unknown = [cid for cid in listed if cid not in known]
    return set(listed) - set(unknown), {"path": str(seed.path), "n_listed": len(listed),
                                        "n_unknown_ids": len(unknown), "unknown_ids": unknown[:_SHOW_UNKNOWN]}

"""The one time rule of the product: every moment is a naive datetime in UTC. Aware values are converted, naive
values are taken as UTC already (the data contract says so), pandas Timestamps become datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd


def naive_utc(moment: datetime) -> datetime:
    """`moment` as a naive UTC datetime."""
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def utc_now() -> datetime:
    """Now, as a naive UTC datetime."""
    return datetime.now(UTC).replace(tzinfo=None)

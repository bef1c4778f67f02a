"""Errors about the input data: it breaks the contract (DESIGN.md section 3), or it is too little for a model."""

from __future__ import annotations


class DataContractError(Exception):
    """The input cannot be used as given: a file or table is missing or unreadable, a required column is
    absent, or too many rows break the contract. The message names the file and the column and says how to fix it."""


class SettingError(ValueError):
    """A setting (an environment variable) that cannot be used: the message names it, its value and what it takes."""


class InsufficientDataError(ValueError):
    """The data is below a model's stated minimum (e.g. too few churners): training would be meaningless.

    The message states the minimum, what was found, and what to change (an earlier --as-of, more history, ...).
    """


class NothingToLearnError(InsufficientDataError):
    """The data holds none of what a model kind learns from (uplift: no campaign with a holdout), rather than too
    little of it: `segments train all` skips that kind with the message; asked for alone, it is an error."""

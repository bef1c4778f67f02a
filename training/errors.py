"""Errors of the training layer."""


class InsufficientDataError(ValueError):
    """The data is below a model's stated minimum (e.g. too few churners): training would be meaningless.

    The message states the minimum, what was found, and what to change (an earlier --as-of, more history, ...).
    """

"""Errors raised when input data breaks the contract (DESIGN.md section 3)."""

from __future__ import annotations


class DataContractError(Exception):
    """The input cannot be used as given: a file or table is missing or unreadable, a required column is
    absent, or too many rows break the contract. The message names the file and the column and says how to fix it."""

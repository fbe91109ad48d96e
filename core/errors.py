"""Errors that the command line turns into exit codes: 2 for usage, 1 for a failed job."""

from __future__ import annotations


class TransferkitError(Exception):
    """A job failed for a reason the user can act on (exit code 1). The message says what to do."""

    exit_code = 1


class UsageError(TransferkitError, ValueError):
    """Bad input from the user: an unknown name, an ill-typed option (exit code 2)."""

    exit_code = 2


class WeightsUnavailableError(TransferkitError):
    """Pretrained weights could not be fetched or read."""

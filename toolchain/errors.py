"""Exit codes and the exceptions that map to them.

Every command (liar-export, liar-eval, liar-bench) uses the same table, so a
release pipeline can tell bad input from a failed verification from a
benchmark regression without parsing text.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_VERIFY_FAILED = 3
EXIT_REGRESSION = 4
EXIT_INTERRUPTED = 130

class LiarError(Exception):
    """Base class: an error with a one-line message and an exit code."""

    exit_code = EXIT_INTERNAL


class UserError(LiarError):
    """The input is wrong; the message says how to fix it."""

    exit_code = EXIT_BAD_INPUT


class VerificationError(LiarError):
    """An exported artifact does not reproduce the PyTorch model."""

    exit_code = EXIT_VERIFY_FAILED


class RegressionError(LiarError):
    """A benchmark metric regressed beyond the allowed threshold."""

    exit_code = EXIT_REGRESSION

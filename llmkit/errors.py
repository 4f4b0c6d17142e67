"""Errors a user can act on.

Every error llmkit raises on purpose is an ``LlmkitError``: the CLI prints its message as one line and
exits with its ``exit_code`` (2: bad usage or input, nothing written; 1: a failure during the run).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlmkitError(Exception):
    exit_code = 2


class ConfigError(LlmkitError):
    """A recipe, flag or ``--set`` value is invalid."""


class DataError(LlmkitError):
    """Input data is missing, unreadable or not in the expected shape."""


class ModelError(LlmkitError):
    """A model or tokenizer path/name is unusable for the job."""


class OutputError(LlmkitError):
    """The output directory cannot be used as asked."""


class RunError(LlmkitError):
    """Something failed after the run started; the message says where the partial state is."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""

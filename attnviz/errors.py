"""Errors attnviz raises on bad input, each with its own exit code.

The CLI turns every :class:`AttnvizError` into one line on stderr and exits with
``error.exit_code``; ``--debug`` shows the traceback instead. Library users catch
:class:`AttnvizError` (or a subclass) like any exception.
"""

from __future__ import annotations


class AttnvizError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code: int = 1


class UsageError(AttnvizError):
    """Bad option values: empty text, layer/head out of range, unknown token..."""

    exit_code = 2


class ModelError(AttnvizError):
    """The model cannot be found, loaded, or has no attention we can capture."""

    exit_code = 3


class AttentionRefused(ModelError):
    """What the model returned as attention is not a ``[query, key]`` probability map of the input (a band or
    block layout, another length, non-finite values): refused before anything is drawn, saved or called exact."""


class InputError(AttnvizError):
    """The input file (image, text file) is missing, empty, corrupt or unsupported."""

    exit_code = 4


class OutputError(AttnvizError):
    """An output folder or file cannot be written."""

    exit_code = 5


class AttnvizWarning(UserWarning):
    """Something the user should know (e.g. truncated input); the CLI prints it as one line."""

"""Errors that tokcal shows to users as one line, without a traceback."""

from __future__ import annotations


class TokcalError(ValueError):
    """A problem with the user's input or setup; the message says what to do."""


class MissingDependencyError(TokcalError, ImportError):
    """An optional package is not installed; the message names the pip command."""


def require(module: str, extra: str):
    """Import ``module`` or raise an error that names the install command of tokcal's ``extra``
    (tokcal is installed from a clone: ``pip install -e '.[extra]'`` there).

    Example:
        >>> np = require("numpy", "core")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # the hint is the point; keep the cause chained
        raise MissingDependencyError(
            f"{module} is not installed; run: pip install -e '.[{extra}]' in your tokcal clone"
        ) from exc


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of an exception's message (at most 300 characters; the exception's
    type when the message is empty), for one-line errors."""
    lines = str(exc).strip().splitlines()
    msg = lines[0][:300] if lines else ""
    if not msg:
        return type(exc).__name__
    return f"{type(exc).__name__}: {msg}" if with_type else msg

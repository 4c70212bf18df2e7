"""Errors the CLI turns into one clear line and an exit code, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XcitEdgeError(Exception):
    """A failure the user can act on; the message is the whole story."""

    exit_code = 2


class UsageError(XcitEdgeError):
    """Bad input: unknown name, missing file, wrong architecture, occupied output."""

    exit_code = 2


class SpecError(XcitEdgeError):
    """The installation's own data is broken: a target spec, a backend, missing package data (exit 2)."""

    exit_code = 2


class OutputError(XcitEdgeError):
    """An output cannot be written: permissions, a full disk, a path that is a file (exit 2)."""

    exit_code = 2


class ConversionError(XcitEdgeError):
    """One target could not be produced or does not run: the others still can (exit 1)."""

    exit_code = 1


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), at most `limit` characters."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest known name, or '' when none is close: typos get a hint, not a list."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

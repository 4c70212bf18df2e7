"""Errors the CLI turns into one clear line and an exit code, never a traceback."""

from __future__ import annotations


class XcitEdgeError(Exception):
    """A failure the user can act on; the message is the whole story."""

    exit_code = 2


class UsageError(XcitEdgeError):
    """Bad input: unknown name, missing file, wrong architecture, occupied output."""

    exit_code = 2


class ConversionError(XcitEdgeError):
    """One target could not be produced or does not run: the others still can (exit 1)."""

    exit_code = 1


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), at most `limit` characters."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__

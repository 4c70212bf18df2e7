"""Atomic output: build in a hidden temp sibling, then rename into place.

A crash or Ctrl-C at any point leaves either the old output or the new one, never a
half-written directory that later commands would mistake for a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from xcit_edge.errors import UsageError


def _nearest_existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty `out` without `force`, or a location we cannot write into.

    Missing parent directories are fine (they are created on write); the nearest existing
    ancestor must be a writable directory.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} is not empty; pass --force to replace it")
    anchor = _nearest_existing(out.resolve().parent)
    if not anchor.is_dir():
        raise UsageError(f"cannot write --out {out}: {anchor} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write --out {out}: {anchor} is not writable")


def _make_parents(parent: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (deepest last) so a failure can undo them."""
    created = []
    for d in reversed([parent, *parent.parents]):
        if not d.exists():
            d.mkdir()
            created.append(d)
    return created


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it replaces `out` (old one removed last).

    On any failure the temp dir and any parent directories made for it are removed.
    """
    out = Path(out)
    check_output_dir(out, force)
    parent = out.resolve().parent
    created: list[Path] = []
    try:
        created = _make_parents(parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        _remove_empty(created)
        raise UsageError(f"cannot write --out {out}: {e.strerror}") from e
    try:
        yield tmp
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temp file path beside `out`; on success it replaces `out` in one rename, on failure it goes."""
    out = Path(out)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=parent)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror}") from e
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; the result should look like any file written here
    try:
        yield tmp
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


def _replace_dir(new: Path, out: Path) -> None:
    if not out.exists():
        new.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
    old.rmdir()
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: Path) -> str:
    """One digest over a directory's relative paths and file contents (SavedModel identity)."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(root).rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def read_json_document(path: Path, fmt: str, what: str, max_bytes: int) -> dict:
    """A JSON object of our format `fmt` from untrusted `path`: size-capped, one-line errors."""
    import json

    if path.stat().st_size > max_bytes:
        raise UsageError(f"{path}: {what} larger than {max_bytes} bytes")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: unreadable {what} ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise UsageError(f"{path}: not {what} of format {fmt}")
    return doc

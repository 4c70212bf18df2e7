"""Atomic output: build in a hidden temp sibling, then rename into place.

A crash or Ctrl-C at any point leaves either the old output or the new one, never a
half-written directory that later commands would mistake for a model.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from xcit_edge.errors import UsageError
from xcit_edge.util import interrupt

log = logging.getLogger(__name__)

# what atomic_dir / atomic_file leave behind when killed: `.NAME.tmp-XXXX` (new, incomplete) and
# `.NAME.old-XXXX` (the previous output, renamed away for the moment of the swap)
_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[A-Za-z0-9_]{8}$")


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
    interrupt.register(tmp)
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the output should look like any directory made here
    try:
        yield tmp
        _sync_tree(tmp)
        interrupt.check()
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    finally:
        interrupt.unregister(tmp)


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
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any file written here
    interrupt.register(tmp)
    try:
        yield tmp
        _fsync(tmp)
        interrupt.check()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        interrupt.unregister(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """Data on disk before the rename publishes it: after a power cut the output is old or whole."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            _fsync(p)


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


def sweep_stale(parent: Path, name: str | None = None) -> None:
    """Clear what killed runs left in `parent` (for output `name` only, or all): temp copies go; a
    previous output that a kill caught renamed away (`.NAME.old-*` with no `NAME`) comes back.
    Call it holding the output's lock, so no live run's temps are touched."""
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        m = _STALE.match(entry.name)
        if not m or (name is not None and m["name"] != name) or entry.is_symlink():
            continue
        final = parent / m["name"]
        if m["kind"] == "old" and not final.exists():
            entry.rename(final)
            log.warning("%s: restored the previous output that an interrupted run had moved aside", final)
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by an interrupted run", entry)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(out: Path, wait: bool = False) -> Iterator[None]:
    """One writer at a time per output path: an flock on the hidden sibling `.NAME.lock`.

    A second run into the same output fails with the holder's pid, or (`wait`) waits for it. The
    kernel drops the lock when its holder dies however it dies, so a killed run never blocks the
    next; the next one then sweeps what the killed run left (`sweep_stale`).
    """
    out = Path(out).resolve()
    try:
        created = _make_parents(out.parent)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror}") from e
    path = out.parent / f".{out.name}.lock"
    fd = _acquire(path, out, wait)
    try:
        sweep_stale(out.parent, out.name)
        if out.is_dir():
            sweep_stale(out)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiter that locked this inode retries (_acquire)
        os.close(fd)
        _remove_empty(created)


def _acquire(path: Path, out: Path, wait: bool) -> int:
    """Lock `path` (an inode still linked there: the holder unlinks it on release)."""
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write {out}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise UsageError(f"cannot lock {out}: {e.strerror}") from e
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                os.close(fd)
                raise UsageError(f"{out} is being written by another xcit-edge run (pid {holder}); "
                                 "wait for it, pass --wait, or choose another --out") from None
            if not announced:
                log.warning("%s is being written by another xcit-edge run (pid %s): waiting", out, holder)
                announced = True
            os.close(fd)
            time.sleep(0.2)
            continue
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # we locked a file its holder unlinked on release: take the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


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

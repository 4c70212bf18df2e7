"""Guards for untrusted archives: path-traversal-safe extraction with size limits.

Hub downloads and user-supplied `.tar.gz`/`.zip` SavedModels are extracted only after
every member has been checked: no absolute paths, no `..`, no links (a SavedModel has
none), no device files or FIFOs, bounded member count and total size.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from xcit_edge.errors import UsageError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 8 << 30


def _check_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UsageError(f"{archive}: refusing archive member with absolute path {name!r}")
    if ".." in p.parts:
        raise UsageError(f"{archive}: refusing archive member that escapes the target: {name!r}")
    return p


def _check_totals(count: int, total: int, archive: Path) -> None:
    if count > MAX_MEMBERS:
        raise UsageError(f"{archive}: more than {MAX_MEMBERS} members; refusing to extract")
    if total > MAX_TOTAL_BYTES:
        limit = MAX_TOTAL_BYTES >> 30
        raise UsageError(f"{archive}: would extract {total / 2**30:.1f} GiB; refusing (limit {limit} GiB)")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            _check_name(m.name, archive)
            if m.issym() or m.islnk():
                raise UsageError(f"{archive}: refusing link member {m.name!r} -> {m.linkname!r}")
            if not (m.isfile() or m.isdir()):
                raise UsageError(f"{archive}: refusing special file member {m.name!r}")
        _check_totals(len(members), sum(m.size for m in members), archive)
        tf.extractall(dest, filter="data")  # second line of defence, same rules


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
                raise UsageError(f"{archive}: refusing link or special file member {info.filename!r}")
        _check_totals(len(infos), sum(i.file_size for i in infos), archive)
        zf.extractall(dest)


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract `archive` (tar, tar.gz, zip) into the new directory `dest`, or refuse it whole."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        else:
            raise UsageError(f"{archive}: not a tar or zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise UsageError(f"{archive}: corrupt archive ({e})") from e
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest

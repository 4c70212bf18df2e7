"""Model resolution: every command's MODEL argument becomes a local SavedModel directory.

MODEL may be
* a SavedModel directory (ours, a TF Hub download, an onnx-tf/onnx2tf export);
* a `.tar.gz`/`.tgz`/`.zip` of one (e.g. a TF Hub "compressed" download made elsewhere);
* a hub handle: `rishit-dagli/xcit_nano_12_p16_224/1`, its tfhub.dev URL, or a Kaggle
  Models handle/URL (`owner/model/framework/variation/version`);
* an architecture name (`xcit_nano_12_p16_224`, `xcit_nano_12_p16_224_fe`), optionally
  with `--weights`, which is built (and cached) as a SavedModel.

Downloads go through https to known hosts only, with a size cap, and are cached under
`$XCIT_EDGE_CACHE` (default `~/.cache/xcit-edge`) with their sha256; archives are
extracted with `safety.safe_extract`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xcit_edge.errors import UsageError
from xcit_edge.model.zoo import get_config
from xcit_edge.source.safety import safe_extract
from xcit_edge.util import interrupt
from xcit_edge.util.fs import output_lock, sha256_file

log = logging.getLogger(__name__)

ALLOWED_HOSTS = frozenset({"tfhub.dev", "www.kaggle.com", "kaggle.com", "storage.googleapis.com"})
MAX_DOWNLOAD_BYTES = 4 << 30
DOWNLOAD_TIMEOUT_S = 30
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

_TFHUB_RE = re.compile(r"^(?:https://tfhub\.dev/)?([\w.-]+)/([\w.-]+)/(\d+)/?$")
_KAGGLE_RE = re.compile(
    r"^(?:https://(?:www\.)?kaggle\.com/models/)?([\w.-]+)/([\w.-]+)/(?:frameworks/)?([\w.-]+)/"
    r"(?:variations/)?([\w.-]+)/(?:versions/)?(\d+)/?$"
)

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class ModelSource:
    """A resolved MODEL: where the SavedModel is and how we got it."""

    path: Path
    kind: str  # savedmodel | archive | hub | arch
    ref: str
    url: str | None = None


def cache_root() -> Path:
    return Path(os.environ.get("XCIT_EDGE_CACHE") or Path.home() / ".cache" / "xcit-edge")


def hub_download_url(ref: str) -> str | None:
    """The https URL of a hub handle's compressed SavedModel, or None if `ref` is no handle."""
    if m := _TFHUB_RE.match(ref):
        owner, name, version = m.groups()
        return f"https://tfhub.dev/{owner}/{name}/{version}?tf-hub-format=compressed"
    if m := _KAGGLE_RE.match(ref):
        owner, model, framework, variation, version = m.groups()
        return f"https://www.kaggle.com/api/v1/models/{owner}/{model}/{framework}/{variation}/{version}/download"
    return None


def find_saved_model_dir(root: Path) -> Path:
    """`root` itself or its single subdirectory holding `saved_model.pb`."""
    for cand in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if (cand / "saved_model.pb").is_file() or (cand / "saved_model.pbtxt").is_file():
            return cand
    raise UsageError(f"{root} is not a SavedModel directory (no saved_model.pb)")


class _AllowedRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or parts.hostname not in ALLOWED_HOSTS:
        raise UsageError(f"refusing to download from {url}: only https from {', '.join(sorted(ALLOWED_HOSTS))}")


def _download(url: str, dest: Path, progress: Progress | None) -> tuple[str, int]:
    """Stream `url` to `dest`; returns (sha256, size). Size-capped, hosts allow-listed."""
    _check_url(url)
    opener = urllib.request.build_opener(_AllowedRedirects())
    h, size = hashlib.sha256(), 0
    with opener.open(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(dest, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0) or None
        if total and total > MAX_DOWNLOAD_BYTES:
            raise UsageError(f"{url}: {total} bytes is over the {MAX_DOWNLOAD_BYTES >> 30} GiB download limit")
        while block := resp.read(1 << 20):
            size += len(block)
            if size > MAX_DOWNLOAD_BYTES:
                raise UsageError(f"{url}: over the {MAX_DOWNLOAD_BYTES >> 30} GiB download limit")
            h.update(block)
            f.write(block)
            if progress:
                progress(size, total)
    return h.hexdigest(), size


def _slug(ref: str) -> str:
    clean = re.sub(r"[^\w.-]+", "_", ref.split("://")[-1]).strip("_")[:80]
    return f"{clean}-{hashlib.sha256(ref.encode()).hexdigest()[:8]}"


def _cached_extract(kind: str, key: str, fill: Callable[[Path], dict]) -> Path:
    """Cache entry `kind/key`: `fill(tmpdir)` populates `tmpdir/model` and returns its record. Runs
    that want the same entry take turns (the entry's lock): the second finds it filled."""
    entry = cache_root() / kind / key
    with output_lock(entry, wait=True):
        if (entry / "source.json").is_file() and (entry / "model").is_dir():
            log.info("using cached %s", entry)
            return find_saved_model_dir(entry / "model")
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=entry.parent))
        interrupt.register(tmp)
        try:
            info = fill(tmp)
            (tmp / "source.json").write_text(json.dumps(info, indent=2))
            shutil.rmtree(entry, ignore_errors=True)
            tmp.rename(entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            interrupt.unregister(tmp)
    return find_saved_model_dir(entry / "model")


def fetch_hub(ref: str, progress: Progress | None = None) -> ModelSource:
    """Download (once) and extract a hub handle; offline, say how to pass a local copy."""
    url = hub_download_url(ref)
    assert url is not None

    def fill(tmp: Path) -> dict:
        archive = tmp / "download"
        try:
            digest, size = _download(url, archive, progress)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise UsageError(
                f"cannot download {ref} ({reason}); on a machine with network access fetch {url}, "
                "then pass the .tar.gz or its extracted SavedModel directory as MODEL"
            ) from e
        safe_extract(archive, tmp / "model")
        archive.unlink()
        return {"ref": ref, "url": url, "sha256": digest, "size": size, "fetched": time.time()}

    path = _cached_extract("hub", _slug(ref), fill)
    return ModelSource(path, "hub", ref, url)


def extract_archive(archive: Path) -> ModelSource:
    """A local SavedModel archive, extracted once into the cache keyed by its sha256."""
    digest = sha256_file(archive)

    def fill(tmp: Path) -> dict:
        safe_extract(archive, tmp / "model")
        return {"ref": str(archive), "sha256": digest}

    return ModelSource(_cached_extract("archives", digest[:32], fill), "archive", str(archive))


def build_cached(arch: str, weights: Path | None, seed: int, features: bool) -> ModelSource:
    """An architecture name (+ weights) as a SavedModel, built once per (arch, weights, seed)."""
    from xcit_edge.model.build import build

    cfg = get_config(arch, features=True if features else None)
    wkey = sha256_file(weights)[:16] if weights else f"seed{seed}"
    key = f"{cfg.name}{'_fe' if cfg.features else ''}-{wkey}"

    def fill(tmp: Path) -> dict:
        build(arch, tmp / "model", weights=weights, seed=seed, features=features)
        return {"ref": arch, "weights": str(weights) if weights else None, "seed": seed}

    return ModelSource(_cached_extract("built", key, fill), "arch", arch)


def resolve(ref: str, weights: Path | None = None, seed: int = 0, features: bool = False,
            progress: Progress | None = None) -> ModelSource:
    """Turn a MODEL argument into a local SavedModel directory (see module docstring)."""
    path = Path(ref).expanduser()
    if path.exists():
        if weights is not None:
            raise UsageError("--weights applies to an architecture name, not to a SavedModel")
        if path.is_dir():
            return ModelSource(find_saved_model_dir(path), "savedmodel", ref)
        if path.name.endswith(ARCHIVE_SUFFIXES):
            return extract_archive(path)
        raise UsageError(f"{ref} is a file, not a SavedModel directory or archive ({', '.join(ARCHIVE_SUFFIXES)})")
    check_model_ref(ref, weights)
    if _is_arch_name(ref):
        return build_cached(ref, weights, seed, features)
    return fetch_hub(ref, progress)


def _is_arch_name(ref: str) -> bool:
    return ref.lower().startswith("xcit_") and "/" not in ref


def check_model_ref(ref: str, weights: Path | None = None) -> None:
    """Reject a MODEL argument that cannot resolve, without TensorFlow or network: a typo costs no start-up.

    Raises:
        UsageError: a path that does not exist, an unknown architecture name (with the closest one), a
            `--weights` given with something other than an architecture name, or no kind of MODEL at all.
    """
    path = Path(ref).expanduser()
    if path.exists():
        return
    if _is_arch_name(ref):
        get_config(ref)
        return
    if hub_download_url(ref):
        if weights is not None:
            raise UsageError("--weights applies to an architecture name, not to a hub handle")
        return
    if ref.startswith((".", "~", os.sep)) or ref.endswith(ARCHIVE_SUFFIXES) or os.sep in ref:
        raise UsageError(f"MODEL {ref} does not exist (nor is it a hub handle owner/name/version)")
    raise UsageError(
        f"{ref!r} is not a SavedModel directory, archive, hub handle (owner/name/version) or XCiT architecture name"
    )

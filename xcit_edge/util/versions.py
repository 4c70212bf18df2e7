"""Installed versions of pip distributions: what manifests and benchmark results record."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable


def distribution_versions(dists: Iterable[str]) -> dict[str, str | None]:
    """`{distribution: version}`, None for one that is not installed (order kept, duplicates dropped)."""
    versions: dict[str, str | None] = {}
    for dist in dict.fromkeys(dists):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions

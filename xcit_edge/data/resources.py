"""Data that ships with xcit-edge: target specs (`targets/`) and calibration data (`calibration/`).

Both live at the top of the repository (where people look for them) and are installed as
the packages `xcit_edge._targets` / `xcit_edge._calibration` (see `pyproject.toml`), so a
plain `pip install .` finds them as well as an editable install or a source checkout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from xcit_edge.errors import SpecError

_REPO = Path(__file__).resolve().parents[2]  # xcit_edge/data/resources.py -> the checkout


def data_dir(kind: str) -> Path:
    """The installed (or, in a checkout, the repository's) `targets` or `calibration` folder."""
    try:
        spec = importlib.util.find_spec(f"xcit_edge._{kind}")
    except ModuleNotFoundError:
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if Path(loc).is_dir():
            return Path(loc)
    if (_REPO / kind).is_dir():
        return _REPO / kind
    raise SpecError(f"this xcit-edge installation lacks its {kind} data; reinstall the package")

"""Regenerate the shipped calibration sample `calibration/sample/` (synthetic, seeded).

    python scripts/make_sample.py
"""

from pathlib import Path

from xcit_edge.synthetic import write_folder

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent / "calibration" / "sample"
    n = write_folder(root, per_class=8, size=64, seed=3)
    print(f"wrote {n} images under {root}")

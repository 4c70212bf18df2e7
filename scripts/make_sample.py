"""Write seeded synthetic shape images (the trained fixture's ten classes) as a folder of JPEGs per class.

    python scripts/make_sample.py                       # regenerate the shipped sample, calibration/sample/
    python scripts/make_sample.py --out DIR --per-class 50 --seed 11   # held-out images (command 1 validates on them)

The fixture was trained on seed 1 and validated on seed 2; the shipped sample is seed 3.
"""

import argparse
from pathlib import Path

from xcit_edge.data.synthetic import write_folder

SHIPPED = Path(__file__).resolve().parent.parent / "calibration" / "sample"

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SHIPPED)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    n = write_folder(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {n} images under {args.out}")

"""Fidelity of the Keras XCiT against timm (run on demand; needs the test extra).

    .venv/bin/python benchmarks/fidelity.py [ARCH ...]

For each architecture: a seeded timm model (non-trivial BN stats) -> torch.save ->
`xcit-edge build --weights` path -> logits and features compared with timm's.
Prints the relative max error (max|a-b| / max|ref|); the tests require < 1e-4.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import timm  # noqa: F401 - timm (torchvision) and torch before TensorFlow: see tests/conftest.py
import torch

from xcit_edge.util.tfimport import import_tensorflow_quietly

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.timm_ref, the tests' reference

import_tensorflow_quietly()

from support.timm_ref import images, rel_max_err, seeded_timm_model, timm_forward  # noqa: E402

from xcit_edge.model.weights import load_weights  # noqa: E402
from xcit_edge.model.xcit import build_model  # noqa: E402
from xcit_edge.model.zoo import get_config  # noqa: E402

DEFAULT = ["xcit_nano_12_p16_224", "xcit_tiny_12_p16_224", "xcit_nano_12_p8_224", "xcit_nano_12_p16_384"]


def main(names: list[str]) -> None:
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    print(f"{'architecture':26} {'logits rel err':>15} {'features rel err':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ref = seeded_timm_model(name)
            path = Path(tmp) / f"{name}.pth"
            torch.save(ref.state_dict(), path)
            x = images(4, get_config(name).img_size, seed=1)
            errs = []
            for features in (False, True):
                model = build_model(get_config(name, features=features))
                load_weights(model, path)
                errs.append(rel_max_err(model(x).numpy(), timm_forward(ref, x, pre_logits=features)))
            print(f"{name:26} {errs[0]:15.2e} {errs[1]:17.2e}")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)

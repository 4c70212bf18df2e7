"""Every seed architecture of the TF Hub collection builds, exports, and has timm's parameter count.

The CI selection builds the families up to small (both depths); medium and large (84-189 M parameters,
18-25 s each on 2 cores, 2 minutes together, structurally the same model wider) are `slow`. Their
parameter counts and names are checked without building in test_zoo.py.
"""

import gc
import shutil

import keras
import pytest

from xcit_edge.model.build import build
from xcit_edge.model.zoo import HUB_SEED_NAMES, get_config
from xcit_edge.source.inspect import inspect_model

BIG = ("xcit_medium_", "xcit_large_")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith(BIG) else n
                                  for n in HUB_SEED_NAMES])
def test_seed_architecture_builds_and_exports(name, tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        timm_params = sum(p.numel() for p in timm.create_model(name).parameters())
    out = tmp_path / name
    result = build(name, out)
    assert result.params == timm_params
    info = inspect_model(out)  # read back from the written protobuf, not from memory
    cfg = get_config(name)
    assert info.params == timm_params and info.variant == name
    sig = info.signatures[0]
    assert sig.key == "serving_default"
    assert sig.inputs[0].key == "input" and sig.inputs[0].shape == [-1, cfg.img_size, cfg.img_size, 3]
    assert sig.outputs[0].key == "output" and sig.outputs[0].shape == [-1, 1000]
    shutil.rmtree(out)
    keras.backend.clear_session()
    gc.collect()

"""The grappler-remapper finding behind `tfimport.exact_tensorflow` (run on demand; needs the test extra).

    .venv/bin/python benchmarks/remapper.py [SIZE]

The trained fixture (tests/fixtures) goes timm -> torch.onnx -> onnx2tf, as in the foreign-model
test, at SIZE px (default 96). The frozen prepared graph is then run by TensorFlow with the remapper
on and off, in two fresh processes (the setting is process-wide), and compared with timm; so is the
unfrozen SavedModel. Prints the minimum cosine against timm of each.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RUN = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # torch before TensorFlow
from pathlib import Path
import numpy as np
from xcit_edge.util.tfimport import import_tensorflow_quietly
tf = import_tensorflow_quietly()
if {off}:
    tf.config.optimizer.set_experimental_options({{"remapping": False}})
import xcit_edge.util.tfimport as t
t.exact_tensorflow = lambda: tf  # measure TensorFlow as configured here, not as xcit-edge sets it
from xcit_edge.graph import prepare
from xcit_edge.metrics import cosine
x = np.load({x!r}); ref = np.load({ref!r})
g = prepare(Path({sm!r}), fuse=False)
print(f"{{cosine(g.run(g.model_input(x)), ref).min():.12f}}")
"""


def main(size: int) -> None:
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    import conftest  # noqa: F401 - torch/timm before TensorFlow
    import numpy as np
    from conftest import FIXTURE_WEIGHTS, onnx2tf_saved_model
    from safetensors.torch import load_file
    from support.timm_ref import images, timm_forward
    from timm.models.xcit import Xcit

    from xcit_edge.metrics import cosine
    from xcit_edge.model.zoo import FIXTURE as c

    model = Xcit(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
                 num_heads=c.num_heads, num_classes=c.num_classes, eta=c.eta, tokens_norm=c.tokens_norm)
    model.load_state_dict(load_file(FIXTURE_WEIGHTS))
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sm = onnx2tf_saved_model(model, size, work / "foreign")
        x = images(4, size, seed=7)
        ref = timm_forward(model, x)
        np.save(work / "x.npy", x)
        np.save(work / "ref.npy", ref)
        import tensorflow as tf

        sig = tf.saved_model.load(str(sm)).signatures["serving_default"]
        name = next(iter(sig.structured_input_signature[1]))
        raw = np.concatenate([next(iter(sig(**{name: tf.constant(x[i:i + 1])}).values())).numpy() for i in range(4)])
        print(f"{size} px, 4 images; minimum cosine against timm")
        print(f"  unfrozen onnx2tf SavedModel (TensorFlow defaults): {cosine(raw, ref).min():.12f}")
        for off in (False, True):
            code = RUN.format(tests=str(ROOT / "tests"), off=off, x=str(work / "x.npy"), ref=str(work / "ref.npy"),
                              sm=str(sm))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            print(f"  frozen prepared graph, remapper {'off' if off else 'on '}: {out.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 96)

#!/usr/bin/env bash
# The reference path on TensorFlow 2.20 (the newest tensorflow-tpu), installed the way README
# "TPU host install" says (no converters), against TensorFlow 2.21 in .venv. Run on demand:
#   bash benchmarks/tf220_reference.sh        (after command 2; ~3 minutes, most of it pip)
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
python3 -m venv "$W/tf220"
"$W/tf220/bin/pip" install -q "tensorflow-cpu==2.20.*" "keras>=3.10,<4" click rich numpy safetensors pillow matplotlib
"$W/tf220/bin/pip" install -q --no-deps .
.venv/bin/python - "$W" <<'PY'
import sys
import numpy as np
from xcit_edge.data.synthetic import make_images
px, lab = make_images(300, 64, seed=11)
np.savez(f"{sys.argv[1]}/held.npz", images=px, labels=lab)
PY
.venv/bin/xcit-edge -q build xcit_fixture_4_p8_64 --weights tests/fixtures/xcit_fixture_4_p8_64.safetensors --out "$W/fx"
for v in tf220 venv; do
    bin=$([ $v = tf220 ] && echo "$W/tf220/bin" || echo .venv/bin)
    "$bin/xcit-edge" -q reference "$W/fx" --calibration "$W/held.npz" --out "$W/$v.npz" --replicas 4 --batch-size 8 \
        --precision highest
done
.venv/bin/python - "$W" <<'PY'
import sys
import numpy as np
from xcit_edge.reference import load_reference
a, b = load_reference(f"{sys.argv[1]}/tf220.npz"), load_reference(f"{sys.argv[1]}/venv.npz")
print(f"TensorFlow {a.meta['tensorflow']} vs {b.meta['tensorflow']} ({a.meta['placement']}, {len(a.names)} images): "
      f"max abs diff {np.abs(a.outputs - b.outputs).max():.2e}, same top-1 "
      f"{(a.outputs.argmax(1) == b.outputs.argmax(1)).mean():.4f}")
PY

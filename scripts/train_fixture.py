"""Train the test fixture: XCiT `xcit_fixture_4_p8_64` on the synthetic 10-class images.

Why: accuracy-drop checks (int8 conversion, validate) only mean something on a model that
has learned something. Trained with timm/torch (the test extra) so the weights are timm's
own layout and go through the same import path as real checkpoints.

    python scripts/train_fixture.py            # writes tests/fixtures/xcit_fixture_4_p8_64.*
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.models.xcit import Xcit

from xcit_edge.data.synthetic import CLASSES, make_images
from xcit_edge.model.zoo import FIXTURE, IMAGENET_MEAN, IMAGENET_STD

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = images.astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = FIXTURE
    model = Xcit(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                 num_heads=cfg.num_heads, num_classes=cfg.num_classes, eta=cfg.eta, tokens_norm=cfg.tokens_norm)
    xtr, ytr = make_images(args.train, cfg.img_size, seed=1)
    xva, yva = make_images(1000, cfg.img_size, seed=2)
    xtr, ytr, xva, yva = to_tensor(xtr), torch.from_numpy(ytr), to_tensor(xva), torch.from_numpy(yva)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * (len(xtr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr) - 63, 64):
            idx = perm[i:i + 64]
            xb = xtr[idx]
            if torch.rand(()) < 0.5:
                xb = xb.flip(3)
            loss = torch.nn.functional.cross_entropy(model(xb), ytr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, val acc {accuracy(model, xva, yva):.3f}", flush=True)
    acc = accuracy(model, xva, yva)
    OUT.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, OUT / f"{cfg.name}.safetensors")
    info = {"arch": cfg.name, "classes": list(CLASSES), "val_accuracy": round(acc, 4), "val_images": 1000,
            "val_seed": 2, "train_images": args.train, "train_seed": 1, "epochs": args.epochs, "seed": args.seed,
            "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__, "timm": timm.__version__}
    (OUT / f"{cfg.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()

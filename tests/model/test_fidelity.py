"""The Keras XCiT with imported weights reproduces timm (an independent implementation)."""

import argparse

import numpy as np
import pytest
from conftest import images, rel_max_err, seeded_timm_model, timm_forward

from xcit_edge.model.weights import load_weights
from xcit_edge.model.xcit import build_model, count_params
from xcit_edge.model.zoo import get_config

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

TOL = 1e-4

# nano p16 (tokens_norm False), tiny_12 (tokens_norm True), a p8 model, a 384 model.
CASES = ["xcit_nano_12_p16_224", "xcit_tiny_12_p16_224", "xcit_nano_12_p8_224", "xcit_nano_12_p16_384"]


def official_layout(state: dict) -> dict:
    """timm state dict -> the official repo's checkpoint layout (pos_embeder, fused CA qkv, under 'model')."""
    out = {}
    for k, v in state.items():
        if k.startswith("pos_embed."):
            k = "pos_embeder." + k[len("pos_embed.") :]
        out[k] = v
    for j in range(2):
        p = f"cls_attn_blocks.{j}.attn."
        for kind in ("weight", "bias"):
            out[p + f"qkv.{kind}"] = torch.cat([out.pop(p + f"{n}.{kind}") for n in "qkv"], 0)
    return {"model": out, "epoch": 400, "args": argparse.Namespace(model="xcit")}


def save_checkpoint(model, tmp_path, fmt):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "official":
        ckpt = official_layout(state)
        # timm's own filter must turn our "official" file back into timm's dict, or the fixture lies.
        back = timm.models.xcit.checkpoint_filter_fn({"model": dict(ckpt["model"])}, model)
        assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
        path = tmp_path / "official.pth"
        torch.save(ckpt, path)
    else:
        path = tmp_path / "w.pth"
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name", CASES)
def test_logits_and_features_match_timm(name, tmp_path):
    ref_model = seeded_timm_model(name)
    cfg = get_config(name)
    x = images(2, cfg.img_size, seed=3)
    ref = timm_forward(ref_model, x)
    ref_feat = timm_forward(ref_model, x, pre_logits=True)
    fmt = {0: "pth", 1: "safetensors", 2: "official", 3: "pth"}[CASES.index(name)]
    path = save_checkpoint(ref_model, tmp_path, fmt)

    model = build_model(cfg, seed=123)
    assert count_params(model) == sum(p.numel() for p in ref_model.parameters())
    before = model(x).numpy()
    assert rel_max_err(before, ref) > 0.1  # the import is what makes them agree
    load_weights(model, path)
    assert rel_max_err(model(x).numpy(), ref) < TOL

    fe = build_model(get_config(name, features=True), seed=7)
    report = load_weights(fe, path)  # a classifier checkpoint feeds a feature extractor
    assert report.unused_head
    assert rel_max_err(fe(x).numpy(), ref_feat) < TOL


@pytest.mark.parametrize("fmt", ["official", "safetensors"])
def test_every_checkpoint_format_gives_the_same_model(fmt, tmp_path):
    name = "xcit_nano_12_p16_224"
    ref_model = seeded_timm_model(name, seed=5)
    x = images(1, 224, seed=4)
    model = build_model(get_config(name))
    load_weights(model, save_checkpoint(ref_model, tmp_path, fmt))
    assert rel_max_err(model(x).numpy(), timm_forward(ref_model, x)) < TOL


def test_bn_statistics_matter():
    """Guard against a fixture that leaves BatchNorm trivial (then BN import is untested)."""
    m = seeded_timm_model("xcit_nano_12_p16_224")
    rv = m.patch_embed.proj[0][1].running_var
    assert not torch.allclose(rv, torch.ones_like(rv))
    assert not np.allclose(m.blocks[0].local_mp.bn.running_mean.numpy(), 0)


def test_any_input_size_matches_timm(tmp_path):
    """XCiT is resolution-agnostic: the same weights at 256 px (a 16x16 grid) still match timm."""
    name = "xcit_nano_12_p16_224"
    ref_model = seeded_timm_model(name, seed=2)
    x = images(1, 256, seed=8)
    model = build_model(get_config(name, img_size=256))
    load_weights(model, save_checkpoint(ref_model, tmp_path, "pth"))
    assert rel_max_err(model(x).numpy(), timm_forward(ref_model, x)) < TOL

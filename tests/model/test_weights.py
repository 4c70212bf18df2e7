"""Import problems are reported by key name, and a failed import leaves the model untouched."""

import numpy as np
import pytest
from conftest import seeded_timm_model

from xcit_edge.errors import UsageError
from xcit_edge.model.weights import assign_state_dict, key_map, load_weights, official_to_timm
from xcit_edge.model.xcit import build_model
from xcit_edge.model.zoo import get_config, reduced_config

torch = pytest.importorskip("torch")


def _state(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_key_map_covers_every_variable_once():
    model = build_model(reduced_config())
    mapped = [id(var) for _, var, _ in key_map(model)]
    assert len(mapped) == len(set(mapped)) == len(model.weights)


def test_wrong_architecture_names_the_mismatched_keys(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(seeded_timm_model("xcit_tiny_12_p16_224").state_dict(), path)
    model = build_model(get_config("xcit_nano_12_p16_224"))
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(UsageError) as e:
        load_weights(model, path)
    msg = str(e.value)
    assert "does not fit xcit_nano_12_p16_224" in msg and "mis-shaped" in msg and "cls_token" in msg
    assert "\n" not in msg
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights, strict=True))


def test_missing_and_unexpected_keys_are_listed():
    model = build_model(get_config("xcit_nano_12_p16_224"))
    state = _state(seeded_timm_model("xcit_nano_12_p16_224"))
    del state["blocks.3.attn.temperature"]
    state["blocks.99.extra.weight"] = np.zeros(3, np.float32)
    report = assign_state_dict(model, state)
    assert report.missing == ["blocks.3.attn.temperature"]
    assert report.unexpected == ["blocks.99.extra.weight"]
    assert not report.ok and report.loaded == 0


def test_24_layer_checkpoint_into_12_layer_model_is_refused():
    model = build_model(reduced_config(depth=2))
    state = _state(seeded_timm_model("xcit_nano_12_p16_224"))
    report = assign_state_dict(model, state)
    assert report.mismatched and "blocks.2.gamma1" in report.unexpected


def test_official_renames_are_exact():
    qkv = np.arange(3 * 4 * 2, dtype=np.float32).reshape(12, 2)
    out = official_to_timm({
        "pos_embeder.token_projection.bias": np.ones(4, np.float32),
        "cls_attn_blocks.1.attn.qkv.weight": qkv,
        "cls_attn_blocks.1.attn.qkv.bias": np.arange(12, dtype=np.float32),
    })
    np.testing.assert_array_equal(out["cls_attn_blocks.1.attn.k.weight"], qkv[4:8])
    np.testing.assert_array_equal(out["cls_attn_blocks.1.attn.v.bias"], np.arange(8, 12))
    assert "pos_embed.token_projection.bias" in out

import pytest

from xcit_edge.errors import UsageError
from xcit_edge.model.zoo import HUB_SEED_NAMES, get_config, param_count, reduced_config, timm_names


def test_28_timm_names_and_hub_names_resolve():
    names = timm_names()
    assert len(names) == len(set(names)) == 28
    for hub in HUB_SEED_NAMES:
        assert hub in names
        fe = get_config(hub + "_fe")
        assert fe.features and fe.output_dim == fe.embed_dim
        assert not get_config(hub).features


def test_config_facts_from_the_official_table():
    nano = get_config("xcit_nano_12_p16_224")
    assert (nano.embed_dim, nano.depth, nano.num_heads, nano.tokens_norm, nano.eta) == (128, 12, 4, False, 1.0)
    big = get_config("xcit_large_24_p8_384")
    assert (big.embed_dim, big.depth, big.num_heads, big.tokens_norm, big.eta) == (768, 24, 16, True, 1e-5)
    assert big.num_tokens == 48 * 48
    assert get_config("xcit_nano_12_p16_224", img_size=384).num_tokens == 576


@pytest.mark.parametrize("bad", ["xcit_huge_12_p16_224", "xcit_nano_12_p4_224", "resnet50", ""])
def test_unknown_architecture_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="unknown architecture"):
        get_config(bad)


def test_img_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(UsageError, match="multiple"):
        get_config("xcit_nano_12_p16_224", img_size=200)


def test_param_count_formula_equals_timm_for_all_28():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    for name in timm_names():
        with torch.device("meta"):
            m = timm.create_model(name)
            m_fe = timm.create_model(name, num_classes=0)
        assert param_count(get_config(name)) == sum(p.numel() for p in m.parameters()), name
        assert param_count(get_config(name, features=True)) == sum(p.numel() for p in m_fe.parameters()), name


def test_reduced_config_is_small():
    assert param_count(reduced_config()) < 100_000

"""GroupNorm from per-channel moments and one batch_norm pass: equal to torch's GroupNorm, from any
region view and any split into pieces, and installed only where it applies."""
import pytest
import torch
import torch.nn.functional as F

from lib_vaeprec import fast_groupnorm, groupnorm_stats
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.options import VaeOptions

from conftest import assert_same, snapshot


def _norm(channels=64, groups=32, dtype=torch.float32):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(groups, channels, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm.to(dtype)


@pytest.mark.parametrize("shape", [(1, 64, 17, 23), (2, 64, 9, 8), (3, 64, 50)])
def test_group_norm_equals_torch_in_fp32(shape):
    norm = _norm()
    x = torch.randn(*shape) * 3 + 2
    assert torch.allclose(groupnorm_stats.group_norm(norm, x), norm(x), atol=1e-5)


def test_group_norm_of_a_strided_region_view():
    norm = _norm()
    whole = torch.randn(2, 64, 20, 30)
    region = whole[..., 3:15, 4:29]                   # not contiguous: read in place, not copied
    assert torch.allclose(groupnorm_stats.group_norm(norm, region), norm(region.contiguous()), atol=1e-5)


def test_group_norm_in_bf16_is_as_close_to_fp32_as_torchs():
    norm = _norm(dtype=torch.bfloat16)
    x = (torch.randn(2, 64, 12, 12) * 4 + 3).bfloat16()
    exact = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
    ours = groupnorm_stats.group_norm(norm, x)
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - exact).abs().max() <= (norm(x).float() - exact).abs().max() + 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pieces_combine_to_the_whole_maps_statistics(dtype):
    x = (torch.randn(2, 64, 33, 21) * 2 - 1).to(dtype)
    whole = groupnorm_stats.of_map(x, 32)
    pieces = groupnorm_stats.GroupStats(32)
    for top, bottom in [(0, 5), (5, 6), (6, 33)]:
        for left, right in [(0, 10), (10, 21)]:
            pieces.add(x[..., top:bottom, left:right])
    for a, b in zip(whole.mean_var(), pieces.mean_var()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    grouped = x.double().reshape(2, 32, -1)
    assert torch.allclose(whole.mean_var()[0], grouped.mean(-1), rtol=1e-6, atol=1e-6)
    assert torch.allclose(whole.mean_var()[1], grouped.var(-1, correction=0), rtol=1e-5)


def test_applies_only_to_plain_16_bit_groupnorms_on_its_devices(monkeypatch):
    norm = _norm(dtype=torch.bfloat16)
    x = torch.randn(1, 64, 4, 4).bfloat16()
    assert not fast_groupnorm.applies(norm, x)                 # CPU: torch's kernel is fine there
    monkeypatch.setattr(fast_groupnorm, "DEVICE_TYPES", ("cpu",))
    assert not fast_groupnorm.applies(norm, x)                 # small maps: torch's kernel is as fast
    monkeypatch.setattr(fast_groupnorm, "MIN_GROUP_ELEMENTS", 0)
    assert fast_groupnorm.applies(norm, x)
    assert not fast_groupnorm.applies(norm, torch.randn(1, 64).bfloat16())   # (N, C): no pixels to reduce
    assert not fast_groupnorm.applies(norm.float(), x.float())               # float32: torch's own

    class Casting(torch.nn.GroupNorm):                         # like Forge's, with manual cast on
        parameters_manual_cast = True

        def forward(self, x):
            return super().forward(x)
    assert not fast_groupnorm.applies(Casting(32, 64).bfloat16(), x)


def test_installed_groupnorm_keeps_maps_channels_last(monkeypatch):
    """channels_last from the first fast GroupNorm on, and kept by the small maps torch's kernel runs."""
    monkeypatch.setattr(fast_groupnorm, "DEVICE_TYPES", ("cpu",))
    norm = _norm(dtype=torch.bfloat16)
    x = torch.randn(1, 64, 8, 8).bfloat16()
    reference = norm(x)
    installed = fast_groupnorm.FastGroupNorms()
    vae = torch.nn.Module()
    vae.decoder = torch.nn.Sequential(norm)
    installed.install(vae)
    try:
        monkeypatch.setattr(fast_groupnorm, "MIN_GROUP_ELEMENTS", 0)
        fast = norm(x)
        assert fast.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(fast.float(), reference.float(), atol=0.05)
        monkeypatch.setattr(fast_groupnorm, "MIN_GROUP_ELEMENTS", 2 ** 18)
        assert norm(x.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)
        assert norm(x).is_contiguous()
    finally:
        installed.remove()
    assert "forward" not in norm.__dict__


def test_encoder_groupnorms_keep_the_layout_they_get(monkeypatch):
    monkeypatch.setattr(fast_groupnorm, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(fast_groupnorm, "MIN_GROUP_ELEMENTS", 0)
    norm = _norm()
    vae = torch.nn.Module()
    vae.encoder = torch.nn.Sequential(norm)
    installed = fast_groupnorm.FastGroupNorms()
    installed.install(vae)
    try:
        assert norm(torch.randn(1, 64, 8, 8)).is_contiguous()
    finally:
        installed.remove()


def test_engine_decodes_the_same_image_with_fast_groupnorm_and_detaches_cleanly(tiny_vae, monkeypatch):
    # On the CPU, in float32 (bf16 convolutions are ~200x slower without native support).
    monkeypatch.setattr(fast_groupnorm, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(fast_groupnorm, "DTYPES", (torch.float32,))
    monkeypatch.setattr(fast_groupnorm, "MIN_GROUP_ELEMENTS", 0)
    z = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        reference = tiny_vae.decode(z).sample
        latent = tiny_vae.encode(reference).latent_dist.mean
    before = snapshot(tiny_vae)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32", fused_upsample=False)).attach()
    calls = []
    monkeypatch.setattr(fast_groupnorm, "group_norm",
                        lambda norm, x: calls.append(norm) or groupnorm_stats.group_norm(norm, x))
    with torch.no_grad():
        image = tiny_vae.decode(z).sample
        encoded = tiny_vae.encode(reference).latent_dist.mean
    assert len(set(calls)) == sum(isinstance(m, torch.nn.GroupNorm) for m in tiny_vae.modules())
    assert torch.allclose(image, reference, atol=1e-5) and image.is_contiguous()    # the host's layout
    assert torch.allclose(encoded, latent, atol=1e-5)
    engine.set_options(VaeOptions(dtype="fp32", fused_upsample=False, fast_groupnorm=False))
    with torch.no_grad():
        tiny_vae.decode(z)
    assert not [m for m in tiny_vae.modules() if "forward" in m.__dict__]
    engine.detach()
    assert_same(tiny_vae, before)

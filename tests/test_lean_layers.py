"""Fused upsampling (nearest 2x + conv as one transposed conv) and banded convolutions: same results,
installed only where they apply, and gone without a trace after detach."""
import pytest
import torch
import torch.nn.functional as F

from lib_vaeprec import banded_conv, fused_upsample
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.options import VaeOptions
from lib_vaeprec.plain_layers import runs_plain

from conftest import assert_same, snapshot


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (16, 3)])
def test_transposed_kernel_equals_nearest_upsample_then_conv(size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 6, 3, padding=1)
    x = torch.randn(2, 8, *size)
    reference = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    fused = fused_upsample.upsample_conv(x, conv, fused_upsample.transposed_kernel(conv.weight))
    assert fused.shape == reference.shape
    assert torch.allclose(fused, reference, atol=1e-5)


@pytest.fixture
def fused_here(monkeypatch):
    """Fused upsampling for float32 maps on the CPU, where the engine otherwise leaves the plain pair."""
    monkeypatch.setattr(fused_upsample, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(fused_upsample, "DTYPES", (torch.float32,))


def _instance_forwards(module):
    return [m for m in module.modules() if "forward" in m.__dict__]


def test_engine_decodes_the_same_image_with_fused_upsampling_and_detaches_cleanly(tiny_vae, fused_here):
    z = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        reference = tiny_vae.decode(z).sample
    before = snapshot(tiny_vae)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32", fused_upsample=True)).attach()
    with torch.no_grad():
        image = tiny_vae.decode(z).sample
    fused = [m for m in _instance_forwards(tiny_vae.decoder) if not isinstance(m, torch.nn.GroupNorm)]
    assert fused and all(type(m).__name__ == "Upsample2D" for m in fused)
    assert torch.allclose(image, reference, atol=1e-5)
    engine.detach()
    assert_same(tiny_vae, before)
    assert _instance_forwards(tiny_vae) == []


def test_fused_upsampling_in_the_original_layout_and_with_tiling(fused_here):
    from standins.ldm_vae import AutoencoderKL
    torch.manual_seed(3)
    vae = AutoencoderKL().eval()
    z = torch.randn(1, 4, 30, 44)
    with torch.no_grad():
        reference = vae.decode(z)
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", fused_upsample=True, tiling="always", tile_size=64)).attach()
    with torch.no_grad():
        image = vae.decode(z)
    assert engine.last_call.tiles > 1
    assert torch.allclose(image, reference, atol=1e-4)
    engine.detach()
    assert _instance_forwards(vae) == []


def test_a_changed_weight_gives_a_new_fused_kernel(tiny_vae, fused_here):
    z = torch.randn(1, 4, 4, 4)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32")).attach()
    upsampler = tiny_vae.decoder.up_blocks[0].upsamplers[0]
    with torch.no_grad():
        tiny_vae.decode(z)
        upsampler.conv.weight.mul_(0.5)                  # a host loading new weights in place
        image = tiny_vae.decode(z).sample
    engine.detach()
    with torch.no_grad():
        assert torch.allclose(image, tiny_vae.decode(z).sample, atol=1e-5)


def test_a_host_conv_that_casts_or_patches_is_left_to_its_own_forward():
    class HostConv(torch.nn.Conv2d):            # shaped like reForge's ops.disable_weight_init.Conv2d
        ldm_patched_cast_weights = False
        weight_function, bias_function = [], []

        def forward(self, x):
            return super().forward(x)

    conv = HostConv(4, 4, 3, padding=1)
    assert runs_plain(conv)
    conv.weight_function = [lambda w: w * 2]
    assert not runs_plain(conv)

    class ForgeConv(torch.nn.Conv2d):           # shaped like Forge's ForgeOperations.Conv2d
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.parameters_manual_cast = False

        def forward(self, x):
            return super().forward(x)

    forge = ForgeConv(4, 4, 3, padding=1)
    assert runs_plain(forge)
    forge.parameters_manual_cast = True
    assert not runs_plain(forge)

    class Unknown(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2
    assert not runs_plain(Unknown(4, 4, 3))


@pytest.mark.parametrize("conv", [
    torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.Conv2d(8, 6, 1),
    torch.nn.Conv2d(8, 6, 3, stride=2), torch.nn.Conv2d(8, 6, 3, stride=2, padding=1)])
@pytest.mark.parametrize("size", [(17, 9), (4, 4), (33, 20)])
def test_banded_conv_equals_the_whole_conv(conv, size, monkeypatch):
    monkeypatch.setattr(banded_conv, "BAND_BYTES", 2000)
    monkeypatch.setattr(banded_conv, "MIN_ROWS", 2)
    x = torch.randn(3, 8, *size)
    with torch.no_grad():
        reference, banded = conv(x), banded_conv.banded_conv(conv, x)
    assert banded.shape == reference.shape
    assert torch.allclose(banded, reference, atol=1e-5)


def test_banding_applies_only_to_large_16bit_cuda_maps(tiny_vae):
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    assert not banded_conv.bandable(conv, torch.randn(1, 8, 64, 64))          # CPU, fp32
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32", low_memory=True, fused_upsample=False)).attach()
    with torch.no_grad():
        tiny_vae.decode(torch.randn(1, 4, 4, 4))
    assert any(isinstance(m, torch.nn.Conv2d) for m in _instance_forwards(tiny_vae))
    engine.detach()
    assert _instance_forwards(tiny_vae) == []


def test_fused_upsampling_leaves_huge_samples_to_the_plain_path():
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    assert fused_upsample._too_large(torch.empty(1, 256, 2048, 2048, device="meta"), conv)
    assert not fused_upsample._too_large(torch.empty(4, 256, 1024, 1024, device="meta"), conv)


def test_fused_upsampling_only_where_the_conv_would_run_plainly_here(fused_here):
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    assert fused_upsample.fusable(x, conv)
    assert not fused_upsample.fusable(x.half(), conv)                      # the host casts in its forward
    assert not fused_upsample.fusable(x, torch.nn.Conv2d(4, 4, 3, padding=1, device="meta"))  # weights
    # elsewhere: sequential offload uploads them in the conv's own hooks, which the fused path skips


def test_fused_upsampling_only_for_16bit_maps_on_cuda(monkeypatch):
    """It rounds differently from the plain pair and was measured to pay only in 16 bits on CUDA: float32
    and the CPU keep the plain pair, so an fp32 decode is the plain VAE's bit for bit."""
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    assert fused_upsample.DEVICE_TYPES == ("cuda",)
    assert not fused_upsample.fusable(x, conv)                                      # CPU, float32
    assert not fused_upsample.fusable(x.bfloat16(), conv.bfloat16())                # CPU, bf16
    monkeypatch.setattr(fused_upsample, "DEVICE_TYPES", ("cpu",))                   # as if the CPU were CUDA
    assert fused_upsample.fusable(x.bfloat16(), conv.bfloat16())
    assert fused_upsample.fusable(x.half(), conv.half())
    assert not fused_upsample.fusable(x, conv)                                      # float32 still not


def test_after_use_offload_keeps_no_fused_kernels(tiny_vae):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32", offload="after_use")).attach()
    with torch.no_grad():
        tiny_vae.decode(torch.randn(1, 4, 4, 4))
    assert engine._fused._kernels == {}
    engine.detach()


def test_a_conv_switched_to_circular_padding_takes_the_plain_path(tiny_vae):
    """A1111's seamless-texture option sets padding_mode='circular' on every conv at render time."""
    z = torch.randn(1, 4, 5, 6)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32")).attach()
    with torch.no_grad():
        tiny_vae.decode(z)
        for m in tiny_vae.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.padding_mode = "circular"
        image = tiny_vae.decode(z).sample
    engine.detach()
    with torch.no_grad():
        assert torch.allclose(image, tiny_vae.decode(z).sample, atol=1e-5)


def test_low_memory_for_one_call_leaves_nothing_behind(tiny_vae):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32")).attach()
    with engine._low_memory_for_call(True):
        assert any(isinstance(m, torch.nn.Conv2d) for m in _instance_forwards(tiny_vae))
    assert not any(isinstance(m, torch.nn.Conv2d) for m in _instance_forwards(tiny_vae))
    engine.detach()

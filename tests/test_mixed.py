"""`mixed`: each block in fp16 where its measured activations fit, in the safe dtype where they do not, on a
VAE that overflows fp16 in its later up blocks as the SDXL VAE does. This CPU emulates fp16/bf16 (~200x
slower than fp32), so the VAEs are tiny; the device is told it runs both natively."""
import pytest
import torch

from conftest import assert_same, make_vae, psnr, snapshot
from lib_vaeprec import engine as engine_module
from lib_vaeprec.bench.models import overflow_fp16
from lib_vaeprec.device_caps import DeviceCaps
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.mixed import blocks_of
from lib_vaeprec.options import VaeOptions


@pytest.fixture(autouse=True)
def native_16_bit(monkeypatch):
    monkeypatch.setattr(engine_module, "caps_of", lambda device: DeviceCaps("cpu", "cpu", native_bf16=True,
                                                                               native_fp16=True))


def latents(batch=2, size=8, seed=0, scale=1.0):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed)) * scale


def decode_with(vae, options, *zs):
    engine = VaeEngine(vae, options).attach()
    with torch.no_grad():
        images = [vae.decode(z).sample for z in zs]
    return engine, images


def test_the_overflowing_vae_decodes_the_same_image_but_not_in_fp16():
    plain, overflowing = make_vae(), overflow_fp16(make_vae())
    z = latents()
    with torch.no_grad():
        assert psnr(overflowing.decode(z).sample, plain.decode(z).sample) > 90
        fp16 = overflowing.half().decode(z.half()).sample
    assert not torch.isfinite(fp16).all()


def test_blocks_follow_the_layout(tiny_vae):
    names = [name for name, _ in blocks_of(tiny_vae, "decode")]
    assert names[0] == "post_quant_conv" and names[1] == "decoder.conv_in"
    assert "decoder.mid_block.attentions.0" in names and names[-1] == "decoder.conv_norm_out"
    assert [name for name, _ in blocks_of(tiny_vae, "encode")][-1] == "quant_conv"


def test_first_call_measures_then_overflowing_blocks_run_in_bf16():
    vae = overflow_fp16(make_vae())
    z = latents()
    with torch.no_grad():
        reference = vae.decode(z).sample
    engine, (first, second) = decode_with(vae, VaeOptions(dtype="mixed", tiling="off"), z, z)
    stats = engine.last_call
    assert stats.dtype == "mixed" and not stats.fallbacks
    fp16_blocks, total = map(int, stats.blocks.split()[1].split("/"))
    assert 0 < fp16_blocks < total                     # the later up blocks in bf16, the rest in fp16
    assert vae.decoder.conv_in.weight.dtype == torch.float16
    assert vae.decoder.up_blocks[1].resnets[0].conv2.weight.dtype == torch.bfloat16
    assert torch.isfinite(second).all() and psnr(second, reference) > 40
    engine.detach()


def test_a_vae_that_fits_fp16_runs_all_in_fp16(tiny_vae):
    engine, _ = decode_with(tiny_vae, VaeOptions(dtype="mixed", tiling="off"), latents(), latents())
    assert engine.last_call.blocks.startswith("fp16 ") and engine.last_call.blocks.split()[1].split("/")[0] == \
        engine.last_call.blocks.split()[1].split("/")[1]
    engine.detach()


def test_a_call_whose_range_grows_past_fp16_is_redone_and_its_blocks_move_to_bf16():
    """Measured on small latents, every block fits fp16; a later call with 300x larger latents overflows:
    only its images are redone (in bf16, measuring), and from then on those blocks run in bf16."""
    vae = make_vae()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e3)     # conv_in output ~1e3 for ordinary latents, past fp16 for large
    small, large = latents(scale=1.0), latents(seed=1, scale=300.0)
    engine, (_, _, image, again) = decode_with(vae, VaeOptions(dtype="mixed", tiling="off"), small, small, large,
                                               large)
    stats = engine.last_call
    assert torch.isfinite(image).all() and torch.isfinite(again).all()
    assert not stats.fallbacks and vae.decoder.conv_in.weight.dtype == torch.bfloat16
    engine.detach()


def test_the_redo_is_reported_as_from_mixed():
    vae = make_vae()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e3)
    engine, _ = decode_with(vae, VaeOptions(dtype="mixed", tiling="off"), latents(), latents(seed=1, scale=300.0))
    assert str(engine.last_call.fallbacks[0]).startswith("mixed->bf16")
    engine.detach()


def test_tiled_mixed_equals_untiled_mixed():
    vae = overflow_fp16(make_vae())
    z = latents(batch=1, size=24)
    engine, (_, untiled) = decode_with(vae, VaeOptions(dtype="mixed", tiling="off"), z, z)
    engine.set_options(VaeOptions(dtype="mixed", tiling="always", tile_size=16))    # bands of 16 rows
    with torch.no_grad():
        tiled = vae.decode(z).sample
    assert engine.last_call.tiles > 1 and engine.last_call.dtype == "mixed"
    assert psnr(tiled, untiled) > 45
    engine.detach()


def test_encode_is_measured_on_its_own():
    vae = make_vae()
    engine = VaeEngine(vae, VaeOptions(dtype="mixed", tiling="off")).attach()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        vae.decode(latents())
        vae.decode(latents())
        vae.encode(image)
        assert engine.last_call.dtype == "bf16"            # encode's first call measures
        vae.encode(image)
    assert engine.last_call.dtype == "mixed" and engine.last_call.kind == "encode"
    engine.detach()


def test_detach_after_mixed_restores_the_vae_bitwise():
    vae = overflow_fp16(make_vae())
    before = snapshot(vae)
    engine, _ = decode_with(vae, VaeOptions(dtype="mixed", tiling="off"), latents(), latents())
    engine.detach()
    assert_same(vae, before)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in vae.modules())
    assert not [m for m in vae.modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("fallback", [False, True])
def test_a_nan_latent_in_mixeds_measuring_call_changes_nothing_later(fallback):
    """max(0.0, nan) is 0.0: a NaN latent in the first call recorded every block's range as 0, so every block
    went fp16 and an fp16-overflowing VAE gave NaN images ever after (or redid each clean call)."""
    vae = overflow_fp16(make_vae())
    z = latents(batch=3)
    with torch.no_grad():
        reference = vae.decode(z).sample
    poisoned = z.clone()
    poisoned[1, 0, 2, 2] = float("nan")
    engine = VaeEngine(vae, VaeOptions(dtype="mixed", tiling="off", nan_fallback=fallback)).attach()
    with torch.no_grad():
        vae.decode(poisoned)
        image = vae.decode(z).sample
    stats = engine.last_call
    assert torch.isfinite(image).all() and psnr(image, reference) > 40
    assert stats.dtype == "mixed" and not stats.fallbacks
    assert all(torch.isfinite(torch.tensor(r)) for r in engine._blocks.ranges["decode"].values())
    engine.detach()


def test_a_measuring_call_whose_every_latent_is_nan_measures_nothing():
    vae = overflow_fp16(make_vae())
    engine = VaeEngine(vae, VaeOptions(dtype="mixed", tiling="off", nan_fallback=False)).attach()
    with torch.no_grad():
        vae.decode(torch.full((1, 4, 8, 8), float("nan")))
        assert "decode" not in engine._blocks.ranges
        image = vae.decode(latents()).sample
    assert torch.isfinite(image).all()
    engine.detach()

"""The NaN/Inf guard, on a VAE whose weights overflow fp16 the way the real SDXL VAE does."""
import torch

from conftest import make_vae
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.options import VaeOptions


def overflowing_vae():
    vae = make_vae()
    with torch.no_grad():
        # conv_in activations ~1e3 for ordinary latents, ~1e5 (past fp16's 65504) for large ones;
        # the next GroupNorm normalises either away in bf16/fp32.
        vae.decoder.conv_in.weight.mul_(1e3)
    return vae


def batch():
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z[1] *= 300           # this sample overflows fp16, sample 0 does not
    return z


def test_only_the_failing_sample_is_redone():
    vae = overflowing_vae()
    z = batch()
    with torch.no_grad():
        plain_fp16 = vae.to(torch.float16).decode(z.half()).sample.float()
        vae.float()
        assert torch.isfinite(plain_fp16[0]).all() and not torch.isfinite(plain_fp16[1]).all()
        engine = VaeEngine(vae, VaeOptions(dtype="fp16", avoid_emulated=False, tiling="off")).attach()
        image = vae.decode(z).sample
    stats = engine.last_call
    assert torch.isfinite(image).all()
    assert torch.equal(image[0], plain_fp16[0])           # the good sample kept its fp16 result
    assert len(stats.fallbacks) == 1 and stats.fallbacks[0].failed == 1 and stats.fallbacks[0].total == 2
    assert stats.fallbacks[0].from_dtype == torch.float16
    assert stats.nonfinite_left == 0
    assert vae.decoder.conv_in.weight.dtype == torch.float16   # back to the chosen dtype afterwards


def test_auto_learns_that_the_vae_overflows_fp16():
    vae = overflowing_vae()
    engine = VaeEngine(vae, VaeOptions(dtype="auto", tiling="off")).attach()
    engine.precision_for = lambda device: __import__("lib_vaeprec.policy", fromlist=["x"]).resolve(
        "auto", __import__("lib_vaeprec.device_caps", fromlist=["x"]).DeviceCaps(
            "cpu", native_fp16=True), engine.fp16_safe)
    with torch.no_grad():
        vae.decode(batch())
        assert engine.last_call.fallbacks
        vae.decode(batch())
    assert not engine.fp16_safe and not engine.last_call.fallbacks and engine.last_call.dtype == "fp32"


def test_guard_off_leaves_the_nans():
    vae = overflowing_vae()
    VaeEngine(vae, VaeOptions(dtype="fp16", avoid_emulated=False, tiling="off", nan_fallback=False)).attach()
    with torch.no_grad():
        image = vae.decode(batch()).sample
    assert not torch.isfinite(image[1]).all()


def test_the_infotext_names_the_dtype_that_made_the_pixels():
    """Every sample redone: the fp16 choice's pixels came from the safer dtype, and the infotext says so."""
    from lib_vaeprec.infotext import format_params
    from lib_vaeprec.stats import GenerationStats
    vae = overflowing_vae()
    engine = VaeEngine(vae, VaeOptions(dtype="fp16", avoid_emulated=False, tiling="off")).attach()
    gen = GenerationStats()
    engine.on_call = gen.add
    with torch.no_grad():
        vae.decode(batch()[1:])
    (fallback,) = gen.calls[0].fallbacks
    safer = {torch.bfloat16: "bf16", torch.float32: "fp32"}[fallback.to_dtype]   # fp32 where bf16 is emulated
    params = format_params(engine.options, gen)
    assert params["VAE dtype"] == f"fp16 ({safer})" and params["VAE fallback"] == f"fp16->{safer} (1 of 1)"

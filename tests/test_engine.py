import pytest
import torch

from conftest import assert_same, make_vae, psnr, snapshot, SMALL
from lib_vaeprec.engine import VaeEngine, engine_of
from lib_vaeprec.options import VaeOptions


def latents(batch=2, size=8, seed=1):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_decode_and_encode_return_fp32(tiny_vae, dtype):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype=dtype, tiling="off", avoid_emulated=False)).attach()
    with torch.no_grad():
        image = tiny_vae.decode(latents()).sample
        posterior = tiny_vae.encode(image).latent_dist
    assert image.dtype == torch.float32 and posterior.mean.dtype == torch.float32
    assert engine.last_call.kind == "encode" and engine.last_call.dtype == dtype


def test_bf16_weights_are_stored_in_bf16(tiny_vae):
    VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    with torch.no_grad():
        tiny_vae.decode(latents())
    assert tiny_vae.decoder.conv_in.weight.dtype == torch.bfloat16


def test_detach_restores_module_bitwise(tiny_vae):
    before = snapshot(tiny_vae)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    with torch.no_grad():
        tiny_vae.decode(latents())
    engine.detach()
    assert_same(tiny_vae, before)
    assert "decode" not in tiny_vae.__dict__ and "encode" not in tiny_vae.__dict__
    assert engine_of(tiny_vae) is None


def test_host_wrapper_on_the_instance_is_chained_and_put_back(tiny_vae):
    calls = []
    host_decode = tiny_vae.decode

    def host_wrapper(z, *a, **k):      # like A1111's lowvram wrapper on first_stage_model.decode
        calls.append(z.dtype)
        return host_decode(z, *a, **k)
    tiny_vae.decode = host_wrapper
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    with torch.no_grad():
        tiny_vae.decode(latents())
    assert calls == [torch.bfloat16]
    engine.detach()
    assert tiny_vae.decode is host_wrapper


def test_disabled_engine_passes_through_untouched(tiny_vae):
    before = snapshot(tiny_vae)
    VaeEngine(tiny_vae, VaeOptions(enabled=False, dtype="bf16", avoid_emulated=False)).attach()
    with torch.no_grad():
        image = tiny_vae.decode(latents()).sample
    assert image.dtype == torch.float32
    assert_same(tiny_vae, before)


def test_host_default_touches_no_weight(tiny_vae):
    tiny_vae.to(torch.bfloat16)
    before = snapshot(tiny_vae)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="host default")).attach()
    with torch.no_grad():
        image = tiny_vae.decode(latents()).sample
    assert image.dtype == torch.float32 and engine.last_call.dtype == "bf16"
    assert_same(tiny_vae, before)


def test_exception_inside_decode_leaves_a_consistent_engine(tiny_vae):
    before = snapshot(tiny_vae)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()

    def boom(module, args):
        raise RuntimeError("cancelled")
    handle = tiny_vae.decoder.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="cancelled"), torch.no_grad():
        tiny_vae.decode(latents())
    handle.remove()
    with torch.no_grad():
        assert torch.isfinite(tiny_vae.decode(latents()).sample).all()
    engine.detach()
    assert_same(tiny_vae, before)


def test_set_options_applies_at_next_call(tiny_vae):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    with torch.no_grad():
        tiny_vae.decode(latents())
        engine.set_options(VaeOptions(dtype="fp32"))
        tiny_vae.decode(latents())
    assert engine.last_call.dtype == "fp32"
    assert tiny_vae.decoder.conv_in.weight.dtype == torch.float32


def test_forward_goes_through_the_engine(tiny_vae):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    with torch.no_grad():
        out = tiny_vae(torch.rand(1, 3, 32, 32) * 2 - 1).sample
    assert out.dtype == torch.float32 and engine.last_call.kind == "decode"


def test_detach_under_a_later_wrapper_leaves_it_and_passes_through(tiny_vae):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    ours = tiny_vae.decode
    seen = []

    def later_wrapper(z, *a, **k):      # a host wrapper installed on top of ours
        seen.append(True)
        return ours(z, *a, **k)
    tiny_vae.decode = later_wrapper
    engine.detach()
    assert tiny_vae.decode is later_wrapper
    with torch.no_grad():
        image = tiny_vae.decode(latents()).sample
    assert seen and image.dtype == torch.float32
    assert tiny_vae.decoder.conv_in.weight.dtype == torch.float32   # passed through, nothing cast


def test_host_autocast_does_not_override_the_dtype(tiny_vae):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32")).attach()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        image = tiny_vae.decode(latents()).sample
    assert engine.last_call.dtype == "fp32" and image.dtype == torch.float32


def test_inference_mode_weights_cast_and_restore(tiny_vae):
    with torch.inference_mode():
        from conftest import make_vae
        vae = make_vae()
    before = snapshot(vae)
    engine = VaeEngine(vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    with torch.inference_mode():
        vae.decode(latents())
    engine.detach()
    assert_same(vae, before)


def test_cast_tiling_and_detach_inside_inference_mode(tiny_vae):
    """Forge decodes and encodes inside torch.inference_mode(); the weights' originals survive it."""
    before = snapshot(tiny_vae)
    options = VaeOptions(dtype="bf16", avoid_emulated=False, tiling="always", tile_size=64)
    engine = VaeEngine(tiny_vae, options).attach()
    with torch.inference_mode():
        image = tiny_vae.decode(latents()).sample
        latent = tiny_vae.encode(image).latent_dist.mean
        engine.detach()
    assert image.dtype == latent.dtype == torch.float32
    assert_same(tiny_vae, before)


@pytest.mark.parametrize("mode,layers,fitting,can_band,route", [
    ("always", "fused", {"fused", "low_memory"}, True, "tiled"),
    ("off", "fused", set(), True, "untiled"),
    ("auto", "fused", {"fused", "low_memory"}, True, "untiled"),
    ("auto", "fused", {"low_memory"}, True, "low_memory"),
    ("auto", "fused", {"low_memory"}, False, "tiled"),          # CPU, fp32 or compiled: no bands
    ("auto", "fused", set(), True, "tiled"),
    ("auto", "low_memory", set(), True, "tiled"),
])
def test_auto_tries_low_memory_convolutions_before_tiling(mode, layers, fitting, can_band, route):
    from lib_vaeprec.engine import choose_route
    assert choose_route(mode, layers, lambda with_layers: with_layers in fitting, can_band) == route

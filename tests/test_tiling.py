"""Tiled decode/encode against untiled: exact up to rounding, odd sizes, batch, 16 channels, OOM retry."""
import logging

import pytest
import torch

from conftest import SMALL, make_vae, psnr
from lib_vaeprec import fast_groupnorm, lean_maps, tiling
from lib_vaeprec.coder_layout import decoder_layout, encoder_layout
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.options import VaeOptions
from lib_vaeprec.stats import CallStats


def smooth_latents(batch, height, width, channels=4, seed=0):
    """Low-frequency latents with a brightness step: content whose statistics differ between tiles."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.interpolate(torch.randn(batch, channels, height // 4 + 1, width // 4 + 1, generator=g),
                                        size=(height, width), mode="bilinear") * 1.5
    z[..., :, : width // 3] += 1.0
    return z


@pytest.fixture(scope="module")
def vae():
    return make_vae(**SMALL)


def tiled(kind, vae, x, tile):
    stats = CallStats(kind)
    fn = vae.decode if kind == "decode" else vae.encode
    with torch.no_grad():
        return tiling.run_tiled(kind, fn, vae, x, (), {}, tile, stats), stats


@pytest.mark.parametrize("batch,height,width", [(1, 48, 48), (2, 44, 61), (1, 21, 35)])
def test_decode_tiled_equals_untiled(vae, batch, height, width):
    z = smooth_latents(batch, height, width)
    with torch.no_grad():
        reference = vae.decode(z).sample
    out, stats = tiled("decode", vae, z, 8)
    assert stats.tiles > 1 and out.sample.shape == reference.shape
    assert (out.sample - reference).abs().max() < 1e-3
    assert psnr(out.sample, reference) > 90


@pytest.mark.parametrize("batch,height,width", [(2, 40, 48), (1, 26, 34)])
def test_encode_tiled_equals_untiled(vae, batch, height, width):
    with torch.no_grad():
        image = vae.decode(smooth_latents(batch, height, width)).sample.clamp(-1, 1)
        reference = vae.encode(image).latent_dist.mean
    out, stats = tiled("encode", vae, image, 8)
    assert stats.tiles > 1 and out.latent_dist.mean.shape == reference.shape
    assert (out.latent_dist.mean - reference).abs().max() < 1e-3


def test_sixteen_channel_vae_tiles():
    vae = make_vae(**dict(SMALL, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False))
    z = smooth_latents(1, 40, 40, channels=16)
    with torch.no_grad():
        reference = vae.decode(z).sample
    out, stats = tiled("decode", vae, z, 8)
    assert stats.tiles > 1 and (out.sample - reference).abs().max() < 1e-3


def test_layouts_of_diffusers_coders(vae):
    layout = decoder_layout(vae.decoder)
    assert [k for k, _ in layout.body].count("up") == 3 and len(layout.mid) == 1
    assert [k for k, _ in encoder_layout(vae.encoder).head].count("down") == 3


def test_engine_always_tiles_and_reports_it(vae):
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always", tile_size=128)).attach()
    try:
        with torch.no_grad():
            vae.decode(smooth_latents(1, 40, 40))
        assert engine.last_call.tiles > 1 and engine.last_call.tile_px == 128
    finally:
        engine.detach()


def _memory_limit(pixels):
    """A forward pre-hook that fails like a full GPU when its input is larger than pixels x pixels."""
    def hook(module, args):
        if args[0].shape[-1] * args[0].shape[-2] > pixels * pixels:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return hook


def test_out_of_memory_untiled_is_redone_tiled(vae):
    z = smooth_latents(1, 64, 64)
    with torch.no_grad():
        reference = vae.decode(z).sample
    handle = vae.decoder.conv_out.register_forward_pre_hook(_memory_limit(40 * 8))
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="auto", tile_size=128)).attach()
    try:
        with torch.no_grad():
            image = vae.decode(z).sample
    finally:
        handle.remove()
        engine.detach()
    assert engine.last_call.tiled_after_oom and engine.last_call.tiles > 1
    assert (image - reference).abs().max() < 1e-3


def test_out_of_memory_while_tiled_is_redone_with_smaller_tiles(vae, caplog):
    """Free memory counts the allocator's cache, which can be too fragmented for a whole map."""
    z = smooth_latents(1, 40, 40)
    with torch.no_grad():
        reference = vae.decode(z).sample
    calls = []

    def fails_once(module, args):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    handle = vae.decoder.conv_out.register_forward_pre_hook(fails_once)
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always", tile_size=256)).attach()
    try:
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
            image = vae.decode(z).sample
    finally:
        handle.remove()
        engine.detach()
    assert "redoing it with 128 px tiles" in caplog.text
    assert (image - reference).abs().max() < 1e-3


def test_tiling_off_lets_out_of_memory_through(vae):
    handle = vae.decoder.conv_out.register_forward_pre_hook(_memory_limit(0))
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="off")).attach()
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError), torch.no_grad():
            vae.decode(smooth_latents(1, 16, 16))
    finally:
        handle.remove()
        engine.detach()


def test_non_finite_sample_of_a_tiled_call_is_redone_at_a_safer_dtype():
    from test_guard import batch, overflowing_vae
    vae = overflowing_vae()
    engine = VaeEngine(vae, VaeOptions(dtype="fp16", avoid_emulated=False, tiling="always", tile_size=64)).attach()
    with torch.no_grad():
        image = vae.decode(batch()).sample
    assert torch.isfinite(image).all() and engine.last_call.fallbacks[0].failed == 1


def test_planner_sizes_tiles_from_free_memory(vae, monkeypatch):
    z = torch.zeros(1, 4, 256, 256)
    planner = tiling.TilePlanner(vae, "decode", z)
    monkeypatch.setattr(tiling.memory, "free_bytes", lambda device: 4 * planner.bytes_per_latent_px * 64 * 64)
    assert planner.tile_latent() == 64
    assert planner.untiled_bytes() == planner.bytes_per_latent_px * 256 * 256
    assert tiling.TilePlanner(vae, "decode", z, tile_px=512).tile_latent() == 64


def test_original_layout_vae_tiles_exactly():
    """The layout A1111, Forge and reForge run (up[0] highest resolution, mid without forward, temb args)."""
    from standins.ldm_vae import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL().eval()
    assert decoder_layout(vae.decoder) is not None and encoder_layout(vae.encoder) is not None
    z = smooth_latents(2, 30, 44)
    with torch.no_grad():
        reference = vae.decode(z)
        image = reference.clamp(-1, 1)
        reference_latent = vae.encode(image).parameters
    out, stats = tiled("decode", vae, z, 8)
    assert stats.tiles > 1 and (out - reference).abs().max() < 1e-3
    latent, stats = tiled("encode", vae, image, 8)
    assert stats.tiles > 1 and (latent.parameters - reference_latent).abs().max() < 1e-3


def test_engine_on_original_layout_returns_the_same_kind_of_result():
    from standins.ldm_vae import AutoencoderKL, Distribution
    torch.manual_seed(0)
    vae = AutoencoderKL().eval()
    engine = VaeEngine(vae, VaeOptions(dtype="bf16", avoid_emulated=False, tiling="always", tile_size=64)).attach()
    with torch.no_grad():   # small: without native bf16 a CPU runs these convolutions ~200x slower
        image = vae.decode(smooth_latents(1, 8, 8))
        posterior = vae.encode(image.clamp(-1, 1))
    engine.detach()
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert isinstance(posterior, Distribution) and posterior.mean.dtype == torch.float32


@pytest.mark.parametrize("kind,layers,px,measured_mib", [
    ("decode", "plain", 512, 610), ("decode", "plain", 2048, 9731),
    ("decode", "fused", 512, 512.6), ("decode", "fused", 2048, 8193.6),
    ("decode", "fast", 512, 388.1), ("decode", "fast", 2048, 6145),
    ("decode", "low_memory", 512, 388.3), ("decode", "low_memory", 2048, 6149),
    ("encode", "fast", 512, 385.8), ("encode", "fast", 2048, 6168.3),
    ("encode", "plain", 512, 386), ("encode", "plain", 2048, 6168),
    ("encode", "low_memory", 512, 322.2), ("encode", "low_memory", 2048, 5144)])
def test_untiled_estimate_covers_the_measured_h100_peaks(kind, layers, px, measured_mib):
    """The SD VAE's bf16 peaks measured on the H100 (docs/benchmarks.md), within +15% and never under."""
    from lib_vaeprec.bench.models import build
    vae = build("sd")
    x = torch.zeros(1, 4, px // 8, px // 8) if kind == "decode" else torch.zeros(1, 3, px, px)
    estimate = tiling.TilePlanner(vae, kind, x.to(torch.bfloat16), layers=layers).untiled_bytes() / 2**20
    assert measured_mib <= estimate <= 1.15 * measured_mib


@pytest.mark.parametrize("kind", ["decode", "encode"])
def test_a_small_memory_budget_recomputes_and_still_equals_untiled(vae, kind, monkeypatch, caplog):
    """With almost no free memory: upsampler outputs never held whole (their input in host memory),
    conv1 outputs recomputed, resnet outputs written over their inputs."""
    z = smooth_latents(2, 30, 26)
    with torch.no_grad():
        reference_image = vae.decode(z).sample
        x = z if kind == "decode" else reference_image.clamp(-1, 1)
        reference = vae.decode(x).sample if kind == "decode" else vae.encode(x).latent_dist.mean
    monkeypatch.setattr(tiling.memory, "free_bytes", lambda device: 1)
    with caplog.at_level("INFO", logger="vae_precision"):
        out, stats = tiled(kind, vae, x, 8)
    result = out.sample if kind == "decode" else out.latent_dist.mean
    assert stats.tiles > 1 and (result - reference).abs().max() < 1e-3
    expected = "conv1, host memory, in place, upsampled" if kind == "decode" else "conv1, in place"
    assert f"fitted to memory with: {expected}" in caplog.text


def test_original_layout_with_a_small_memory_budget(monkeypatch):
    from standins.ldm_vae import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL().eval()
    z = smooth_latents(1, 30, 44)
    with torch.no_grad():
        reference = vae.decode(z)
    monkeypatch.setattr(tiling.memory, "free_bytes", lambda device: 1)
    out, stats = tiled("decode", vae, z, 8)
    assert stats.tiles > 1 and (out - reference).abs().max() < 1e-3


def test_circular_padding_runs_untiled(vae, caplog):
    """A1111's seamless-texture option makes every conv pad circularly; tiles cannot reproduce that."""
    z = smooth_latents(1, 24, 24)
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        for m in convs:
            m.padding_mode = "circular"
        with torch.no_grad():
            reference = vae.decode(z).sample
        out, stats = tiled("decode", vae, z, 8)
    finally:
        for m in convs:
            m.padding_mode = "zeros"
    assert stats.tiles == 0 and torch.equal(out.sample, reference)
    assert "pad circularly" in caplog.text


@pytest.mark.parametrize("lean", [False, True])
def test_channels_last_body_equals_untiled(monkeypatch, caplog, lean):
    """On CUDA a 16-bit decoder body runs channels_last; the same code on the CPU here, in bf16 on a tiny
    VAE (a CPU without native bf16 runs these convolutions ~200x slower). `lean`: with no memory to
    spare, so regions are computed on the fly from a source in host memory, and recomputed."""
    vae = make_vae().to(torch.bfloat16)
    z = smooth_latents(1, 40, 10).to(torch.bfloat16)
    with torch.no_grad():
        reference = vae.decode(z).sample
    monkeypatch.setattr(fast_groupnorm, "DEVICE_TYPES", ("cpu",))
    if lean:
        monkeypatch.setattr(tiling.memory, "free_bytes", lambda device: 1)
    seen = []
    handle = vae.decoder.conv_out.register_forward_pre_hook(
        lambda module, args: seen.append(lean_maps.is_channels_last(args[0])))
    try:
        with caplog.at_level(logging.INFO, logger="vae_precision"):
            out, stats = tiled("decode", vae, z, 2)        # 2 latent pixels: bands of 16 rows here
    finally:
        handle.remove()
    assert stats.tiles > 1 and seen and all(seen)
    assert ("host memory" in caplog.text) == lean
    assert psnr(out.sample, reference) > 40


def test_host_rows_fetch_any_band_in_chunks_and_keep_few(monkeypatch):
    monkeypatch.setattr(lean_maps.HostRows, "CHUNK_ROWS", 16)
    x = torch.randn(2, 3, 150, 7)
    rows = lean_maps.HostRows(x)
    chunk_bytes = 16 * 2 * 3 * 7 * 4
    for a0, a1 in [(0, 10), (8, 40), (38, 70), (69, 150), (0, 34), (140, 150), (5, 6)]:   # down, then again
        assert torch.equal(rows.crop(a0, a1, 0, 7), x[:, :, a0:a1])
        band_bytes = 2 * 3 * (a1 - a0) * 7 * 4
        assert rows.held_bytes() <= band_bytes + (a1 - a0 + 2 * 16) // 16 * chunk_bytes + chunk_bytes

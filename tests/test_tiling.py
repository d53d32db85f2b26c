"""Tiled decode/encode against untiled: exact up to rounding at every memory budget (maps on the device,
in host memory, recomputed, written in place), odd sizes, batches, 16 channels, both layouts; the plan
for large images on small cards; the out-of-memory ladder down to the CPU."""
import logging
import re

import pytest
import torch

from conftest import SMALL, DeviceMemoryCap, make_vae, psnr
from lib_vaeprec import fast_groupnorm, memory, tiling
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.options import VaeOptions
from lib_vaeprec.stats import CallStats
from lib_vaeprec.tiling import attention, maps
from lib_vaeprec.tiling.layout import decoder_layout, encoder_layout, layout_of
from lib_vaeprec.tiling.plan import PlanError, make_plan


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


def tiled(kind, vae, x, tile_px=64, lean=False, **budget):
    stats = CallStats(kind)
    fn = vae.decode if kind == "decode" else vae.encode
    plan = tiling.plan_for(vae, kind, x, tile_px=tile_px, lean=lean, **budget)
    with torch.no_grad():
        return tiling.run_tiled(fn, vae, kind, plan, x, (), {}, stats), stats, plan


def result_of(kind, out):
    return out.sample if kind == "decode" else out.latent_dist.mean


def references(vae, kind, batch, height, width):
    with torch.no_grad():
        image = vae.decode(smooth_latents(batch, height, width)).sample.clamp(-1, 1)
        x = smooth_latents(batch, height, width) if kind == "decode" else image
        return x, result_of(kind, vae.decode(x) if kind == "decode" else vae.encode(x))


@pytest.mark.parametrize("batch,height,width", [(1, 48, 48), (2, 44, 61), (1, 21, 35)])
def test_decode_tiled_equals_untiled(vae, batch, height, width):
    z, reference = references(vae, "decode", batch, height, width)
    out, stats, _ = tiled("decode", vae, z)
    assert stats.tiles > 1 and out.sample.shape == reference.shape
    assert (out.sample - reference).abs().max() < 1e-3
    assert psnr(out.sample, reference) > 90


@pytest.mark.parametrize("batch,height,width", [(2, 40, 48), (1, 26, 34)])
def test_encode_tiled_equals_untiled(vae, batch, height, width):
    image, reference = references(vae, "encode", batch, height, width)
    out, stats, _ = tiled("encode", vae, image)
    assert stats.tiles > 1 and out.latent_dist.mean.shape == reference.shape
    assert (out.latent_dist.mean - reference).abs().max() < 1e-3


@pytest.mark.parametrize("kind", ["decode", "encode"])
@pytest.mark.parametrize("budget", [4e6, 2e6, "lean"])
def test_every_memory_budget_gives_the_untiled_result(vae, kind, budget):
    """Little free memory: maps in host memory (a pinned pool beside a GPU; here plain RAM), upsampler
    outputs and the encoder's first conv recomputed on the fly, conv1 outputs recomputed, resnet outputs
    written over their inputs."""
    x, reference = references(vae, kind, 2, 30, 26)
    lean = budget == "lean"
    out, stats, plan = tiled(kind, vae, x, lean=lean, free_bytes=2e6 if lean else budget, host_free=1e12,
                             host_maps=True)
    assert stats.tiles > 1 and (result_of(kind, out) - reference).abs().max() < 1e-3
    assert {"host", "on the fly", "in place", "conv1 recomputed"} <= set(plan.trades())
    assert stats.host_peak_bytes == plan.host_bytes > 0


def test_sixteen_channel_vae_tiles():
    vae = make_vae(**dict(SMALL, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False))
    z = smooth_latents(1, 40, 40, channels=16)
    with torch.no_grad():
        reference = vae.decode(z).sample
    out, stats, _ = tiled("decode", vae, z)
    assert stats.tiles > 1 and (out.sample - reference).abs().max() < 1e-3


def test_layouts_of_diffusers_coders(vae):
    decoder = [k for k, _ in decoder_layout(vae.decoder).stages]
    assert decoder[:4] == ["conv", "resnet", "attention", "resnet"] and decoder.count("up") == 3
    encoder = [k for k, _ in encoder_layout(vae.encoder).stages]
    assert encoder.count("down") == 3 and encoder[-3:] == ["resnet", "attention", "resnet"]


def test_original_layout_vae_tiles_exactly_also_with_little_memory():
    """The layout A1111, Forge and reForge run (up[0] highest resolution, mid without forward, temb args)."""
    from standins.ldm_vae import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL().eval()
    assert layout_of(vae, "decode") is not None and layout_of(vae, "encode") is not None
    z = smooth_latents(2, 30, 44)
    with torch.no_grad():
        reference = vae.decode(z)
        image = reference.clamp(-1, 1)
        reference_latent = vae.encode(image).parameters
    for budget in ({}, dict(free_bytes=3e6, host_free=1e12, host_maps=True)):
        out, stats, _ = tiled("decode", vae, z, **budget)
        assert stats.tiles > 1 and (out - reference).abs().max() < 1e-3
        latent, stats, _ = tiled("encode", vae, image, **budget)
        assert stats.tiles > 1 and (latent.parameters - reference_latent).abs().max() < 1e-3


@pytest.mark.parametrize("lean", [False, True])
def test_channels_last_body_equals_untiled(monkeypatch, lean):
    """On CUDA a 16-bit decoder body runs channels_last; the same code on the CPU here, in bf16 on a tiny
    VAE (a CPU without native bf16 runs these convolutions ~200x slower). `lean`: with maps in host memory
    and recomputed."""
    vae = make_vae().to(torch.bfloat16)
    z = smooth_latents(1, 40, 10).to(torch.bfloat16)
    with torch.no_grad():
        reference = vae.decode(z).sample
    monkeypatch.setattr(fast_groupnorm, "DEVICE_TYPES", ("cpu",))
    seen = []
    handle = vae.decoder.conv_out.register_forward_pre_hook(
        lambda module, args: seen.append(maps.is_channels_last(args[0])))
    budget = dict(free_bytes=5e5, host_free=1e12, host_maps=True) if lean else {}
    try:
        out, stats, plan = tiled("decode", vae, z, tile_px=16, lean=lean, **budget)
    finally:
        handle.remove()
    assert stats.tiles > 1 and seen and all(seen)
    assert ("host" in plan.trades()) == lean
    assert psnr(out.sample, reference) > 40


# ----- planning large images -----

@pytest.fixture(scope="module")
def sd_vae_on_meta():
    """The SD VAE architecture without weights in memory: planning needs shapes only."""
    from diffusers import AutoencoderKL
    from lib_vaeprec.bench.models import SD_CONFIG
    with torch.device("meta"):
        return AutoencoderKL(**SD_CONFIG).to(torch.bfloat16)


@pytest.mark.parametrize("kind,px,free_gb,lean", [("decode", 4096, 2, False), ("encode", 4096, 2, False),
                                                  ("decode", 2048, 1, False), ("decode", 8192, 4, True)])
def test_large_images_are_planned_within_the_free_memory(sd_vae_on_meta, kind, px, free_gb, lean):
    """8192² only with the least memory: the attention's keys and values take 2 GiB of the 4 GB."""
    x = torch.empty((1, 4, px // 8, px // 8) if kind == "decode" else (1, 3, px, px), dtype=torch.bfloat16,
                    device="meta")
    free = free_gb * 1e9
    plan = make_plan(layout_of(sd_vae_on_meta, kind), kind, x, free_bytes=free, host_free=100 * 2**30,
                     host_maps=True, lean=lean)
    assert plan.device_bytes + plan.work_bytes <= 0.8 * free
    # Full-resolution maps wait in host memory or are recomputed from a smaller one, never held.
    assert all(s.where in ("host", "on the fly", "in place") for s in plan.stages[:-1] if s.shape[-1] == px)


def test_host_memory_that_would_not_suffice_is_refused_before_any_work(sd_vae_on_meta):
    x = torch.empty(1, 4, 1024, 1024, dtype=torch.bfloat16, device="meta")
    with pytest.raises(PlanError, match=r"need \d+\.\d+ GiB of host memory and 6\.4 GiB is there for them"):
        make_plan(layout_of(sd_vae_on_meta, "decode"), "decode", x, free_bytes=4e9, host_free=8 * 2**30,
                  host_maps=True, lean=True)


@pytest.mark.parametrize("free_gb", [1, 2])
def test_an_8192_decode_is_planned_in_a_small_card_with_keys_and_values_in_host_memory(sd_vae_on_meta, free_gb):
    """Whole, the attention's keys and values take 2 GiB at 8192²: they wait in host memory and come back
    in chunks."""
    x = torch.empty(1, 4, 1024, 1024, dtype=torch.bfloat16, device="meta")
    plan = make_plan(layout_of(sd_vae_on_meta, "decode"), "decode", x, free_bytes=free_gb * 1e9, host_free=1e12,
                     host_maps=True)
    attention_step = next(s for s in plan.stages if s.kind == "attention")
    assert 0 < attention_step.kv_chunk < 1024 * 1024 and "keys and values in host memory" in plan.trades()
    # bands keep 16 rows (and their halos) at least: 1 GiB of work for an 8192-pixel-wide image
    assert plan.device_bytes <= 0.5 * free_gb * 1e9 and plan.device_need <= max(free_gb * 1e9, 1.1 * 2**30)


@pytest.mark.parametrize("kind", ["decode", "encode"])
def test_the_least_memory_plan_reads_no_free_memory_and_does_not_grow_with_the_area(sd_vae_on_meta, monkeypatch,
                                                                                    kind):
    monkeypatch.setattr(tiling.plan.memory, "free_bytes", lambda device: pytest.fail("read free memory"))
    needs = []
    for px in (2048, 8192, 16384):
        x = torch.empty((1, 4, px // 8, px // 8) if kind == "decode" else (1, 3, px, px), dtype=torch.bfloat16,
                        device="meta")
        plan = make_plan(layout_of(sd_vae_on_meta, kind), kind, x, host_free=1e13, host_maps=True, lean=True)
        needs.append(plan.device_need)
    # 64x the area from 2048² to 16384²; bands keep 16 rows at least, so the width still counts
    assert needs[-1] <= 2 * 2**30 and needs[-1] <= 8 * needs[0]


@pytest.mark.parametrize("kind,layers,px,measured_mib", [
    ("decode", "plain", 512, 610), ("decode", "plain", 2048, 9731),
    ("decode", "fused", 512, 512.6), ("decode", "fused", 2048, 8193.6),
    ("decode", "fast", 512, 388.1), ("decode", "fast", 2048, 6145),
    ("decode", "low_memory", 512, 388.3), ("decode", "low_memory", 2048, 6149),
    ("encode", "fast", 512, 385.8), ("encode", "fast", 2048, 6168.3),
    ("encode", "plain", 512, 386), ("encode", "plain", 2048, 6168),
    ("encode", "low_memory", 512, 322.2), ("encode", "low_memory", 2048, 5144)])
def test_untiled_estimate_covers_the_measured_h100_peaks(sd_vae_on_meta, kind, layers, px, measured_mib):
    """The SD VAE's bf16 peaks measured on the H100 (docs/benchmarks.md), within +15% and never under."""
    x = torch.zeros(1, 4, px // 8, px // 8) if kind == "decode" else torch.zeros(1, 3, px, px)
    estimate = tiling.untiled_bytes(sd_vae_on_meta, kind, x.to(torch.bfloat16), layers) / 2**20
    assert measured_mib <= estimate <= 1.15 * measured_mib


# ----- maps -----

@pytest.mark.parametrize("channels_last", [False, True])
def test_host_map_reads_back_any_band_it_was_written(channels_last):
    x = torch.randn(1, 3, 150, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    host = maps.HostMap(x.shape, x.dtype, x.device, channels_last)
    for r0, r1 in [(0, 40), (40, 97), (97, 150)]:
        host.write(r0, r1, x[..., r0:r1, :])
    regions = [(0, 10), (8, 40), (38, 70), (69, 150), (5, 6)]
    for (r0, r1), band in zip(regions, host.read_bands(regions)):
        assert torch.equal(band, x[..., r0:r1, :]) and maps.is_channels_last(band) == channels_last
    assert torch.equal(host.as_tensor(), x)


def test_lazy_map_reads_what_the_stored_map_would_hold():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    up = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2.0, mode="nearest"), conv)
    x = torch.randn(1, 4, 33, 9)
    with torch.no_grad():
        whole = up(x)
        lazy = maps.Lazy(up, x, 6, scale=2, halo=1)
        regions = [(0, 17), (15, 40), (40, 66), (3, 4)]
        for (r0, r1), band in zip(regions, lazy.read_bands(regions)):
            assert torch.allclose(band, whole[..., r0:r1, :], atol=1e-6)


# ----- attention -----

@pytest.mark.parametrize("fp32_scores", [False, True])
def test_chunked_attention_equals_one_call(fp32_scores):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 1, 300, 32) for _ in range(3))
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = attention.attend(q, k, v, work_bytes=64 * 300 * attention.SCORE_BYTES, fp32_scores=fp32_scores)
    assert torch.allclose(out, reference, atol=1e-5)


def _chunks_of(k, v, positions):
    return ((k[:, :, i:i + positions], v[:, :, i:i + positions]) for i in range(0, k.shape[2], positions))


@pytest.mark.parametrize("heads,positions", [(1, 37), (2, 64), (1, 300)])
def test_streamed_keys_and_values_equal_whole_ones(heads, positions):
    """The online softmax over chunks of keys gives the softmax over all of them (fp32)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, heads, 300, 32) * 3 for _ in range(3))
    whole = attention.attend(q, k, v, work_bytes=64 * 300 * attention.SCORE_BYTES, fp32_scores=True)
    streamed = attention.attend_streamed(q, _chunks_of(k, v, positions), work_bytes=64 * positions * 10)
    assert torch.allclose(streamed, whole, atol=2e-6, rtol=1e-5)


def test_streamed_keys_and_values_in_bf16_match_whole_ones():
    """16-bit inputs: fp32 scores, sums and outputs; each chunk's probabilities in bf16 as the whole
    product has them."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 96, 16).to(torch.bfloat16) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    whole = attention.attend(q, k, v, work_bytes=1 << 20, fp32_scores=True)
    streamed = attention.attend_streamed(q, _chunks_of(k, v, 20), work_bytes=1 << 20)
    assert streamed.dtype == torch.bfloat16
    assert (streamed.double() - exact).abs().max() <= 2 * (whole.double() - exact).abs().max() + 1e-2
    assert (streamed.float() - whole.float()).abs().max() < 2e-2


def test_keys_and_values_from_host_memory_give_the_untiled_result(vae, monkeypatch):
    """The least-memory plan keeps the keys and values in host memory; with chunks of a few rows (a small
    share of this small map's work), the decode still equals the untiled one."""
    monkeypatch.setattr(tiling.plan, "KV_CHUNK_SHARE", 0.002)
    z, reference = references(vae, "decode", 1, 24, 20)
    plan = make_plan(layout_of(vae, "decode"), "decode", z, host_free=1e12, host_maps=True, tile_px=16, lean=True)
    step = next(s for s in plan.stages if s.kind == "attention")
    assert 20 <= step.kv_chunk < 24 * 20 / 3
    with torch.no_grad():
        out = tiling.run_tiled(vae.decode, vae, "decode", plan, z, (), {}, CallStats("decode"))
    assert (out.sample - reference).abs().max() < 1e-3


def test_attention_of_unknown_structure_runs_whole(vae, monkeypatch):
    monkeypatch.setattr(attention, "parts_of", lambda module: None)
    z, reference = references(vae, "decode", 1, 24, 24)
    out, stats, _ = tiled("decode", vae, z)
    assert stats.tiles > 1 and (out.sample - reference).abs().max() < 1e-3


# ----- the engine's ladder -----

def _memory_limit(pixels):
    """A forward pre-hook that fails like a full GPU when its input is larger than pixels x pixels."""
    def hook(module, args):
        if args[0].shape[-1] * args[0].shape[-2] > pixels * pixels:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return hook


def test_engine_always_tiles_and_reports_it(vae):
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always", tile_size=128)).attach()
    try:
        with torch.no_grad():
            vae.decode(smooth_latents(1, 40, 40))
        assert engine.last_call.tiles > 1 and engine.last_call.tile_px == 128
    finally:
        engine.detach()


@pytest.mark.parametrize("kind", ["decode", "encode"])
def test_an_image_no_larger_than_one_tile_runs_in_one_piece(kind):
    """A 64x64 image with 64 px tiles, through maps wider than 128 channels at full resolution (as the SD
    decoder's 256-channel maps after its last-but-one upsampler): one piece, not split, so no tiles are
    reported (a 64x64 render in the web UIs with tiling `always` was split in two)."""
    vae = make_vae(block_out_channels=(128, 256), norm_num_groups=32, layers_per_block=1)
    x = smooth_latents(1, 32, 32) if kind == "decode" else torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        reference = result_of(kind, vae.decode(x) if kind == "decode" else vae.encode(x))
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always", tile_size=64)).attach()
    try:
        with torch.no_grad():
            out = result_of(kind, vae.decode(x) if kind == "decode" else vae.encode(x))
    finally:
        engine.detach()
    assert engine.last_call.tiles == 1 and not engine.last_call.split
    assert (out - reference).abs().max() < 1e-3


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
    assert engine.last_call.rungs_failed == ["untiled"]
    assert (image - reference).abs().max() < 1e-3


def test_out_of_memory_while_tiled_is_redone_in_less_memory(vae, caplog):
    """Free memory counts the allocator's cache, which can be too fragmented for a whole map: the next rung
    plans within half of what the failed one asked for."""
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
    assert "decode tiled ran out of memory (it asked for " in caplog.text
    assert "; running it tiled in less memory" in caplog.text
    assert engine.last_call.rungs_failed == ["tiled"]
    assert (image - reference).abs().max() < 1e-3


def test_a_plan_that_does_not_fit_hands_over_to_the_next_rung(vae, monkeypatch, caplog):
    """The reading says nothing is free: the plan from it does not fit, and the least-memory plan, which
    does not read it, gives the image."""
    monkeypatch.setattr(tiling.plan.memory, "free_bytes", lambda device: 1)
    z = smooth_latents(1, 16, 16)
    with torch.no_grad():
        reference = vae.decode(z).sample
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always")).attach()
    try:
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
            image = vae.decode(z).sample
    finally:
        engine.detach()
    # one line with the figures, then the next rung ("in less memory" only follows an out-of-memory error)
    assert "decode tiled does not fit: its " in caplog.text and "running it tiled with the least memory" in caplog.text
    assert engine.last_call.rungs_failed == ["tiled"] and (image - reference).abs().max() < 1e-3


def test_a_wrong_free_memory_reading_ends_on_a_small_tiled_plan(vae, monkeypatch, caplog):
    """The reading says gigabytes are free (the host's RAM here), the allocator holds 40 MiB (as under a cap
    or with memory taken after the reading): each rung after an out-of-memory error plans within half of
    what failed, and the least-memory plan, which does not read free memory, gives the image on the
    device. Its fixed band is scaled to this small VAE (a quarter of the SD VAE's channels, 384² pixels)."""
    monkeypatch.setattr(tiling.plan, "LEAST_WORK_BYTES", 4 << 20)
    z = smooth_latents(1, 48, 48)
    with torch.no_grad():
        reference = vae.decode(z).sample
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="auto")).attach()
    try:
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"), \
                DeviceMemoryCap(limit=40 << 20) as cap:
            image = vae.decode(z).sample
    finally:
        engine.detach()
    stats = engine.last_call
    assert stats.rungs_failed[0] == "untiled" and stats.rungs_failed[-1] == "tiled in less memory"
    assert stats.device == "cpu" and stats.tiles > 1 and "on the CPU" not in caplog.text
    assert "decode untiled ran out of memory (it asked for " in caplog.text
    assert cap.peak <= cap.limit and (image - reference).abs().max() < 1e-3


@pytest.mark.parametrize("kind", ["decode", "encode"])
def test_a_first_call_that_measures_ranges_fits_its_plan(vae, kind):
    """mixed's first call runs with hooks that keep each block's largest value: it holds no more than the
    plan it was given (every tensor made during the call counted, as a device allocator counts them)."""
    from lib_vaeprec.mixed import BlockPrecision
    x = smooth_latents(1, 48, 48) if kind == "decode" else torch.rand(1, 3, 384, 384) * 2 - 1
    plan = make_plan(layout_of(vae, kind), kind, x, free_bytes=60e6)
    blocks = BlockPrecision(vae)
    with torch.no_grad(), DeviceMemoryCap() as cap, blocks.measuring(kind):
        tiling.run_tiled(vae.decode if kind == "decode" else vae.encode, vae, kind, plan, x, (), {}, CallStats(kind))
    assert len(blocks.ranges[kind]) == len(blocks.blocks(kind)) and cap.peak <= plan.device_need


def test_the_last_rung_is_the_cpu(monkeypatch, caplog):
    """Every device rung runs out of memory: the call ends on the CPU, in what the CPU runs natively, and
    the weights are back in the chosen dtype afterwards. (Here the 'device' is the CPU itself, in bf16, and
    every call outside the CPU rung fails.)"""
    vae = make_vae()
    z = smooth_latents(1, 8, 8)
    with torch.no_grad():
        reference = vae.decode(z).sample
    on_cpu_rung = []

    def out_of_memory_but_on_the_cpu_rung(module, args):
        if not on_cpu_rung:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    handle = vae.decoder.conv_in.register_forward_pre_hook(out_of_memory_but_on_the_cpu_rung)
    engine = VaeEngine(vae, VaeOptions(dtype="bf16", avoid_emulated=False, tiling="auto")).attach()
    rungs, on_cpu = engine._rungs, engine._on_cpu

    def cpu_rung(*call, why=None):
        on_cpu_rung.append(True)
        try:
            return on_cpu(*call, why=why)
        finally:
            on_cpu_rung.clear()
    monkeypatch.setattr(engine, "_rungs", lambda *call: rungs(*call) + [
        ("on the CPU", lambda: cpu_rung(*call[:-1], why=call[-1].why_cpu))])
    monkeypatch.setattr(tiling.plan.memory, "free_bytes", lambda device: 1e5)   # no room to run untiled
    try:
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
            image = vae.decode(z).sample
    finally:
        handle.remove()
    stats = engine.last_call
    # on this CPU-as-device a call this small is also tried whole before the CPU rung
    assert stats.rungs_failed[0] == "tiled" and stats.rungs_failed[-2:] == ["tiled with the least memory", "untiled"]
    assert stats.device == "cpu"
    # one line says both that it runs on the CPU and why
    cpu_lines = [r.getMessage() for r in caplog.records if "CPU" in r.getMessage()]
    assert len(cpu_lines) == 1 and "runs on the CPU in" in cpu_lines[0]
    assert ": decode untiled ran out of memory" in cpu_lines[0]
    assert image.dtype == torch.float32 and psnr(image, reference) > 40
    assert vae.decoder.conv_in.weight.dtype == torch.bfloat16
    engine.detach()


def test_tiling_off_lets_out_of_memory_through_on_the_cpu(vae):
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


def test_circular_padding_runs_untiled(vae, caplog):
    """A1111's seamless-texture option makes every conv pad circularly; tiles cannot reproduce that."""
    z = smooth_latents(1, 24, 24)
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always", fused_upsample=False)).attach()
    try:
        for m in convs:
            m.padding_mode = "circular"
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
            image = vae.decode(z).sample
        engine.detach()
        with torch.no_grad():
            reference = vae.decode(z).sample
    finally:
        for m in convs:
            m.padding_mode = "zeros"
        engine.detach()
    assert engine.last_call.tiles == 0 and torch.equal(image, reference)
    assert "pad circularly" in caplog.text


def test_a_plan_short_of_ram_says_so_in_figures_that_differ():
    """On the CPU the maps' pool is host RAM, not "device memory"; "needs 0.0 MiB ... 0.0 MiB is there" said
    nothing."""
    vae = make_vae()
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(PlanError) as raised:
        tiling.plan_for(vae, "decode", x, tile_px=64, free_bytes=1000, host_free=1000)
    message = str(raised.value)
    assert "device memory" not in message and " of memory for maps" in message
    need, have = re.search(r"needs (.+) of memory for maps and (.+) is there", message).groups()
    assert need != have and "bytes" in have


@pytest.mark.parametrize("tiling_mode", ["auto", "always"])
def test_a_small_call_is_tried_untiled_where_ram_reads_nothing(monkeypatch, caplog, tiling_mode):
    """Host RAM read as 0: the plans sized from that reading find no room, and the image still comes, from
    the least-memory plan (which reads no free memory) or, failing that, the call tried whole."""
    vae = make_vae()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        reference = vae.decode(z).sample
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 0)
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling=tiling_mode)).attach()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
        image = vae.decode(z).sample
    assert torch.allclose(image, reference, atol=1e-4) and engine.last_call.device == "cpu"
    assert "does not fit" in caplog.text and "on the CPU" not in caplog.text
    engine.detach()


"""What only a CUDA GPU runs: host maps copied on side streams, the attention's fp32 scores as one 16-bit
product, a tiled decode whose maps wait in pinned host memory. Skipped without a GPU (CI has none)."""
import pytest
import torch

from conftest import SMALL, make_vae, psnr
from lib_vaeprec import tiling
from lib_vaeprec.stats import CallStats
from lib_vaeprec.tiling import attention, maps

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_host_map_on_side_streams_reads_back_what_was_written(channels_last):
    x = torch.randn(1, 64, 300, 96, device="cuda", dtype=torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    host = maps.HostMap(x.shape, x.dtype, x.device, channels_last)
    assert host.rows.is_pinned()
    for r0 in range(0, 300, 70):
        host.write(r0, min(300, r0 + 70), x[..., r0:r0 + 70, :])
    regions = [(0, 40), (38, 150), (149, 300), (0, 300)]
    for (r0, r1), band in zip(regions, host.read_bands(regions)):
        assert torch.equal(band, x[..., r0:r1, :])


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_scores_match_the_fused_kernel(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4096, 512, device="cuda", dtype=dtype) for _ in range(3))
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
    out = attention.attend(q, k, v, work_bytes=64 << 20, fp32_scores=True).float()
    assert (out - reference).abs().max() < 4e-3


@cuda
@pytest.mark.parametrize("kind", ["decode", "encode"])
def test_tiled_call_with_maps_in_host_memory_equals_untiled(kind):
    vae = make_vae(**SMALL).cuda().to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 64, 48, generator=g).cuda().to(torch.bfloat16)
    with torch.no_grad():
        image = vae.decode(z).sample.clamp(-1, 1)
        x = z if kind == "decode" else image
        fn = vae.decode if kind == "decode" else vae.encode
        reference = vae.decode(x).sample if kind == "decode" else vae.encode(x).latent_dist.mean
        plan = tiling.plan_for(vae, kind, x, tile_px=64, free_bytes=2e6, host_free=1e12)
        out = tiling.run_tiled(fn, vae, kind, plan, x, (), {}, CallStats(kind))
    result = out.sample if kind == "decode" else out.latent_dist.mean
    assert "host" in plan.trades() and result.device.type == "cuda"
    assert psnr(result, reference) > 40          # bf16 rounding differs between bands and the whole map


@cuda
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape, groups", [((1, 512, 64, 64), 32), ((2, 128, 96, 80), 32), ((1, 256, 33, 17), 32),
                                           ((1, 96, 40, 24), 24)])
def test_groupnorm_kernels_compute_what_the_reference_does(fmt, shape, groups):
    from lib_vaeprec import groupnorm_kernels as kernels
    if kernels.triton is None:
        pytest.skip("Triton is not installed")
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(groups, shape[1], eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    norm = norm.cuda().half()
    x = (torch.randn(*shape, device="cuda") * 3 + 2).half().contiguous(memory_format=fmt)
    pre = torch.randn(shape[1], device="cuda").half()
    for silu in (False, True):
        y = kernels.group_norm(norm, x, silu=silu, pre_bias=pre)
        expected = kernels.reference.group_norm(norm, x, silu=silu, pre_bias=pre).float()
        assert y.stride() == x.stride()
        assert ((y.float() - expected).abs() <= expected.abs() * 2 ** -10 + 2e-3).all()
    s = torch.randn_like(x)
    y = kernels.residual(x, s, pre, pre, 1.0)
    expected = kernels.reference.residual(x, s, pre, pre, 1.0).float()
    assert ((y.float() - expected).abs() <= expected.abs() * 2 ** -10 + 2e-3).all()


@cuda
@pytest.mark.parametrize("dtype", ["bf16", "mixed"])
def test_the_fused_blocks_decode_as_closely_and_say_so(dtype):
    from lib_vaeprec import groupnorm_kernels
    from lib_vaeprec.engine import VaeEngine
    from lib_vaeprec.options import VaeOptions
    vae = make_vae(**SMALL).cuda()
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        exact = vae.decode(z).sample
    results = {}
    for fast in (False, True):
        engine = VaeEngine(vae, VaeOptions(dtype=dtype, tiling="off", fast_groupnorm=fast)).attach()
        try:
            with torch.no_grad():
                vae.decode(z)                            # mixed measures its blocks on the first call
                results[fast] = vae.decode(z).sample
            kernels = engine.last_call.kernels
        finally:
            engine.detach()
        assert kernels == ("triton" if fast and groupnorm_kernels.triton is not None else "")
    assert psnr(results[True], exact) >= psnr(results[False], exact) - 0.3

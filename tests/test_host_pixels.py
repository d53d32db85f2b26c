"""`fp32` and `host default` give the web UI's own pixels, bit for bit: the speed-ups that round differently
(fused upsampling, fast GroupNorm) run only where the extension chose a 16-bit dtype on CUDA, and
"host default" keeps the host's own arithmetic, its autocast region included."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import SMALL, make_vae  # noqa: E402
from standins.fixtures import a1111, forge, reforge  # noqa: E402,F401

from lib_vaeprec import fast_groupnorm, fused_upsample  # noqa: E402
from lib_vaeprec.engine import VaeEngine  # noqa: E402
from lib_vaeprec.options import VaeOptions  # noqa: E402


def _decode_and_encode(vae, z, x):
    with torch.no_grad():
        return vae.decode(z).sample, vae.encode(x).latent_dist.mean


@pytest.mark.parametrize("dtype", ["fp32", "host default"])
def test_fp32_and_host_default_equal_the_plain_vae_on_cpu(dtype):
    vae = make_vae(**SMALL)                  # x8 with three upsamplers, like the SD VAE
    z = torch.randn(2, 4, 9, 7, generator=torch.Generator().manual_seed(1))
    x = torch.rand(2, 3, 72, 56, generator=torch.Generator().manual_seed(2)) * 2 - 1
    plain_image, plain_latent = _decode_and_encode(vae, z, x)
    engine = VaeEngine(vae, VaeOptions(dtype=dtype)).attach()     # every other option at its default
    image, latent = _decode_and_encode(vae, z, x)
    engine.detach()
    assert torch.equal(image, plain_image) and torch.equal(latent, plain_latent)


@pytest.fixture
def speedups_here(monkeypatch):
    """Fused upsampling and fast GroupNorm applicable to 16-bit maps on the CPU, as they are on CUDA."""
    monkeypatch.setattr(fused_upsample, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(fast_groupnorm, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(fast_groupnorm, "MIN_GROUP_ELEMENTS", 0)


def test_host_default_runs_no_speedup_that_rounds_differently(tiny_vae, speedups_here):
    """A host that runs its VAE in bf16 (Forge on recent GPUs) gets its own bf16 pixels under 'host default'."""
    tiny_vae.to(torch.bfloat16)
    z = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = tiny_vae.decode(z.bfloat16()).sample.float()
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="host default")).attach()
    with torch.no_grad():
        image = tiny_vae.decode(z).sample
    assert not engine._fused.installed and not engine._fast_norms.installed
    engine.detach()
    assert torch.equal(image, plain)


def test_host_default_keeps_the_hosts_autocast_region(tiny_vae):
    """A1111 encodes img2img inputs inside its autocast region: under 'host default' the host's arithmetic
    stays; a dtype the extension chose turns the region off (so fp32 is fp32)."""
    z = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain_fp32 = tiny_vae.decode(z).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_autocast = tiny_vae.decode(z).sample.float()
    assert not torch.equal(plain_autocast, plain_fp32)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="host default")).attach()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        host_default = tiny_vae.decode(z).sample
        engine.set_options(VaeOptions(dtype="fp32"))
        fp32 = tiny_vae.decode(z).sample
    engine.detach()
    assert torch.equal(host_default, plain_autocast)
    assert torch.equal(fp32, plain_fp32)


def _host_decode(env):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    return env.mod("modules.sd_samplers_common").decode_first_stage(env.model(), z).float()


@pytest.mark.parametrize("host", ["a1111", "forge", "reforge"])
def test_fp32_and_host_default_are_the_web_uis_own_pixels(host, request):
    env = request.getfixturevalue(host).start()
    env.opts.set("vae_precision_enabled", False)
    env.render()                                       # Forge loads its model lazily, in the first render
    without_extension = _host_decode(env)
    env.opts.set("vae_precision_enabled", True)
    for dtype in ("fp32", "host default"):
        env.opts.set("vae_precision_dtype", dtype)
        env.render()
        assert torch.equal(_host_decode(env), without_extension), dtype

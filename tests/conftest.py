import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4, layers_per_block=1)
# Four resolution levels like the real SD VAE (x8), still small enough for CPU tests.
SMALL = dict(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, latent_channels=4, layers_per_block=2)


def make_vae(seed=0, **overrides):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    config = dict(TINY, **overrides)
    return AutoencoderKL(**config).eval()


@pytest.fixture
def tiny_vae():
    return make_vae()


@pytest.fixture
def small_vae():
    return make_vae(**SMALL)


def snapshot(module):
    """Every parameter and buffer as (dtype, device, values) for bitwise comparisons."""
    return {name: (t.dtype, t.device, t.detach().clone()) for name, t in
            list(module.named_parameters()) + list(module.named_buffers())}


def assert_same(module, snap):
    now = snapshot(module)
    assert now.keys() == snap.keys()
    for name, (dtype, device, values) in snap.items():
        d, dev, v = now[name]
        assert d == dtype and dev == device, name
        assert torch.equal(v, values), name


def psnr(a, b):
    a = (a.float().clamp(-1, 1) + 1) / 2
    b = (b.float().clamp(-1, 1) + 1) / 2
    mse = torch.mean((a - b) ** 2).item()
    return 99.0 if mse == 0 else 10 * torch.log10(torch.tensor(1 / mse)).item()

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


class DeviceMemoryCap:
    """A device allocator with a limit, for CPU tests: counts the bytes of every tensor storage made while
    active (views and in-place results of existing tensors count nothing), frees them as the storages die,
    and past `limit` bytes fails as a full GPU does (torch.cuda.OutOfMemoryError). `peak` is the most held
    at once. What the engine reads as free memory is untouched: it is the host's, far above the limit."""

    def __init__(self, limit=float("inf")):
        self.limit, self.live, self.peak = limit, 0, 0

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        cap = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                cap._count(args, kwargs, out)
                return out
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def _count(self, args, kwargs, out):
        import weakref
        from torch.utils._pytree import tree_flatten
        existing = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                    if isinstance(t, torch.Tensor)}
        made = []
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in existing and storage.nbytes():
                existing.add(storage.data_ptr())
                made.append(storage)
        size = sum(s.nbytes() for s in made)
        if size and self.live + size > self.limit:      # the new tensors are dropped with the error
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size / 2**20:.2f} MiB "
                                              f"({self.live / 2**20:.1f} MiB of {self.limit / 2**20:.1f} MiB held)")
        for storage in made:
            weakref.finalize(storage, self._free, storage.nbytes())
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, size):
        self.live -= size

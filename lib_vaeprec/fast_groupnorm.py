"""The VAE's GroupNorms run as groupnorm_stats.group_norm: per-channel reductions, then one
normalising pass, instead of torch's CUDA kernel that gathers each group with one thread block.

Same results up to float rounding; on an H100 it roughly halves an eager SD decode at 2048²
(docs/benchmarks.md). CUDA only (where that kernel is slow), eager runs only (torch.compile writes its
own fused GroupNorm), and only where the host's GroupNorm computes nothing more than torch's (plain_layers).
"""
import torch

from . import forward_override
from .groupnorm_stats import group_norm
from .plain_layers import runs_plain

DEVICE_TYPES = ("cuda",)
# Below this many elements per (sample, group) torch's kernel is as fast or faster (H100: 0.19 ms
# against 0.27 at 2^18, 0.48 against 0.27 at 2^19; docs/benchmarks.md): the small latent-side maps.
MIN_GROUP_ELEMENTS = 2 ** 18


def applies(norm, x):
    return (x.device.type in DEVICE_TYPES and x.dim() >= 3 and x.shape[0] > 0
            and x[0].numel() // norm.num_groups > MIN_GROUP_ELEMENTS
            and runs_plain(norm, torch.nn.GroupNorm)
            and (not norm.affine or norm.weight.device == x.device))


class FastGroupNorms:
    """Installs the fast forward on every GroupNorm of a VAE; `remove` puts back what was there."""

    def __init__(self):
        self._installed = forward_override.Installed()

    def install(self, module):
        for sub in module.modules():
            if isinstance(sub, torch.nn.GroupNorm):
                self._installed.set(sub, lambda eager, norm=sub: _forward_of(norm, eager))

    def remove(self):
        self._installed.restore_all()


def _forward_of(norm, eager):
    def forward(x):
        return group_norm(norm, x) if applies(norm, x) else eager(x)
    return forward

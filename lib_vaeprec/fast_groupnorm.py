"""The VAE's GroupNorms run as groupnorm_stats.group_norm: per-channel reductions, then one
normalising pass, instead of torch's CUDA kernel that gathers each group with one thread block.

Where Triton runs (groupnorm_kernels.available), every 16-bit GroupNorm runs as its kernels instead (one
read for the statistics, one read and write to normalise), whatever the map's size.

Same results up to float rounding; on an H100 it roughly halves an eager SD decode at 2048²
(docs/benchmarks.md), with the decoder's maps kept channels_last from its first GroupNorm on (see
to_channels_last). CUDA only (where that kernel is slow), eager runs only (torch.compile writes its
own fused GroupNorm), and only where the host's GroupNorm computes nothing more than torch's (plain_layers).
"""
import torch

from . import forward_override, groupnorm_kernels
from .groupnorm_stats import group_norm
from .plain_layers import runs_plain
from .speed import is_channels_last

DEVICE_TYPES = ("cuda",)
# Below this many elements per (sample, group) torch's kernel is as fast or faster (H100: 0.19 ms
# against 0.27 at 2^18, 0.48 against 0.27 at 2^19; docs/benchmarks.md): the small latent-side maps.
MIN_GROUP_ELEMENTS = 2 ** 18
# 16-bit maps only: in float32 it was 6-10% faster but a 1024² decode peaked 1.3x higher (H100).
DTYPES = (torch.float16, torch.bfloat16)


def applies(norm, x):
    return (x.device.type in DEVICE_TYPES and x.dtype in DTYPES and x.dim() >= 3 and x.shape[0] > 0
            and x[0].numel() // norm.num_groups > MIN_GROUP_ELEMENTS
            and runs_plain(norm, torch.nn.GroupNorm)
            and (not norm.affine or norm.weight.device == x.device))


class FastGroupNorms:
    """Installs the fast forward on every GroupNorm of a VAE; `remove` puts back what was there."""

    def __init__(self):
        self._installed = forward_override.Installed()

    def install(self, module):
        decoder = getattr(module, "decoder", None)
        in_decoder = set(decoder.modules()) if decoder is not None else set()
        for sub in module.modules():
            if isinstance(sub, torch.nn.GroupNorm):
                # channels_last measured faster in the decoder only: the encoder's padded stride-2
                # downsamplers break the chain and each level paid the copy again (docs/benchmarks.md).
                self._installed.set(sub, lambda eager, norm=sub: _forward_of(norm, eager, norm in in_decoder))

    @property
    def installed(self):
        return bool(self._installed)

    def remove(self):
        self._installed.restore_all()


def _forward_of(norm, eager, channels_last):
    def forward(x):
        if x.device.type not in DEVICE_TYPES:
            return eager(x)                        # exactly the host's own GroupNorm elsewhere
        if kernels_apply(norm, x):
            return groupnorm_kernels.group_norm(norm, to_channels_last(x) if channels_last else x)
        if applies(norm, x):
            return group_norm(norm, to_channels_last(x) if channels_last else x)
        return _same_layout(eager(x), x)
    forward.vaeprec_plain = True                   # computes what the GroupNorm does (fused_blocks reads this)
    return forward


def kernels_apply(norm, x):
    """Where Triton runs (groupnorm_kernels): 16-bit maps of any size, in one stats pass and one pass."""
    return (groupnorm_kernels.available(x) and groupnorm_kernels.supported(x, norm.num_channels, norm.num_groups)
            and runs_plain(norm, torch.nn.GroupNorm)
            and (not norm.affine or norm.weight.device == x.device))


def to_channels_last(x):
    """16-bit 4-D maps on DEVICE_TYPES go channels_last (one copy, at the decoder's first GroupNorm, or
    where the tiled decoder's body starts): batch_norm keeps that layout, cuDNN's 16-bit convs take and
    return it without their NCHW<->NHWC transposes and the workspace those need, so the whole chain of
    resnets stays in it (measured faster and leaner, docs/benchmarks.md). Other maps are returned as is."""
    if x.device.type in DEVICE_TYPES and x.dtype in DTYPES and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _same_layout(y, x):
    """torch's GroupNorm returns contiguous maps; a small map keeps the channels_last chain going."""
    if y.dim() == 4 and is_channels_last(x):
        return y.contiguous(memory_format=torch.channels_last)
    return y

"""Large 16-bit convolutions on CUDA, run one sample and one band of rows at a time.

cuDNN's bf16/fp16 kernels work on channels_last (NHWC) data. Given the usual NCHW maps of the VAE,
cuDNN transposes input and output through a workspace as large as both maps together: measured on the
H100 at 1024², a full-resolution bf16 conv of the SD VAE takes 512 MiB of workspace for a 256 MiB
output, which keeps the bf16 decode peak at 0.79x the fp32 one instead of 0.5x. Run band by band, the
workspace is that of one band. The price is one more copy of each band in and out (measured about
+15% decode time), so this is an option ("low-memory convolutions"), off by default.

The result is the same convolution (same kernels, same accumulation) written into an NCHW output.
"""
import math

import torch
import torch.nn.functional as F

from . import forward_override
from .plain_layers import runs_plain

BAND_BYTES = 64 << 20         # input + output bytes of one band at most (about its cuDNN workspace)
MIN_BANDED_BYTES = 32 << 20   # smaller convs run whole
MIN_BANDS = 8
MIN_ROWS = 16


def bandable(conv, x):
    """Whether `conv(x)` is one this module runs banded (and gains from it)."""
    plain_conv = (runs_plain(conv) and conv.groups == 1 and conv.dilation == (1, 1)
                  and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))
    half_cuda_map = (x.is_cuda and x.dim() == 4 and x.is_contiguous()
                     and x.dtype in (torch.float16, torch.bfloat16) and conv.weight.dtype == x.dtype)
    return plain_conv and half_cuda_map and _bytes(conv, x[:1]) > MIN_BANDED_BYTES


def _bytes(conv, x):
    n, c, h, w = x.shape
    sh, sw = conv.stride
    return x.element_size() * n * (c * h * w + conv.out_channels * (h // sh) * (w // sw))


def banded_conv(conv, x):
    """conv(x), computed sample by sample and band by band of output rows."""
    n, _c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    bands = max(MIN_BANDS, math.ceil(_bytes(conv, x[:1]) / BAND_BYTES))
    rows = max(MIN_ROWS, math.ceil(out_h / bands))
    out = x.new_empty((n, conv.out_channels, out_h, out_w))
    for i in range(n):
        for o0 in range(0, out_h, rows):
            o1 = min(out_h, o0 + rows)
            a, b = o0 * sh - ph, (o1 - 1) * sh - ph + kh      # input rows read; outside the map: zeros
            band = x[i:i + 1, :, max(a, 0):min(b, h)]
            if a < 0 or b > h:
                band = F.pad(band, (0, 0, max(0, -a), max(0, b - h)))
            out[i:i + 1, :, o0:o1] = F.conv2d(band, conv.weight, conv.bias, conv.stride, (0, pw))
    return out


class BandedConvs:
    """Installs the banded forward on every Conv2d of a VAE's coders; `remove` puts back what was there."""

    def __init__(self):
        self._installed = forward_override.Installed()

    def install(self, module):
        for part in ("decoder", "encoder"):
            coder = getattr(module, part, None)
            if coder is None:
                continue
            for conv in coder.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    self._installed.set(conv, lambda eager, conv=conv: _forward_of(conv, eager))

    def remove(self):
        self._installed.restore_all()


def _forward_of(conv, eager):
    def forward(x):
        return banded_conv(conv, x) if bandable(conv, x) else eager(x)
    return forward

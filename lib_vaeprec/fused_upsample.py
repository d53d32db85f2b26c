"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, as one stride-2 transposed convolution.

Every decoder stage of the SD-family VAEs ends in `conv3x3(interpolate(x, scale_factor=2, "nearest"))`.
Run as written, it materialises the 4x larger upsampled map and convolves it: 9 multiply-adds per
output pixel and input channel. Each output pixel of that pair depends on only a 2x2 neighbourhood of
`x`, with weights that are sums of the 3x3 kernel's taps; so the same result comes from
`conv_transpose2d(x, K, stride=2, padding=1)` with a 4x4 kernel K built from the 3x3 one:
2.25x fewer multiply-adds, and no upsampled copy of the input in memory. Measured on the H100
(docs/benchmarks.md): 16% less peak memory in eager bf16 at 1024², and faster; under torch.compile
it is slower than what the compiler makes of the pair, so it is used only when not compiling. It is
used only for 16-bit maps on CUDA, where it was measured (see DEVICE_TYPES).

Along one axis (output 2j from inputs j-1, j; output 2j+1 from inputs j, j+1):
    y[2j]   = w0*x[j-1] + (w1+w2)*x[j]        ->  K[3] = w0, K[1] = w1+w2
    y[2j+1] = (w0+w1)*x[j] + w2*x[j+1]         ->  K[2] = w0+w1, K[0] = w2
The 2-D kernel is the outer combination of both axes. Kernels are summed in float32 and rounded to
the weight's dtype once.
"""
import torch
import torch.nn.functional as F

from . import forward_override, groupnorm_kernels
from .casting import version_of
from .plain_layers import runs_plain

# Where it was measured to pay: eager bf16 on CUDA (docs/benchmarks.md; fp16 takes the same kernels). It sums
# kernel taps, so results differ from the plain pair by rounding: elsewhere (float32, the CPU) the plain
# pair runs, and an fp32 decode is the plain VAE's bit for bit.
DEVICE_TYPES = ("cuda",)
DTYPES = (torch.float16, torch.bfloat16)
# TAPS[k, i] = 1 where tap i of the 3x3 kernel contributes to tap k of the 4x4 transposed kernel.
_TAPS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)


def transposed_kernel(weight):
    """[out, in, 3, 3] conv weight -> [in, out, 4, 4] conv_transpose2d weight of the same map."""
    taps = _TAPS.to(weight.device)
    kernel = torch.einsum("pa,qb,oiab->iopq", taps, taps, weight.float())
    return kernel.to(weight.dtype)


def upsample_conv(x, conv, kernel):
    """conv(nearest_2x(x)) through the transposed kernel; `conv` supplies the bias, added by Triton where
    it runs (torch adds a cuDNN conv's bias in a separate broadcast pass, slow on channels_last maps)."""
    if conv.bias is not None and groupnorm_kernels.available(x):
        return groupnorm_kernels.add_bias(F.conv_transpose2d(x, kernel, None, stride=2, padding=1), conv.bias)
    return F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)


def fusable(x, conv):
    """Whether the fused path computes what the upsampler's own forward would, here and now.

    Only for 16-bit maps on DEVICE_TYPES (see there). Weights on another device than x: sequential offload
    uploads them in the conv's own forward hooks, which the fused path would skip. Another dtype, or a host
    conv that casts or patches: its forward does more than F.conv2d."""
    return (x.device.type in DEVICE_TYPES and x.dtype in DTYPES
            and x.dtype == conv.weight.dtype and x.device == conv.weight.device
            and runs_plain(conv) and _is_3x3_same(conv) and not _too_large(x, conv))


def _too_large(x, conv):
    # A sample whose output has 2^31 elements or more (256 channels at 4096²): with the fused path a
    # 4096² decode on the H100 did not finish within 200 s (a slow non-cuDNN kernel, presumably); the
    # plain pair ran in about 6 s there.
    return conv.out_channels * 4 * x.shape[-2] * x.shape[-1] >= 2 ** 31


def _is_3x3_same(conv):
    # Checked at every call too: A1111's seamless "Tiling" option switches padding_mode to circular.
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def _parts(module):
    """The conv of an upsampler that is nearest-2x followed by that conv, else None."""
    conv = getattr(module, "conv", None)
    if not isinstance(conv, torch.nn.Conv2d) or not _is_3x3_same(conv):
        return None
    if hasattr(module, "use_conv"):               # diffusers Upsample2D
        plain = (module.use_conv and not module.use_conv_transpose and module.interpolate
                 and getattr(module, "norm", None) is None and module.name == "conv")
        return conv if plain else None
    if getattr(module, "with_conv", False):       # ldm/sgm/Forge Upsample
        return conv
    return None


class FusedUpsamplers:
    """Installs the fused forward on a decoder's upsamplers; `remove` puts back what was there.

    The 4x4 kernel is derived from the conv weight and kept while that weight tensor (and its
    version counter) is the same; a cast or a host reload makes a new one.
    """

    def __init__(self):
        self._installed = forward_override.Installed()
        self._kernels = {}        # upsampler -> (weight identity, kernel)

    def install(self, module):
        decoder = getattr(module, "decoder", None)
        if decoder is None:
            return
        for sub in decoder.modules():
            if _parts(sub) is not None:
                self._installed.set(sub, lambda eager, sub=sub: self._forward_of(sub, eager))

    def _forward_of(self, upsampler, eager):
        def forward(x, *args, **kwargs):
            if args or kwargs.get("output_size") is not None:
                return eager(x, *args, **kwargs)        # an explicit output size: the plain path
            conv = upsampler.conv
            if not fusable(x, conv):
                return eager(x, *args, **kwargs)
            return upsample_conv(x, conv, self._kernel(upsampler, conv.weight))
        return forward

    def _kernel(self, upsampler, weight):
        key = (weight.data_ptr(), version_of(weight), weight.dtype, weight.device)
        cached = self._kernels.get(upsampler)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, transposed_kernel(weight.detach()))
            self._kernels[upsampler] = cached
        return cached[1]

    def forget_kernels(self):
        """Drops the derived kernels (when the weights leave the GPU between calls)."""
        self._kernels.clear()

    @property
    def installed(self):
        return bool(self._installed)

    def remove(self):
        self._installed.restore_all()
        self._kernels.clear()

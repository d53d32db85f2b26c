"""The VAE's resnet and attention blocks with their GroupNorm+SiLU, conv biases and residual add fused
into Triton kernels (`groupnorm_kernels`), in whatever layout the map has (channels_last from each
coder's first block on).

A resnet block becomes: GroupNorm1+SiLU (stats pass + one read/write), conv1 without its bias, GroupNorm2+
SiLU over conv1's output plus its bias (written over that output), conv2 without its bias, the shortcut
conv without its bias, then one pass adding both biases and the shortcut (written over conv2's output).
The mid block's attention: its GroupNorm by the kernels, and V and the output projection folded into one
matrix (softmax rows sum to 1, so P (X Wv + bv) Wo + bo = P X (Wv Wo) + (bv Wo + bo)); the scores of a
chunk of queries as one fp32 product (tiling.attention's), made 16-bit probabilities by one softmax kernel:
faster than torch's fused kernel for the 512-wide head (docs/benchmarks.md).

Same results up to float rounding, each step in float32 before one rounding to the map's dtype. The fused
forward runs only when it computes what the block's own forward would: the block of a known class
(diffusers ResnetBlock2D / Attention, the ldm-family ResnetBlock / AttnBlock), called without a time
embedding, in eval mode, 16-bit on a device the kernels run on, its layers plain (plain_layers) with
their weights there in the map's dtype, and no hook or other forward on any of them (mixed measuring
its ranges, offload hooks, a tiled call replacing the norms): otherwise the block's own forward runs.
"""
import torch
import torch.nn.functional as F

from . import forward_override, groupnorm_kernels
from .casting import version_of
from .fast_groupnorm import to_channels_last
from .plain_layers import runs_plain
from .tiling import attention as banded_attention

RESNET_CLASSES = ("ResnetBlock2D", "ResnetBlock")
ATTENTION_CLASSES = ("Attention", "AttnBlock")
# Score chunks of the attention: this many times the map's own bytes at most (a 1024² decode's peak is
# about 96 times its mid-block map, so the chunks stay under it), and never more than MAX_WORK_BYTES.
WORK_PER_MAP_BYTES = 32
MAX_WORK_BYTES = 1 << 30
SCORE_BYTES = 6              # per query-key pair in a chunk: fp32 scores and 16-bit probabilities
# The maps go channels_last at the coder's first block (fast_groupnorm.to_channels_last says why). In the
# encoder too: with these blocks a 1024² encode took 17.6 ms so against 22.4 ms in the layout it came in,
# at 1030 against 1542 MiB peak (H200, docs/benchmarks.md).
ENCODER_CHANNELS_LAST = True


class FusedBlocks:
    """Installs the fused forwards on a VAE's resnets and mid-block attentions; `remove` puts back what
    was there. `ran` says whether a fused forward ran since `ran` was last reset (the call's stats)."""

    def __init__(self, kernels=groupnorm_kernels):
        self.kernels = kernels
        self._installed = forward_override.Installed()
        self._folded = {}          # attention module -> (weights' key, folded V/out weight and bias)
        self.ran = False

    def install(self, module):
        for part in ("decoder", "encoder"):
            coder = getattr(module, part, None)
            if coder is None:
                continue
            channels_last = part == "decoder" or ENCODER_CHANNELS_LAST
            for sub in coder.modules():
                name = type(sub).__name__
                if name in RESNET_CLASSES and _resnet_parts(sub) is not None:
                    self._installed.set(sub, lambda eager, sub=sub, cl=channels_last: self._resnet_forward(
                        sub, eager, cl))
                elif name in ATTENTION_CLASSES and banded_attention.parts_of(sub) is not None:
                    self._installed.set(sub, lambda eager, sub=sub, cl=channels_last: self._attention_forward(
                        sub, eager, cl))

    @property
    def installed(self):
        return bool(self._installed)

    def remove(self):
        self._installed.restore_all()
        self._folded.clear()

    def forget_weights(self):
        """Drops the folded attention weights (when the weights leave the GPU between calls)."""
        self._folded.clear()

    # ----- resnets -----
    def _resnet_forward(self, block, eager, channels_last):
        def forward(x, temb=None, *args, **kwargs):
            parts = _resnet_parts(block)
            if temb is not None or args or kwargs or parts is None or not self._ready(block, x, parts[:5]):
                return eager(x, temb, *args, **kwargs)
            self.ran = True
            x = to_channels_last(x) if channels_last else x
            norm1, conv1, norm2, conv2, shortcut, divisor = parts
            k = self.kernels
            h = k.group_norm(norm1, x, silu=True)
            h = conv1._conv_forward(h, conv1.weight, None)
            h = k.group_norm(norm2, h, silu=True, pre_bias=conv1.bias, out=h)
            h = conv2._conv_forward(h, conv2.weight, None)
            s = x if shortcut is None else shortcut._conv_forward(x, shortcut.weight, None)
            if not groupnorm_kernels.same_layout(h, s):
                s = s.contiguous(memory_format=_format_of(h))      # the residual pass reads both alike
            return k.residual(h, s, conv2.bias, shortcut.bias if shortcut is not None else None, divisor, out=h)
        return forward

    # ----- attention -----
    def _attention_forward(self, module, eager, channels_last):
        def forward(x, *args, **kwargs):
            parts = banded_attention.parts_of(module)
            layers = _attention_layers(parts) if parts is not None and parts.heads == 1 else None
            extra = args or any(v is not None for v in kwargs.values())
            if extra or layers is None or not self._ready(module, x, layers):
                return eager(x, *args, **kwargs)
            self.ran = True
            return self._attend(parts, to_channels_last(x) if channels_last else x)
        return forward

    def _attend(self, parts, x):
        b, c, height, width = x.shape
        normed = self.kernels.group_norm(parts.norm, x)
        tokens = normed.flatten(2).transpose(1, 2)             # (B, L, C); a view where x is channels_last
        q, k = (F.linear(tokens, *_linear(parts, name)) for name in ("q", "k"))
        weight, bias = self._folded_vo(parts)
        vo = F.linear(tokens, weight)
        work = min(MAX_WORK_BYTES, WORK_PER_MAP_BYTES * x.numel() * x.element_size())
        attended = self._attend_in_chunks(q, k, vo, work)
        out = attended.transpose(1, 2).reshape(b, c, height, width)     # channels_last (B, C, H, W) view
        residual = x if parts.residual else torch.zeros_like(x)
        if not groupnorm_kernels.same_layout(out, residual):
            out = out.contiguous(memory_format=_format_of(residual))
        return self.kernels.residual(out, residual, bias, None, parts.rescale, out=out)

    def _attend_in_chunks(self, q, k, v, work):
        """softmax(q kᵀ / sqrt(d)) v for (B, L, d) maps: the scores of a chunk of queries as one fp32 product
        (tiling.attention's), turned into 16-bit probabilities by one kernel, then one product with v. Where
        that product is not available, tiling.attention.attend's fused-kernel chunks."""
        if not banded_attention.fp32_scores_available(q):
            return banded_attention.attend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), work).squeeze(1)
        chunk = max(64, min(banded_attention.SDPA_CHUNK, work // (SCORE_BYTES * k.shape[1])))
        q = q * q.shape[-1] ** -0.5
        out = v.new_empty(q.shape[:2] + v.shape[2:])
        for b in range(q.shape[0]):
            kt = k[b].transpose(0, 1)
            for i in range(0, q.shape[1], chunk):
                probs = self.kernels.softmax(banded_attention.fp32_product(q[b, i:i + chunk], kt), v.dtype)
                torch.mm(probs, v[b], out=out[b, i:i + chunk])
        return out

    def _folded_vo(self, parts):
        """(Wv Wo, bv Wo + bo) in the weights' dtype, made in float32 once per weights."""
        (wv, bv), (wo, bo) = _linear(parts, "v"), _linear(parts, "out")
        key = tuple((t.data_ptr(), version_of(t), t.dtype, t.device) for t in (wv, wo) + tuple(
            t for t in (bv, bo) if t is not None))
        cached = self._folded.get(parts.module)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                weight = wo.float() @ wv.float()
                bias = (wo.float() @ bv.float() if bv is not None else 0) + (bo.float() if bo is not None else 0)
                if not torch.is_tensor(bias):
                    bias = torch.zeros(wo.shape[0], device=wo.device)
            cached = (key, (weight.to(wv.dtype), bias))
            self._folded[parts.module] = cached
        return cached[1]

    # ----- when -----
    def _ready(self, block, x, layers):
        """Whether the fused forward computes what `block`'s own forward would for x, here and now."""
        if block.training or not (groupnorm_kernels.available(x) and x.dim() == 4):
            return False
        if x.dtype not in groupnorm_kernels.DTYPES or not (x.is_contiguous() or _is_channels_last(x)):
            return False
        if _hooked(block, root=True):
            return False
        for layer in layers:
            if layer is None:
                continue
            if _hooked(layer) or not _weights_on(layer, x):
                return False
            if isinstance(layer, torch.nn.GroupNorm):
                if not (runs_plain(layer, torch.nn.GroupNorm) and layer.affine
                        and _power_of_two(layer.num_channels // layer.num_groups)):
                    return False
            elif isinstance(layer, torch.nn.Conv2d):
                if not (runs_plain(layer) and layer.padding_mode == "zeros"):
                    return False
            elif isinstance(layer, torch.nn.Linear):
                if type(layer).forward is not torch.nn.Linear.forward:
                    return False
        return True


def _resnet_parts(block):
    """(norm1, conv1, norm2, conv2, shortcut conv or None, output divisor) of a resnet this module can
    fuse, or None."""
    norm1, norm2 = getattr(block, "norm1", None), getattr(block, "norm2", None)
    conv1, conv2 = getattr(block, "conv1", None), getattr(block, "conv2", None)
    if not (isinstance(norm1, torch.nn.GroupNorm) and isinstance(norm2, torch.nn.GroupNorm)
            and isinstance(conv1, torch.nn.Conv2d) and isinstance(conv2, torch.nn.Conv2d)):
        return None
    if hasattr(block, "time_embedding_norm"):                 # diffusers ResnetBlock2D
        plain = (isinstance(getattr(block, "nonlinearity", None), torch.nn.SiLU)
                 and block.upsample is None and block.downsample is None
                 and block.time_embedding_norm in ("default", "group") and not block.up and not block.down)
        if not plain:
            return None
        shortcut, divisor = block.conv_shortcut, float(block.output_scale_factor)
    else:                                                     # ldm/sgm, Forge, reForge ResnetBlock
        swish = getattr(block, "swish", None)                 # reForge: nn.SiLU; A1111/Forge: a function
        if swish is not None and not isinstance(swish, torch.nn.SiLU):
            return None
        if conv1.in_channels == conv2.out_channels:
            shortcut = None
        elif getattr(block, "use_conv_shortcut", False):
            shortcut = getattr(block, "conv_shortcut", None)
        else:
            shortcut = getattr(block, "nin_shortcut", None)
        if conv1.in_channels != conv2.out_channels and not isinstance(shortcut, torch.nn.Conv2d):
            return None
        divisor = 1.0
    if shortcut is not None and not isinstance(shortcut, torch.nn.Conv2d):
        return None
    return norm1, conv1, norm2, conv2, shortcut, divisor


def _attention_layers(parts):
    """The norm and the four projections of a single-head attention, or None for an output we do not know."""
    m = parts.module
    if parts.channels_first:
        return [parts.norm, m.q, m.k, m.v, m.proj_out]
    if len(m.to_out) < 1 or not isinstance(m.to_out[0], torch.nn.Linear):
        return None
    if len(m.to_out) > 1 and not isinstance(m.to_out[1], torch.nn.Dropout):
        return None
    return [parts.norm, m.to_q, m.to_k, m.to_v, m.to_out[0]]


def _linear(parts, name):
    """(weight as a (out, in) matrix, bias) of the q, k, v or output projection."""
    m = parts.module
    if parts.channels_first:
        layer = getattr(m, "proj_out" if name == "out" else name)
        return layer.weight.flatten(1), layer.bias
    layer = m.to_out[0] if name == "out" else getattr(m, "to_" + name)
    return layer.weight, layer.bias


def _hooked(module, root=False):
    """Hooks, or a forward set on the instance by anyone but this module (the root's own is ours)."""
    if module._forward_hooks or module._forward_pre_hooks:
        return not root or bool(module._forward_hooks) or _foreign_pre_hooks(module)
    if not root and "forward" in module.__dict__ and not getattr(module.forward, "vaeprec_plain", False):
        return True
    return False


def _foreign_pre_hooks(module):
    # mixed casts each block's input with a pre-hook on the block itself: that one keeps the result
    return any(not getattr(hook, "vaeprec_input_cast", False) for hook in module._forward_pre_hooks.values())


def _weights_on(layer, x):
    return all(p.device == x.device and p.dtype == x.dtype for p in layer.parameters(recurse=False))


def _power_of_two(n):
    return n > 0 and n & (n - 1) == 0


def _is_channels_last(x):
    return x.is_contiguous(memory_format=torch.channels_last)


def _format_of(x):
    return torch.channels_last if _is_channels_last(x) and not x.is_contiguous() else torch.contiguous_format

"""`mixed`: each block of the coder in the most precise 16-bit format that holds its activations.

fp16 keeps 3 more bits than bf16 (measured 64 dB against fp32 for an SD decode, bf16 46 dB) at bf16's
speed, but holds values only up to 65504: some VAEs (SDXL's is the known case) go past that in their
later blocks and give NaN, black images. So the blocks (the stages of tiling.layout: the first conv, each
resnet, attention and up/downsampler, the output layers; the quant convs) are measured, and each runs in
fp16 where its largest activation, times a margin, fits fp16, else in the safe format (bf16, or fp32 where
the device has no bf16).

The ranges are measured on the first call of each kind (decode, encode) for the VAE's weights, which runs
in the safe format with hooks that keep each block's largest finite value (no extra pass): a NaN latent from
the sampler measures nothing, so it changes nothing for later calls. They are measured
again, and can only grow, on any call whose result came out NaN/Inf: that call's failed images are redone
in the safe format with the hooks on, so a block that overflowed moves to the safe format from then on.
"""
import contextlib

import torch

from .dtypes import name_of
from .tiling.layout import layout_of

FP16_LARGEST = 65504.0
MARGIN = 4.0       # a block runs in fp16 while its largest activation times this stays under FP16_LARGEST


def blocks_of(module, kind):
    """[(block name, [modules])] of the decoder (kind "decode") or encoder ("encode"), in the order they run;
    each block gets one dtype. The block's name is its first module's name in `module`."""
    names = {id(m): n for n, m in module.named_modules()}
    coder = getattr(module, "decoder" if kind == "decode" else "encoder", None)
    quant = getattr(module, "post_quant_conv" if kind == "decode" else "quant_conv", None)
    layout = layout_of(module, kind)
    if coder is None:
        return []
    if layout is None:
        groups = [[coder]]
    else:
        groups = [[m] for _, m in layout.stages] + [[layout.norm_out, layout.conv_out]]
    if isinstance(quant, torch.nn.Module):
        groups = [[quant]] + groups if kind == "decode" else groups + [[quant]]
    return [(names[id(group[0])], group) for group in groups]


class BlockPrecision:
    """The measured ranges of one VAE's blocks, the dtypes chosen from them, and the hooks that cast each
    block's input to its dtype."""

    def __init__(self, module):
        self.module = module
        self.ranges = {}         # kind -> {block name: largest |activation| seen}
        self._blocks = {}        # kind -> blocks_of(module, kind): the structure does not change
        self._plans = {}         # (kind, fast, safe) -> (plan, {module name: dtype}), until the ranges change
        self._casts = []         # hook handles
        self._installed = None   # the plan the hooks cast for

    def blocks(self, kind):
        if kind not in self._blocks:
            self._blocks[kind] = blocks_of(self.module, kind)
        return self._blocks[kind]

    def forget(self):
        """The weights changed (the host loaded others): measure again."""
        self.ranges.clear()
        self._plans.clear()

    def plan(self, kind, fast, safe):
        """({block name: dtype}, {module name: dtype} for casting the weights) from the ranges, or ({}, {})
        before they are measured."""
        ranges = self.ranges.get(kind)
        if ranges is None:
            return {}, {}
        key = (kind, fast, safe)
        if key not in self._plans:
            plan = {name: fast if ranges.get(name, float("inf")) * MARGIN < FP16_LARGEST else safe
                    for name, _ in self.blocks(kind)}
            names = {id(m): n for n, m in self.module.named_modules()}
            self._plans[key] = (plan, {names[id(m)]: plan[name] for name, group in self.blocks(kind) for m in group})
        return self._plans[key]

    def install(self, kind, plan):
        """Each block's input cast to the block's dtype (its weights already are)."""
        if self._installed is plan:
            return
        self.remove()
        for name, group in self.blocks(kind):
            self._casts.append(group[0].register_forward_pre_hook(_cast_inputs(plan[name])))
        self._installed = plan

    def remove(self):
        for handle in self._casts:
            handle.remove()
        self._casts.clear()
        self._installed = None

    @contextlib.contextmanager
    def measuring(self, kind):
        """Keeps the largest |value| that each block takes in or gives out (its submodules' too) while the
        body runs, and adds it to the ranges (which only grow)."""
        largest, handles = {}, []

        def keep(name, value):
            for t in (value if isinstance(value, (tuple, list)) else (value,)):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    m = _largest_finite(t)
                    largest[name] = m if name not in largest else torch.maximum(largest[name], m)

        for name, group in self.blocks(kind):
            handles.append(group[0].register_forward_pre_hook(lambda m, args, name=name: keep(name, args)))
            for top in group:
                for sub in top.modules():
                    handles.append(sub.register_forward_hook(lambda m, a, out, name=name: keep(name, out)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        # One sync per block, after the call. A block that saw no finite value (every image NaN from its
        # latent on) is not measured by this call; a call that measured no block leaves the kind unmeasured.
        measured = {name: float(value) for name, value in largest.items() if float(value) >= 0}
        if not measured:
            return
        ranges = self.ranges.setdefault(kind, {})
        for name, value in measured.items():
            ranges[name] = max(ranges.get(name, 0.0), value)
        self._plans = {key: plan for key, plan in self._plans.items() if key[0] != kind}

    def first_dtype(self, kind, plan):
        """The dtype of the block that takes the call's input."""
        return plan[self.blocks(kind)[0][0]]

    def label(self, plan, fast):
        """`fp16 11/16 blocks`: how many blocks ran in the fast format."""
        return f"{name_of(fast)} {sum(d == fast for d in plan.values())}/{len(plan)} blocks" if plan else ""


def _largest_finite(t):
    """The largest finite |value| of `t` (-1 where it has none): a NaN or Inf from the sampler (or one the
    call made) is no measure of the block's range; max(0.0, nan) would have recorded 0, every block fp16."""
    # without a copy of the map (abs() would make one: memory a tiled call's plan does not have); only a map
    # that holds NaN/Inf pays for the masked pass (measuring calls alone come here)
    low, high = torch.aminmax(t.detach())
    largest = torch.maximum(low.abs(), high.abs()).float()
    if bool(torch.isfinite(largest)):
        return largest
    magnitude = t.detach().abs()
    return magnitude.masked_fill_(~torch.isfinite(magnitude), -1.0).amax().float()


def _cast_inputs(dtype):
    def hook(module, args):
        return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    hook.vaeprec_input_cast = True     # only casts the input: fused_blocks may still run the block
    return hook

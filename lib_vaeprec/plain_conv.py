"""Whether a Conv2d module computes exactly `F.conv2d(x, conv.weight, conv.bias, ...)` right now.

The layers that run a conv another way (fused upsampling, banded convs) read `conv.weight` directly,
so they must know the host's conv does nothing more. The hosts' Conv2d subclasses cast or patch
weights only when a flag says so:
- Forge, backend/operations.py, ForgeOperations.Conv2d.forward: `parameters_manual_cast` casts;
  get_weight_and_bias() applies `forge_online_loras` and `scale_weight`.
- reForge, ldm_patched/modules/ops.py, disable_weight_init.Conv2d.forward: `ldm_patched_cast_weights`,
  `weight_function`, `bias_function`.
A subclass we do not know is never treated as plain.
"""
import torch

_FLAGS = ("parameters_manual_cast", "forge_online_loras", "scale_weight",
          "ldm_patched_cast_weights", "weight_function", "bias_function")


def runs_plain(conv):
    if not isinstance(conv, torch.nn.Conv2d):
        return False
    if type(conv).forward is torch.nn.Conv2d.forward:
        return True
    known = any(hasattr(conv, flag) for flag in _FLAGS)
    return known and not any(getattr(conv, flag, None) for flag in _FLAGS)

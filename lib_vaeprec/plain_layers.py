"""Whether a Conv2d or GroupNorm module computes exactly its torch base class's function right now.

The layers that run a conv or a GroupNorm another way (fused upsampling, banded convs, fast GroupNorm)
read `weight` and `bias` directly, so they must know the host's layer does nothing more. The hosts'
subclasses cast or patch weights only when a flag says so:
- Forge, backend/operations.py, ForgeOperations.Conv2d / .GroupNorm forward: `parameters_manual_cast`
  casts; Conv2d's get_weight_and_bias() applies `forge_online_loras` and `scale_weight`.
- reForge, ldm_patched/modules/ops.py, disable_weight_init.Conv2d / .GroupNorm forward:
  `ldm_patched_cast_weights`, `weight_function`, `bias_function`.
A subclass we do not know is never treated as plain.
"""
import torch

_FLAGS = ("parameters_manual_cast", "forge_online_loras", "scale_weight",
          "ldm_patched_cast_weights", "weight_function", "bias_function")


def runs_plain(module, base=torch.nn.Conv2d):
    if not isinstance(module, base):
        return False
    if type(module).forward is base.forward:
        return True
    known = any(hasattr(module, flag) for flag in _FLAGS)
    return known and not any(getattr(module, flag, None) for flag in _FLAGS)

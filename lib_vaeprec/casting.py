"""Casting a VAE's weights to a dtype, and putting the host's own weights back bit for bit.

The originals are kept on the CPU (casting is about saving accelerator memory). Each cast
parameter's version counter is remembered: if the host writes new weights into the module behind
our back (a VAE reload does `load_state_dict`, an in-place write that bumps the counter), the
host's new values are adopted as the originals instead of being overwritten by a stale copy.
A plain `.to(dtype)` or `.to(device)` by the host leaves the counter alone: the originals stay valid.
"""
import torch

from .tensor_slots import get as _get, set_data as _set_data, slots

NORM_TYPES = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
# Output convolutions kept in fp32 by the mixed policy (same names in diffusers, ldm, sgm and the Forge backends).
MIXED_FP32_NAMES = ("decoder.conv_out", "quant_conv")   # exact names, or ending in "." + name


def version_of(tensor):
    # Tensors made under torch.inference_mode() (Forge builds its models there) keep no counter:
    # for them an in-place reload is only seen through the host adapters' load hooks.
    return None if tensor.is_inference() else tensor._version


def fp32_module_names(module):
    """Names of the submodules the mixed policy keeps in fp32."""
    names = set()
    for name, sub in module.named_modules():
        if isinstance(sub, NORM_TYPES) or name in MIXED_FP32_NAMES or name.endswith(
                tuple("." + n for n in MIXED_FP32_NAMES)):
            names.add(name)
    return names


class WeightCast:
    def __init__(self, module):
        self.module = module
        self._originals = {}     # slot -> original tensor (CPU copy or the original CPU tensor)
        self._cast_prints = {}   # slot -> version counter right after we cast it
        self._plan_key, self._plan = None, None   # (dtype, keep_fp32) -> [(slot, target dtype)]

    @property
    def active(self):
        return bool(self._originals)

    def _adopt_host_changes(self):
        for slot, print_ in list(self._cast_prints.items()):
            if version_of(_get(slot)) != print_:
                # The host rewrote or recast this tensor: what it holds now is the host's truth.
                del self._cast_prints[slot]
                self._originals.pop(slot, None)

    def cast(self, dtype, keep_fp32=()):
        """Casts floating weights to `dtype`; submodules named in keep_fp32 to float32."""
        self._adopt_host_changes()
        with torch.no_grad():
            for slot, target in self._plan_for(dtype, frozenset(keep_fp32)):
                tensor = _get(slot)
                if tensor.dtype == target:
                    continue
                if slot in self._originals:
                    # Re-cast from the original, not from whatever the host turned our copy into.
                    source = self._originals[slot].to(tensor.device)
                else:
                    source = tensor.data
                    self._originals[slot] = source if source.device.type == "cpu" else source.to("cpu")
                _set_data(slot, source.to(target))
                self._cast_prints[slot] = version_of(_get(slot))

    def _plan_for(self, dtype, keep_fp32):
        # The module's structure does not change between calls: walk it once per (dtype, keep) choice.
        if self._plan_key != (dtype, keep_fp32):
            kept = {slot for name, sub in self.module.named_modules() if name in keep_fp32 for slot in slots(sub, floating_only=True)}
            self._plan = [(slot, torch.float32 if slot in kept else dtype) for slot in slots(self.module, floating_only=True)]
            self._plan_key = (dtype, keep_fp32)
        return self._plan

    def source_dtypes(self):
        """The dtypes of the weights as the host has them: the originals where we cast, else the module's."""
        return {original.dtype for original in self._originals.values()} | {
            _get(slot).dtype for slot in slots(self.module, floating_only=True) if slot not in self._originals}

    def restore(self):
        """Puts the original tensors back, on whatever device the host has the module now."""
        self._adopt_host_changes()
        with torch.no_grad():
            for slot, original in self._originals.items():
                device = _get(slot).device
                _set_data(slot, original if original.device == device else original.to(device))
        self._originals.clear()
        self._cast_prints.clear()

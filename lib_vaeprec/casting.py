"""Casting a VAE's weights to a dtype, and putting the host's own weights back bit for bit.

The originals are kept on the CPU (casting is about saving accelerator memory). Each cast
parameter's version counter is remembered: if the host writes new weights into the module behind
our back (a VAE reload does `load_state_dict`, an in-place write that bumps the counter), the
host's new values are adopted as the originals instead of being overwritten by a stale copy.
A plain `.to(dtype)` or `.to(device)` by the host leaves the counter alone: the originals stay valid.
"""
import torch

from .tensor_slots import get as _get, set_data as _set_data, slots


def version_of(tensor):
    # Tensors made under torch.inference_mode() (Forge builds its models there) keep no counter:
    # for them an in-place reload is only seen through the host adapters' load hooks.
    return None if tensor.is_inference() else tensor._version


class WeightCast:
    def __init__(self, module):
        self.module = module
        self._originals = {}     # slot -> original tensor (CPU copy or the original CPU tensor)
        self._cast_prints = {}   # slot -> version counter right after we cast it
        self._plan_key, self._plan = None, None   # (dtype, per-module dtypes) -> [(slot, target dtype)]
        self.generation = 0      # how many times the host's own new weights were adopted

    @property
    def active(self):
        return bool(self._originals)

    def adopt_host_changes(self):
        adopted = False
        for slot, print_ in list(self._cast_prints.items()):
            if version_of(_get(slot)) != print_:
                # The host rewrote or recast this tensor: what it holds now is the host's truth.
                del self._cast_prints[slot]
                self._originals.pop(slot, None)
                adopted = True
        self.generation += adopted

    def cast(self, dtype, per_module=None):
        """Casts floating weights to `dtype`; the submodules named in `per_module` ({name: dtype}) to theirs."""
        self.adopt_host_changes()
        with torch.no_grad():
            for slot, target in self._plan_for(dtype, frozenset((per_module or {}).items())):
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

    def _plan_for(self, dtype, per_module):
        # The module's structure does not change between calls: walk it once per choice of dtypes.
        if self._plan_key != (dtype, per_module):
            chosen = dict(per_module)
            targets = {slot: chosen[name] for name, sub in self.module.named_modules() if name in chosen
                       for slot in slots(sub, floating_only=True)}
            self._plan = [(slot, targets.get(slot, dtype)) for slot in slots(self.module, floating_only=True)]
            self._plan_key = (dtype, per_module)
        return self._plan

    def source_dtypes(self):
        """The dtypes of the weights as the host has them: the originals where we cast, else the module's."""
        return {original.dtype for original in self._originals.values()} | {
            _get(slot).dtype for slot in slots(self.module, floating_only=True) if slot not in self._originals}

    def restore(self):
        """Puts the original tensors back, on whatever device the host has the module now."""
        self.adopt_host_changes()
        with torch.no_grad():
            for slot, original in self._originals.items():
                device = _get(slot).device
                _set_data(slot, original if original.device == device else original.to(device))
        self._originals.clear()
        self._cast_prints.clear()

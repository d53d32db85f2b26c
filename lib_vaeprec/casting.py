"""Casting a VAE's weights to a dtype, and handing back what the caller last put there.

The originals are kept on the CPU (casting is about saving accelerator memory). Each cast parameter's
version counter is remembered: if the host writes new weights into the module behind our back (a VAE
reload does `load_state_dict`, an in-place write that bumps the counter), the host's new values are
adopted as the originals instead of being overwritten by a stale copy. A `.to(device)` by the host leaves
the counter alone: the originals stay valid, and go back to wherever the module is.

A web UI recasts its VAE to its own record of the dtype (A1111 on every encode), which its adapter holds at
ours: there a recast is undone by casting from the originals again. A library caller (`follow_caller`)
changes the module on purpose, and what it last did is what it gets back:
- `load_state_dict`, on the VAE or any part of it: each module's own originals go back just before it loads
  (a load pre-hook), so new values load unrounded, at the caller's dtype; the next call casts them again.
- `.to(dtype)`, `.half()`, `.double()`...: the module's `_apply` is shadowed while weights are cast, and a
  conversion that changes the dtype of a cast weight gets the originals back first: it converts the
  caller's weights, not our copies. (A conversion to the dtype the cast weights already have changes nothing
  and is no choice.) One on a submodule shows as a weight no longer at the dtype we cast it to: the
  original, converted to the caller's dtype, is taken instead.
- an in-place write into a cast weight (`p.mul_()` under no_grad, `p.copy_()`, `p.detach().add_()` move its
  version counter; a write through `p.data` does not, and is found by comparing values when the weights
  are handed back): the written values are kept, at the weight's own dtype (they were written into the
  cast copy, so they are rounded to it).
"""
import contextlib

import torch

from .tensor_slots import get as _get, set_data as _set_data, slots


def version_of(tensor):
    # Tensors made under torch.inference_mode() (Forge builds its models there) keep no counter:
    # for them an in-place reload is only seen through the host adapters' load hooks.
    return None if tensor.is_inference() else tensor._version


class WeightCast:
    def __init__(self, module, follow_caller=False, lock=None):
        self.module = module
        self.follow_caller = follow_caller
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._originals = {}     # slot -> original tensor (CPU copy or the original CPU tensor)
        self._cast_prints = {}   # slot -> (version counter, dtype) right after we cast it
        self._plan_key, self._plan = None, None   # (dtype, per-module dtypes) -> [(slot, target dtype)]
        self.generation = 0      # how many times the host's own new weights were adopted
        self._watches = {}       # follow_caller, while weights are cast: owner module -> its load pre-hook
        self._shadowed_apply = None   # follow_caller, while weights are cast: (our _apply, what it shadows)

    @property
    def active(self):
        return bool(self._originals)

    def adopt_host_changes(self):
        adopted = False
        for slot, (print_, dtype) in list(self._cast_prints.items()):
            tensor = _get(slot)
            if version_of(tensor) != print_:
                # The host rewrote this tensor: what it holds now is the host's truth (for a library caller,
                # at the weight's own dtype).
                if self.follow_caller:
                    self._hand_back(slot, tensor.to(self._originals[slot].dtype))
                else:
                    self._forget(slot)
                adopted = True
            elif self.follow_caller and tensor.dtype != dtype:
                # The caller converted this weight: its original, at the caller's dtype.
                self._hand_back(slot, self._originals[slot].to(tensor.device, tensor.dtype))
        self.generation += adopted

    def cast(self, dtype, per_module=None):
        """Casts floating weights to `dtype`; the submodules named in `per_module` ({name: dtype}) to theirs."""
        with self._lock:
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
                    self._cast_prints[slot] = (version_of(_get(slot)), target)
            if self.follow_caller and self._originals:
                self._watch()

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
        with self._lock:
            self.adopt_host_changes()
            with torch.no_grad():
                for slot, original in list(self._originals.items()):
                    tensor = _get(slot)
                    if self.follow_caller and not _holds_cast_of(tensor, original):
                        original = tensor.to(original.dtype)     # written through .data: the caller's values
                    self._hand_back(slot, original)
            self._originals.clear()
            self._cast_prints.clear()
            self._unwatch()

    # ----- handing weights back -----
    def _forget(self, slot):
        self._cast_prints.pop(slot, None)
        self._originals.pop(slot, None)

    def _hand_back(self, slot, value):
        """The slot holds `value` (the caller's), on the module's device, and is no longer ours."""
        device = _get(slot).device
        with torch.no_grad():
            _set_data(slot, value if value.device == device else value.to(device))
        self._forget(slot)

    def _restore_own(self, module):
        """The originals of `module`'s own weights back (before it loads new ones)."""
        with self._lock:
            self.adopt_host_changes()
            owned = [slot for slot in self._originals if slot[0] is module]
            for slot in owned:
                self._hand_back(slot, self._originals[slot])
            self.generation += bool(owned)

    # ----- following a library caller's changes while weights are cast -----
    def _watch(self):
        for owner in {slot[0] for slot in self._originals} - set(self._watches):
            self._watches[owner] = owner._register_load_state_dict_pre_hook(
                lambda module, *args: self._restore_own(module), with_module=True)
        if self._shadowed_apply is not None:
            return
        previous = self.module.__dict__.get("_apply")
        call_through = previous if previous is not None else self.module._apply

        def _apply(fn, *args, **kwargs):
            with self._lock:
                if self._converts_dtype(fn):
                    self.restore()      # the caller converts its own weights, not our copies
                return call_through(fn, *args, **kwargs)
        _apply.vae_precision_cast = self
        self.module._apply = _apply
        self._shadowed_apply = (_apply, previous)

    def _unwatch(self):
        for handle in self._watches.values():
            handle.remove()
        self._watches.clear()
        if self._shadowed_apply is not None:
            ours, previous = self._shadowed_apply
            if self.module.__dict__.get("_apply") is ours:       # else wrapped since: left, passing through
                if previous is None:
                    del self.module.__dict__["_apply"]
                else:
                    self.module._apply = previous
            self._shadowed_apply = None

    def _converts_dtype(self, fn):
        """Whether a conversion `fn` (what Module._apply runs on each tensor) changes the dtype of a cast
        weight: tried on an empty tensor of each dtype we cast to. A conversion to the dtype every cast weight
        already has changes nothing the caller can see (`vae.dtype` says it already) and is no choice:
        diffusers' SDXL pipelines undo their own upcast of an fp16-looking VAE that way."""
        for dtype in {cast_dtype for _, cast_dtype in self._cast_prints.values()}:
            try:
                converted = fn(torch.empty(0, dtype=dtype))
            except Exception:  # noqa: BLE001 - a conversion that cannot take it: not a dtype conversion
                continue
            if isinstance(converted, torch.Tensor) and converted.dtype != dtype:
                return True
        return False


def _holds_cast_of(tensor, original):
    """Whether `tensor` still holds the cast of `original` we made (no write through `.data` since)."""
    ours = original.to(tensor.device).to(tensor.dtype)
    return torch.equal(ours, tensor) or bool(torch.isnan(ours).any() and torch.allclose(
        ours, tensor, rtol=0, atol=0, equal_nan=True))

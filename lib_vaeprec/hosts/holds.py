"""Keeping one host attribute (A1111's `devices.dtype_vae`, Forge's `vae.vae_dtype`) equal to the dtype
the extension runs the VAE in, and giving the host its own value back afterwards.

The host's code reads these attributes to cast the VAE or its inputs; if they disagreed with ours, the host
would recast the weights behind our back (A1111 does `first_stage_model.to(devices.dtype_vae)` on every encode).
"""
import weakref

_UNSET = object()


class ValueHold:
    def __init__(self, owner, attr, on_set=None):
        self._owner = weakref.ref(owner)
        self.attr = attr
        self.on_set = on_set          # called with the owner after each write (e.g. to drop a cached size)
        self.host_value = None
        self._held = _UNSET

    @property
    def holding(self):
        return self._held is not _UNSET

    def _write(self, owner, value):
        setattr(owner, self.attr, value)
        if self.on_set is not None:
            self.on_set(owner)

    def hold(self, value):
        owner = self._owner()
        if owner is None:
            return
        current = getattr(owner, self.attr)
        if not self.holding or current != self._held:
            # First hold, or the host changed the value while we held it (A1111's NaN fallback sets
            # devices.dtype_vae itself): what it holds now is the host's value to give back later.
            self.host_value = current
        if current != value:
            self._write(owner, value)
        self._held = value

    def release(self):
        owner = self._owner()
        if self.holding and owner is not None and getattr(owner, self.attr) == self._held \
                and self.host_value != self._held:
            self._write(owner, self.host_value)
        self._held = _UNSET

"""Keeping one host attribute (A1111's `devices.dtype_vae`, Forge's `vae.vae_dtype`) equal to the dtype
the extension runs the VAE in, and giving the host its own value back afterwards.

The host's code reads these attributes to cast the VAE or its inputs; if they disagreed with ours, the host
would recast the weights behind our back (A1111 does `first_stage_model.to(devices.dtype_vae)` on every encode).
"""
import weakref

_UNSET = object()


class ValueHold:
    def __init__(self, owner, attr, on_set=None, host_choice=None):
        self._owner = weakref.ref(owner)
        self.attr = attr
        self.on_set = on_set          # called with the owner after each write (e.g. to drop a cached size)
        # Where the record was written by the host's load-time choice, which the adapter hooks (Forge and
        # reForge set vae.vae_dtype from vae_dtype() when they build the VAE): host_choice(owner) tells the
        # host's own value, instead of the value found.
        self.host_choice = host_choice
        self.host_value = None
        self._ours = _UNSET           # the value we wrote, while it stands

    @property
    def owner(self):
        return self._owner()

    @property
    def holding(self):
        return self._ours is not _UNSET

    def value(self):
        owner = self._owner()
        return None if owner is None else getattr(owner, self.attr)

    def _write(self, owner, value):
        setattr(owner, self.attr, value)
        if self.on_set is not None:
            self.on_set(owner)

    def _own_value(self, owner):
        return self.host_choice(owner) if self.host_choice is not None else self.host_value

    def _claim(self, owner):
        """The value found; remembers it as the host's unless it is one we wrote."""
        current = getattr(owner, self.attr)
        if self._ours is _UNSET or current != self._ours:
            # First hold, or the host changed the value while we held it (A1111's NaN fallback sets
            # devices.dtype_vae itself): what it holds now is the host's value to give back later.
            self.host_value = current
        return current

    def hold(self, value):
        owner = self._owner()
        if owner is None:
            return
        if self._claim(owner) != value:
            self._write(owner, value)
        self._ours = value

    def rest_at(self, value):
        """Sets the value the host loads weights at while the extension picks the dtype; like `hold`, it is
        not taken for the host's own value."""
        self.hold(value)

    def release(self):
        """Gives the host its own value back (unless the host changed it meanwhile: then that stays)."""
        owner = self._owner()
        if owner is None:
            self._ours = _UNSET
            return
        current = getattr(owner, self.attr)
        if self._ours is not _UNSET and current != self._ours:
            self.host_value = current          # the host's own change stays
        elif self._ours is not _UNSET or self.host_choice is not None:
            own = self._own_value(owner)
            if own is not None and own != current:
                self._write(owner, own)
        self._ours = _UNSET

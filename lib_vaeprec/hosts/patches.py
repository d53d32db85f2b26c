"""Host functions (and the odd host attribute) the extension replaces, and putting the very same objects back
on unload."""
import functools
import logging

log = logging.getLogger("vae_precision")


class Patches:
    def __init__(self):
        self._applied = []   # (owner, name, original, wrapper, state)

    def wrap(self, owner, name, around):
        """Replaces owner.name with a function calling around(original, *args, **kwargs)."""
        original = getattr(owner, name, None)
        if original is None:
            log.warning("VAE Precision: %s.%s not found; that hook point is skipped",
                        getattr(owner, "__name__", owner), name)
            return False
        state = {"active": True}

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if not state["active"]:
                return original(*args, **kwargs)
            return around(original, *args, **kwargs)

        wrapper.vae_precision_original = original
        setattr(owner, name, wrapper)
        self._applied.append((owner, name, original, wrapper, state))
        return True

    def replace(self, owner, name, value):
        """Sets owner.name to `value`; restore_all puts the host's own object back."""
        original = getattr(owner, name)
        setattr(owner, name, value)
        self._applied.append((owner, name, original, value, {"active": True}))

    def restore_all(self):
        for owner, name, original, wrapper, state in reversed(self._applied):
            # If another extension wrapped over ours, taking ours out would drop theirs: our layer then
            # stays in their chain, but passes every call straight through.
            state["active"] = False
            if getattr(owner, name, None) is wrapper:
                setattr(owner, name, original)
        self._applied.clear()

    def __len__(self):
        return len(self._applied)

"""Replacing a module's forward on the instance for a while, and putting back exactly what was there."""


def install(module, forward):
    """Sets `module.forward`; returns what the instance held before (None: the class's forward)."""
    previous = module.__dict__.get("forward")
    module.forward = forward
    return previous


def restore(module, previous):
    if previous is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = previous


class Replaced:
    """`with Replaced(module, fn):` runs the body with `fn` as the module's forward."""

    def __init__(self, module, forward):
        self.module, self.forward = module, forward

    def __enter__(self):
        self.previous = install(self.module, self.forward)

    def __exit__(self, *exc):
        restore(self.module, self.previous)


class Installed:
    """Forwards set on several modules for as long as an option is on; `restore_all` puts back what
    each instance held before."""

    def __init__(self):
        self._previous = {}      # module -> the instance forward it had before (or None)

    def __contains__(self, module):
        return module in self._previous

    def __bool__(self):
        return bool(self._previous)

    def set(self, module, make_forward):
        """Installs `make_forward(current forward)` once per module."""
        if module not in self._previous:
            self._previous[module] = install(module, make_forward(module.forward))

    def restore_all(self):
        for module, previous in self._previous.items():
            restore(module, previous)
        self._previous.clear()

"""A module's parameters and buffers as slots (owner, dict name, key) that can be read and re-pointed.

Parameters are re-pointed through `.data`, so the Parameter objects the host may hold stay the same.
"""


def slots(module, recurse=True, floating_only=False):
    """Every tensor slot of `module` (of its submodules too with recurse), each tensor once (tied weights)."""
    seen = set()
    for owner in (module.modules() if recurse else [module]):
        for store in ("_parameters", "_buffers"):
            for key, tensor in getattr(owner, store).items():
                if tensor is None or id(tensor) in seen or (floating_only and not tensor.is_floating_point()):
                    continue
                seen.add(id(tensor))
                yield owner, store, key


def get(slot):
    owner, store, key = slot
    return getattr(owner, store)[key]


def set_data(slot, value):
    owner, store, key = slot
    if store == "_parameters":
        getattr(owner, store)[key].data = value
    else:
        getattr(owner, store)[key] = value

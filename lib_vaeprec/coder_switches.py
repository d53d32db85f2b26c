"""diffusers' own switches for splitting a VAE call, and which of them a call of the engine obeys.

`vae.enable_slicing()` (`pipe.enable_vae_slicing()`) sets `use_slicing`: decode/encode run one image of
the batch at a time. `vae.enable_tiling()` (`pipe.enable_vae_tiling()`) sets `use_tiling`: they run
overlapping tiles of `tile_latent_min_size` / `tile_sample_min_size` and blend them, which shows seams.
Both feed the coder pieces of the input the engine did not plan for.

While the engine runs a call, the engine's tiling option decides how the call is split (its tiling is
exact): diffusers' tiling is off for the call. Slicing is kept where the call runs untiled (each image
decoded alone, as the caller asked, and the same pixels), and off where the engine tiles (its plan is
made for the whole batch). The caller's values are back after every call, whatever happened in it.
"""
import contextlib

SLICING = "use_slicing"
TILING = "use_tiling"


def slices(module, x):
    """Whether diffusers' slicing would split this call's batch."""
    return bool(getattr(module, SLICING, False)) and x.shape[0] > 1


@contextlib.contextmanager
def obeyed(module, slicing):
    """The body runs with diffusers' tiling off and its slicing as the caller set it (`slicing` True) or
    off; each switch the module has is the caller's again afterwards."""
    wanted = {TILING: False}
    if not slicing:
        wanted[SLICING] = False
    before = {name: module.__dict__[name] for name in wanted
              if isinstance(module.__dict__.get(name), bool) and module.__dict__[name] != wanted[name]}
    for name in before:
        setattr(module, name, wanted[name])
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(module, name, value)

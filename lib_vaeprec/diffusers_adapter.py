"""VAE Precision for diffusers: one call to apply it to a pipeline or an AutoencoderKL, one to undo it.

    pipe = StableDiffusionXLPipeline.from_pretrained(...)
    engine = lib_vaeprec.apply(pipe, dtype="auto", tiling="auto")
    image = pipe(prompt).images[0]
    print(engine.last_call)          # dtype, seconds, peak memory, tiles, fallbacks
    lib_vaeprec.remove(pipe)         # the VAE exactly as it was

diffusers' own switches keep working beside it: with the VAE in bf16, the SDXL pipelines'
`force_upcast` path (taken only for an fp16 VAE) is not triggered.
"""
import torch

from .engine import VaeEngine, engine_of
from .options import DEFAULTS, merge

_KEEP = object()     # apply() without on_call keeps the callback an earlier apply() set


def _vae_of(target):
    """The VAE of a pipeline, or the VAE itself: a torch module with callable decode and encode."""
    vae = getattr(target, "vae", target)
    if not (isinstance(vae, torch.nn.Module) and callable(getattr(vae, "decode", None))
            and callable(getattr(vae, "encode", None))):
        raise TypeError(f"{type(target).__name__} is neither a pipeline with a .vae nor a VAE (a torch module "
                        f"with decode and encode)")
    return vae


def apply(target, on_call=_KEEP, **options):
    """Attaches (or reconfigures) VAE Precision on `target`; keyword arguments are VaeOptions fields.
    On a VAE already attached, only the options given change; the others keep their values (a bad value
    keeps the one it had). `on_call` receives each call's CallStats; None removes a callback set before."""
    vae = _vae_of(target)
    engine = engine_of(vae)
    base, base_source = (DEFAULTS, "the default") if engine is None else (engine.options, "as set before")
    chosen = merge(base, options, source="lib_vaeprec.apply argument", base_source=base_source)
    if engine is None:
        engine = VaeEngine(vae, chosen, on_call=None if on_call is _KEEP else on_call).attach()
    else:
        engine.set_options(chosen)
        if on_call is not _KEEP:
            engine.on_call = on_call
    return engine


def remove(target):
    """Detaches VAE Precision: methods, dtype and device of the VAE as before `apply`."""
    engine = engine_of(_vae_of(target))
    if engine is not None:
        engine.detach()

"""VAE Precision for diffusers: one call to apply it to a pipeline or an AutoencoderKL, one to undo it.

    pipe = StableDiffusionXLPipeline.from_pretrained(...)
    engine = lib_vaeprec.apply(pipe, dtype="auto", tiling="auto")
    image = pipe(prompt).images[0]
    print(engine.last_call)          # dtype, seconds, peak memory, tiles, fallbacks
    lib_vaeprec.remove(pipe)         # the VAE exactly as it was

diffusers' own switches keep working beside it: with the VAE in bf16, the SDXL pipelines'
`force_upcast` path (taken only for an fp16 VAE) is not triggered.
"""
from .engine import VaeEngine, engine_of
from .options import DEFAULTS, merge


def _vae_of(target):
    vae = getattr(target, "vae", target)
    if not (hasattr(vae, "decode") and hasattr(vae, "encode")):
        raise TypeError(f"{type(target).__name__} is neither a pipeline with a .vae nor a VAE")
    return vae


def apply(target, on_call=None, **options):
    """Attaches (or reconfigures) VAE Precision on `target`; keyword arguments are VaeOptions fields."""
    vae = _vae_of(target)
    chosen = merge(DEFAULTS, options, source="lib_vaeprec.apply argument")
    engine = engine_of(vae)
    if engine is None:
        engine = VaeEngine(vae, chosen, on_call=on_call).attach()
    else:
        engine.set_options(chosen)
        engine.on_call = on_call or engine.on_call
    return engine


def remove(target):
    """Detaches VAE Precision: methods, dtype and device of the VAE as before `apply`."""
    engine = engine_of(_vae_of(target))
    if engine is not None:
        engine.detach()

"""The VAE part of an image's generation parameters: written from a generation's stats, read back
into the choices that made it (dtype, tiling, tile size, offload), never into the measurements."""
import logging

from .options import OFFLOAD_CHOICES, parse_value, shown
from .stats import GenerationStats

log = logging.getLogger("vae_precision")

KEY_DTYPE = "VAE dtype"
KEY_DECODE = "VAE decode"
KEY_ENCODE = "VAE encode"
KEY_PEAK = "VAE peak VRAM"
KEY_RAM = "VAE RAM"
KEY_TILING = "VAE tiling"
KEY_TILE_SIZE = "VAE tile size"
KEY_OFFLOAD = "VAE offload"
KEY_FALLBACK = "VAE fallback"
KEY_NONFINITE = "VAE non-finite"
KEY_KERNELS = "VAE kernels"
# infotext key -> option it restores
RESTORES = {KEY_DTYPE: "dtype", KEY_TILING: "tiling", KEY_TILE_SIZE: "tile_size", KEY_OFFLOAD: "offload"}


def _gib(num_bytes):
    return f"{num_bytes / 2**30:.2f} GiB"


def format_params(options, gen: GenerationStats, images=None):
    """Infotext pairs for one generation (of `images` images, where the host says); empty when nothing ran.
    Each field is the choice (what pasting restores), then in parentheses what actually ran where it
    differs."""
    if not gen.calls:
        return {}
    params = {KEY_DTYPE: _dtype(options, gen)}
    for key, kind in ((KEY_DECODE, "decode"), (KEY_ENCODE, "encode")):
        if gen.of_kind(kind):
            params[key] = f"{gen.seconds(kind):.2f} s"
    if gen.peak_bytes() is not None:
        params[KEY_PEAK] = _gib(gen.peak_bytes())
    if gen.ram_bytes() is not None:
        params[KEY_RAM] = _gib(gen.ram_bytes())
    tiling = options.tiling
    bands = gen.bands()
    if bands:      # what the user can act on: the image's own bands (a smaller tile size, more of them)
        how = " after OOM" if gen.tiled_after_oom() else ""
        count, width, rows = bands
        tiling += f" ({count} band{'s' if count != 1 else ''} of {width}x{rows} px{how})"
    params[KEY_TILING] = tiling
    if options.tile_size:
        params[KEY_TILE_SIZE] = str(options.tile_size)
    params[KEY_OFFLOAD] = _offload(options, gen)
    if gen.kernels():
        params[KEY_KERNELS] = "/".join(gen.kernels())      # "triton": the fused blocks ran
    fallbacks = gen.fallbacks()
    if fallbacks:
        params[KEY_FALLBACK] = "; ".join(str(f) for f in fallbacks)
    nonfinite = _nonfinite(gen, images)
    if nonfinite:
        params[KEY_NONFINITE] = nonfinite
    return params


def _nonfinite(gen, images=None):
    """`1 of 4` images still NaN/Inf after every fallback; `1 of 4 in the latent` for those that came to the
    VAE so (the sampler's doing, not redone)."""
    left, given, total = gen.nonfinite(images)
    parts = ([f"{left} of {total}"] if left else []) + ([f"{given} of {total} in the latent"] if given else [])
    return ", ".join(parts)


def _dtype(options, gen):
    """`fp16 (bf16)` after every image was redone in bf16, `auto (bf16)`, `fp16 (fp32 as cpu emulates fp16)`,
    `mixed (fp16 11/16 blocks)`, `fp32 (on bf16-rounded weights)`."""
    used = "/".join(gen.dtypes())
    details = [used] if used != options.dtype else []
    details += [f"as {device} emulates {forced}" for forced, device in gen.emulated()]
    details += [f"on {rounded}-rounded weights" for rounded in gen.rounded_weights()]
    return f"{options.dtype} ({' '.join(details)})" if details else options.dtype


def _offload(options, gen):
    """The choice, and the device the calls ran on when it was the CPU although the choice is a GPU one
    (a host running on the CPU, or one that keeps its VAE there)."""
    label = OFFLOAD_CHOICES[options.offload]
    devices = gen.devices()
    if options.offload != "cpu" and "cpu" in devices:
        label += f" (ran on {'/'.join(devices)}{' after OOM' if gen.on_cpu_after_oom() else ''})"
    return label


# Longer than any value format_params writes, with room to spare; a longer one is not ours to parse.
MAX_VALUE_CHARS = 200


def _choice_part(text):
    """The value before its "(...)" detail, in one pass (a regex with `.*` rescanned from every "(")."""
    text = text.strip()
    start = text.find("(")
    if start >= 0 and text.endswith(")"):
        text = text[:start].rstrip()
    return text


def parse_params(params):
    """{option: value} restored from infotext pairs; malformed or overlong values are left out with one
    warning each."""
    restored = {}
    for key, option in RESTORES.items():
        if key not in params:
            continue
        raw = str(params[key])
        where = f"infotext {key!r}"
        if len(raw) > MAX_VALUE_CHARS:
            log.warning("VAE Precision: %s %s is longer than any value VAE Precision writes; not restored",
                        where, shown(raw))
            continue
        value = parse_value(option, _choice_part(raw), where, "not restored")
        if value is not None:
            restored[option] = value
    return restored

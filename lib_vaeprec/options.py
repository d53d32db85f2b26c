"""The user's choices, validated: every bad value becomes the default plus one clear warning."""
import logging
from dataclasses import dataclass, fields, replace

from .policy import CHOICES as DTYPE_CHOICES

log = logging.getLogger("vae_precision")

USE_SETTINGS = "use settings"
TILING_CHOICES = ("off", "auto", "always")
# id -> label shown in the web UI; both are accepted as input.
OFFLOAD_CHOICES = {
    "keep": "keep on GPU",
    "after_use": "offload to CPU after use",
    "sequential": "sequential",
    "cpu": "decode on CPU",
}
MAX_TILE_PX = 8192


@dataclass(frozen=True)
class VaeOptions:
    enabled: bool = True
    dtype: str = "auto"
    nan_fallback: bool = True
    tiling: str = "auto"
    tile_size: int = 0          # pixels; 0 = sized from free memory
    offload: str = "keep"
    free_memory: bool = False   # empty the allocator cache after each call
    write_stats: bool = True
    compile: bool = False       # torch.compile the encoder/decoder (CUDA; first call compiles)
    channels_last: bool = False # channels_last memory format for weights and inputs
    fused_upsample: bool = True # upsample + conv as one transposed conv (eager runs)
    fast_groupnorm: bool = True # GroupNorm from per-channel reductions + one pass (eager CUDA runs)
    low_memory: bool = False    # 16-bit convs in row bands: less cuDNN workspace, a little slower
    cudnn_benchmark: bool = False  # let cuDNN time its algorithms per shape during VAE calls


DEFAULTS = VaeOptions()


def _bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(choices):
    def parse(value):
        text = str(value).strip().lower()
        aliases = {"default": "host default", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                   "half": "fp16"}
        text = aliases.get(text, text)
        if text in choices:
            return text
        raise ValueError(f"expected one of {', '.join(choices)}")
    return parse


def _offload(value):
    text = str(value).strip().lower()
    for key, label in OFFLOAD_CHOICES.items():
        if text in (key, label.lower()):
            return key
    raise ValueError(f"expected one of {', '.join(OFFLOAD_CHOICES.values())}")


def _tile_size(value):
    text = str(value).strip().lower().removesuffix("px").strip()
    if text in ("auto", ""):
        return 0
    size = int(float(text))
    if size == 0:
        return 0
    if size < 64 or size > MAX_TILE_PX:
        raise ValueError(f"expected 0 (auto) or a size from 64 to {MAX_TILE_PX} pixels")
    return size - size % 8


PARSERS = {
    "enabled": _bool, "dtype": _choice(DTYPE_CHOICES), "nan_fallback": _bool, "tiling": _choice(TILING_CHOICES),
    "tile_size": _tile_size, "offload": _offload, "free_memory": _bool, "write_stats": _bool,
    "compile": _bool, "channels_last": _bool, "fused_upsample": _bool, "fast_groupnorm": _bool, "low_memory": _bool,
    "cudnn_benchmark": _bool,
}


def parse_value(name, value, source="settings"):
    """The parsed value, or None (after a warning) when it is not valid."""
    try:
        return PARSERS[name](value)
    except (ValueError, TypeError) as error:
        log.warning("VAE Precision: ignoring %s value %r for %s (%s); using the default instead",
                    source, value, name, error)
        return None


def merge(base: VaeOptions, overrides: dict, source="override"):
    """`base` with each valid override applied; "use settings"/None leave the base value."""
    changes = {}
    names = {f.name for f in fields(VaeOptions)}
    for name, value in overrides.items():
        if name not in names:
            log.warning("VAE Precision: unknown option %r from %s ignored", name, source)
            continue
        if value is None or (isinstance(value, str) and value.strip().lower() == USE_SETTINGS):
            continue
        parsed = parse_value(name, value, source)
        changes[name] = getattr(DEFAULTS, name) if parsed is None else parsed
    return replace(base, **changes)

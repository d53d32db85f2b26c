"""The user's choices, validated: a bad value is warned about in one line and replaced by the next level's
value (the render's own arguments -> the request's override_settings or the settings -> the default)."""
import logging
import math
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
# Tile sizes in pixels, for every place that takes one (settings slider, accordion, API, infotext, CLI):
# 0 = sized from free memory, else MIN_TILE_PX..MAX_TILE_PX, rounded down to a multiple of TILE_PX_STEP.
MIN_TILE_PX = 64            # 8 latent pixels: the smallest tile the tiled runner makes
MAX_TILE_PX = 8192
TILE_PX_STEP = 8            # one latent pixel


@dataclass(frozen=True)
class VaeOptions:
    enabled: bool = True
    dtype: str = "auto"
    avoid_emulated: bool = True # a forced bf16/fp16 the device only emulates runs as fp32 (policy.resolve)
    nan_fallback: bool = True
    tiling: str = "auto"
    tile_size: int = 0          # pixels; 0 = sized from free memory
    offload: str = "keep"
    free_memory: bool = False   # empty the allocator cache after each call
    write_stats: bool = True
    compile: bool = False       # torch.compile the encoder/decoder (CUDA; first call compiles)
    channels_last: bool = False # channels_last memory format for weights and inputs
    fused_upsample: bool = True # upsample + conv as one transposed conv (eager 16-bit CUDA runs)
    fast_groupnorm: bool = True # GroupNorm from per-channel reductions + one pass (eager 16-bit CUDA runs)
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
    raise ValueError(value)


_ALIASES = {"default": "host default", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16"}


def _choice(choices):
    def parse(value):
        text = str(value).strip().lower()
        text = _ALIASES.get(text, text)
        if text in choices:
            return text
        raise ValueError(value)
    return parse


def _offload(value):
    text = str(value).strip().lower()
    for key, label in OFFLOAD_CHOICES.items():
        if text in (key, label.lower()):
            return key
    raise ValueError(value)


def _tile_size(value):
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):          # any int, however large, compares without converting
        size = value
    else:
        text = str(value).strip().lower().removesuffix("px").strip()
        if text in ("auto", ""):
            return 0
        if len(text) > 20:              # no tile size is written that long; float() of it would be inf
            raise ValueError(value)
        number = float(text)
        if not math.isfinite(number):   # inf, nan, 1e999
            raise ValueError(value)
        size = int(number)
    if size == 0:
        return 0
    if not MIN_TILE_PX <= size <= MAX_TILE_PX:
        raise ValueError(value)
    return size - size % TILE_PX_STEP


_BOOL = "on or off"
# option -> (parser, what it accepts, as the warning says it)
PARSERS = {
    "enabled": (_bool, _BOOL),
    "dtype": (_choice(DTYPE_CHOICES), "one of " + ", ".join(DTYPE_CHOICES)),
    "avoid_emulated": (_bool, _BOOL),
    "nan_fallback": (_bool, _BOOL),
    "tiling": (_choice(TILING_CHOICES), "one of " + ", ".join(TILING_CHOICES)),
    "tile_size": (_tile_size, f"auto (0) or {MIN_TILE_PX} to {MAX_TILE_PX} pixels"),
    "offload": (_offload, "one of " + ", ".join(OFFLOAD_CHOICES.values())),
    "free_memory": (_bool, _BOOL), "write_stats": (_bool, _BOOL), "compile": (_bool, _BOOL),
    "channels_last": (_bool, _BOOL), "fused_upsample": (_bool, _BOOL), "fast_groupnorm": (_bool, _BOOL),
    "low_memory": (_bool, _BOOL), "cudnn_benchmark": (_bool, _BOOL),
}
SHOWN_CHARS = 40     # of a bad value, in a warning: pasted or API values can be any length


def shown(value):
    """A bad value as a warning quotes it: repr, cut to SHOWN_CHARS."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long for str(): say what it is instead
        return f"a value too long to print ({type(value).__name__})"
    if len(text) <= SHOWN_CHARS:
        return text
    length = len(value) if isinstance(value, str) else len(text)
    return f"{text[:SHOWN_CHARS]}... ({length} characters)"


def display(name, value):
    """A valid option value as the settings and the accordion show it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if name == "offload":
        return OFFLOAD_CHOICES[value]
    if name == "tile_size":
        return "auto" if value == 0 else str(value)
    return str(value)


class BadValue(ValueError):
    """A value an option does not accept; the message says what it accepts."""


def parse_strict(name, value):
    """The parsed value, or BadValue("expected ...") for any bad value, whatever its type: for callers that
    refuse bad input instead of falling back (the bench CLI)."""
    parse, accepted = PARSERS[name]
    try:
        return parse(value)
    except (ValueError, TypeError, ArithmeticError):    # ArithmeticError: OverflowError from any conversion
        raise BadValue(f"expected {accepted}") from None


def parse_value(name, value, where, instead):
    """The parsed value, or None after one warning naming `where` the value came from, the value, what is
    accepted, and `instead` (what happens in its place). Never raises for a bad value."""
    try:
        return parse_strict(name, value)
    except BadValue as error:
        log.warning("VAE Precision: %s %s is not valid (%s); %s", where, shown(value), error, instead)
        return None


def merge(base: VaeOptions, overrides: dict, source="override", base_source="the default", names=None):
    """`base` with each valid override applied; "use settings"/None leave the base value, and so does a bad
    value: the next level's value (`base`, from `base_source`) is used in its place. `base_source` is one
    level for every option, or {option: level} where the base's values came from several (options left
    out: "the settings"). `names` maps an option to the name its `source` knows it by (a setting's key)."""
    changes = {}
    known = {f.name for f in fields(VaeOptions)}
    for name, value in overrides.items():
        if name not in known:
            log.warning("VAE Precision: unknown option %s from %s ignored", shown(name), source)
            continue
        if value is None or (isinstance(value, str) and value.strip().lower() == USE_SETTINGS):
            continue
        fallback = display(name, getattr(base, name))
        level = base_source.get(name, "the settings") if isinstance(base_source, dict) else base_source
        parsed = parse_value(name, value, f"{source} {(names or {}).get(name, name)}",
                             f"using {fallback!r} ({level}) instead")
        if parsed is not None:
            changes[name] = parsed
    return replace(base, **changes)

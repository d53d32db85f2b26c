"""The "VAE Precision" section in the web UI's Settings, the same options over the API
(GET/POST /sdapi/v1/options), and reading them back as VaeOptions.

Registered when the extension loads, not from `on_ui_settings`: with --nowebui that callback never runs
(only `modules/ui_settings.py` create_ui calls it), and the web UI builds the options model of its API
(`modules/api/models.py` OptionsModel, from `opts.data_labels`) when that module is first imported, which
in Forge and reForge is before our script loads (their built-in ControlNet imports `modules.api`).

Read at every render, not cached: a changed setting applies to the next image without a restart, and
A1111/Forge apply a request's `override_settings` to `shared.opts` itself (after `before_process`), so
reading `shared.opts` in `process` sees them.
"""
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from ..options import DEFAULTS, MAX_TILE_PX, OFFLOAD_CHOICES, TILING_CHOICES, BadValue, merge, parse_strict
from ..policy import CHOICES as DTYPE_CHOICES

SECTION = ("vae_precision", "VAE Precision")
CATEGORY = "sd"              # listed next to the web UI's own "VAE" section (A1111 1.7+ settings categories)
PREFIX = "vae_precision_"


def key(name):
    return PREFIX + name


@dataclass(frozen=True)
class Spec:
    name: str              # VaeOptions field
    default: object        # as the setting stores it (offload: its label)
    label: str
    component: str         # gradio class name
    args: dict = field(default_factory=dict)
    info: str = ""

    @property
    def key(self):
        return key(self.name)


SPECS = (
    Spec("enabled", DEFAULTS.enabled, "Enable VAE Precision", "Checkbox",
         info="off: the web UI's own VAE code runs untouched"),
    Spec("dtype", DEFAULTS.dtype, "VAE dtype", "Dropdown", {"choices": list(DTYPE_CHOICES)},
         info="host default: the web UI decides; mixed: each block in fp16 where its measured values fit, else "
              "bf16; auto: mixed on GPUs with native fp16 and bf16, else bf16 where native, else fp16 when safe, "
              "else fp32"),
    Spec("avoid_emulated", DEFAULTS.avoid_emulated, "Avoid emulated dtypes", "Checkbox",
         info="a forced bf16/fp16 that the device only emulates runs as fp32 (a CPU without native fp16 took "
              "35-103 s for one 64x64 fp16 decode, fp32 under 1 s); off: the forced dtype runs anyway"),
    Spec("nan_fallback", DEFAULTS.nan_fallback, "Redo NaN/Inf images at a safer dtype", "Checkbox",
         info="fp16 -> bf16 -> fp32, only for the images that came out broken"),
    Spec("tiling", DEFAULTS.tiling, "Tiled VAE", "Radio", {"choices": list(TILING_CHOICES)},
         info="auto: tile when the image would not fit free memory, or after running out of memory; out of memory "
              "goes on tiled with less memory, then on the CPU"),
    Spec("tile_size", DEFAULTS.tile_size, "Tile size (pixels)", "Slider",
         {"minimum": 0, "maximum": MAX_TILE_PX, "step": 64},
         info="0 = sized from free memory"),
    Spec("offload", OFFLOAD_CHOICES[DEFAULTS.offload], "VAE weights", "Dropdown",
         {"choices": list(OFFLOAD_CHOICES.values())},
         info="where the VAE weights stay between and during decodes"),
    Spec("free_memory", DEFAULTS.free_memory, "Free cached GPU memory after each VAE call", "Checkbox",
         info="slower; leaves more memory to other programs"),
    Spec("write_stats", DEFAULTS.write_stats, "Write VAE timings and memory into infotext", "Checkbox",
         info="dtype, tiling and offload are written either way, so pasting an image's parameters restores them"),
    Spec("compile", DEFAULTS.compile, "Compile the VAE (torch.compile, CUDA)", "Checkbox",
         info="about 2x faster decodes with half the peak memory (H100, bf16), after a first call that compiles "
              "for tens of seconds per image size; falls back to normal running if compiling fails"),
    Spec("channels_last", DEFAULTS.channels_last, "channels_last memory format for the VAE", "Checkbox",
         info="measured slower in eager bf16 on H100; can help some GPUs and compiled runs"),
    Spec("fused_upsample", DEFAULTS.fused_upsample, "Upsample and convolve in one step", "Checkbox",
         info="the decoder's upsample + conv as one transposed conv: less memory, faster; changes pixels by "
              "rounding, so only where the extension runs bf16/fp16 on CUDA (not with compile)"),
    Spec("fast_groupnorm", DEFAULTS.fast_groupnorm, "Fast GroupNorm (bf16/fp16, CUDA)", "Checkbox",
         info="the VAE's GroupNorms from per-channel sums and one pass: bf16 decodes about 2x faster at 1024² "
              "and up, at 0.5x the fp32 peak memory (H100); changes pixels by rounding, so only where the "
              "extension runs bf16/fp16 on CUDA (not with compile)"),
    Spec("low_memory", DEFAULTS.low_memory, "Low-memory convolutions (bf16/fp16, CUDA)", "Checkbox",
         info="large convolutions run in bands of rows: about 0.5x the fp32 peak memory instead of 0.8x, "
              "about 15% slower; measured with fast GroupNorm off (on, the peak is already 0.5x)"),
    Spec("cudnn_benchmark", DEFAULTS.cudnn_benchmark, "cuDNN autotuning during VAE calls", "Checkbox",
         info="fp32 VAEs ran 26% faster with it on an H100, bf16 no faster; the first call at each image "
              "size is slower while cuDNN times its algorithms"),
)


def register(shared=None, gr=None):
    """Adds the options to the web UI's settings (when the extension loads)."""
    if shared is None:
        from modules import shared
    if gr is None:
        import gradio as gr
    for spec in SPECS:
        shared.opts.add_option(spec.key, _option_info(shared, spec, getattr(gr, spec.component)).info(spec.info))


def expose_over_api(patches, opts=None):
    """Lists the options in GET /sdapi/v1/options where the API's options model was built without them.

    `modules/api/api.py` `Api.__init__` gives that route `response_model=models.OptionsModel`, read when the
    web UI creates the API, after every script has loaded; the response lists only the model's fields. If
    `modules/api/models.py` was imported before us, its OptionsModel is replaced by one extended with our
    fields, typed the way that module types every option (restored on unload)."""
    models = sys.modules.get("modules.api.models")
    base = getattr(models, "OptionsModel", None)
    if base is None:
        return False       # built later, from opts.data_labels, ours included
    if opts is None:
        from modules import shared
        opts = shared.opts
    known = getattr(base, "model_fields", None) or base.__fields__     # pydantic 2 (Forge) or 1 (A1111, reForge)
    typemap = getattr(opts, "typemap", {})
    fields = {spec.key: (Optional[typemap.get(type(spec.default), type(spec.default)) if spec.default else Any],
                         models.Field(default=spec.default, description=spec.label))
              for spec in SPECS if spec.key not in known}
    if not fields:
        return False
    patches.replace(models, "OptionsModel", models.create_model("Options", __base__=base, **fields))
    return True


def _option_info(shared, spec, component):
    try:
        return shared.OptionInfo(spec.default, spec.label, component, dict(spec.args), section=SECTION,
                                 category_id=CATEGORY)
    except TypeError:   # a web UI older than settings categories
        return shared.OptionInfo(spec.default, spec.label, component, dict(spec.args), section=SECTION)


def read(opts=None, stored=None, overridden=()):
    """VaeOptions from the settings; a bad stored value is warned about and replaced by its default.

    With `stored` (the stored settings, read before the web UI applied a request's override_settings), only
    the keys in `overridden` are read from `opts`, where the web UI put the request's values; a bad one is
    replaced by its stored setting, the next level down."""
    if opts is None:
        from modules import shared
        opts = shared.opts
    names = {spec.name: spec.key for spec in SPECS}
    if stored is None:
        values = {spec.name: getattr(opts, spec.key, spec.default) for spec in SPECS}
        return merge(DEFAULTS, values, source="setting", base_source="the default", names=names)
    values = {spec.name: getattr(opts, spec.key, spec.default) for spec in SPECS if spec.key in overridden}
    return merge(stored, values, source="override_settings", base_source="the stored setting", names=names)


def overridden_keys(override_settings):
    """Our keys among a request's override_settings."""
    return {k for k in (override_settings or {}) if str(k).startswith(PREFIX)}


def touched_by(override_settings):
    """Whether a request's override_settings change any of our settings."""
    return bool(overridden_keys(override_settings))


def levels(opts=None, overridden=()):
    """{option: where read()'s value came from}, for the accordion's fallback: "override_settings" where a
    request's valid value stands, else "the settings"."""
    if opts is None:
        from modules import shared
        opts = shared.opts
    found = {}
    for spec in SPECS:
        if spec.key in overridden:
            try:
                parse_strict(spec.name, getattr(opts, spec.key, spec.default))
                found[spec.name] = "override_settings"
            except BadValue:
                pass
    return found


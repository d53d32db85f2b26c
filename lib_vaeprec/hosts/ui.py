"""The per-render accordion in txt2img and img2img, its API arguments, and pasting infotext back into it.

Only components and arguments that gradio 3.41 (A1111, reForge) and gradio 4 (Forge) both accept.
"""
import contextlib
from dataclasses import dataclass

from ..infotext import KEY_DTYPE, KEY_OFFLOAD, KEY_TILE_SIZE, KEY_TILING, RESTORES, parse_params
from ..options import OFFLOAD_CHOICES, TILING_CHOICES, USE_SETTINGS
from ..policy import CHOICES as DTYPE_CHOICES

TITLE = "VAE Precision"
# The script's arguments, in order: what the API's alwayson_scripts["VAE Precision"]["args"] lists.
ARGS = ("active", "enabled", "dtype", "nan_fallback", "tiling", "tile_size", "offload", "free_memory",
        "write_stats")
ON_OFF = (USE_SETTINGS, "on", "off")
TILE_SIZES = (USE_SETTINGS, "auto", "256", "512", "768", "1024", "1536", "2048")


def overrides_from_args(args):
    """{option: value} from the script's arguments; nothing unless the accordion is active."""
    values = dict(zip(ARGS, args))
    if not _truthy(values.pop("active", False)):
        return {}
    return {name: value for name, value in values.items() if value is not None}


def _truthy(value):
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


class PasteKey(str):
    """An infotext field target that is both a name and a function.

    When infotext is pasted, the web UI calls a callable target with the parsed parameters; the "Send to"
    buttons match fields between tabs by name (`paste_field_names`), which a plain function has not.
    """

    def __new__(cls, name, function):
        key = super().__new__(cls, name)
        key.function = function
        return key

    def __call__(self, params):
        return self.function(params)


class _Restored:
    """parse_params once per pasted parameter dict (each field asks; a bad value is warned about once)."""

    def __init__(self):
        self._params, self._values = None, {}

    def __call__(self, params):
        if params is not self._params:
            self._params, self._values = params, parse_params(params)
        return self._values


def _has_ours(params):
    return any(name in params for name in RESTORES)


def paste_fields(components):
    """(component, PasteKey) pairs restoring dtype, tiling, tile size and offload (never measurements);
    they also open the accordion, so the pasted values take effect."""
    restored = _Restored()

    def choice(option, label=lambda value: value):
        def get(params):
            value = restored(params).get(option)
            return None if value is None else label(value)
        return get

    def tile_size(params):
        size = restored(params).get("tile_size")
        if size is None:   # written only when not 0: an image made with our VAE path and no size used auto
            return "auto" if _has_ours(params) and KEY_TILE_SIZE not in params else None
        return "auto" if size == 0 else str(size)

    return [
        (components["active"], PasteKey(TITLE, lambda params: True if _has_ours(params) else None)),
        (components["enabled"], PasteKey(f"{TITLE} enabled", lambda params: "on" if _has_ours(params) else None)),
        (components["dtype"], PasteKey(KEY_DTYPE, choice("dtype"))),
        (components["tiling"], PasteKey(KEY_TILING, choice("tiling"))),
        (components["tile_size"], PasteKey(KEY_TILE_SIZE, tile_size)),
        (components["offload"], PasteKey(KEY_OFFLOAD, choice("offload", OFFLOAD_CHOICES.get))),
    ]


@dataclass
class BuiltUi:
    inputs: list
    components: dict
    infotext_fields: list
    paste_field_names: list


def _accordion(gr, elem_id):
    """InputAccordion (A1111 1.7+, Forge, reForge: an accordion whose open state is the input), else a
    plain accordion holding a checkbox."""
    try:
        from modules.ui_components import InputAccordion
    except ImportError:
        InputAccordion = None
    if InputAccordion is not None:
        return InputAccordion(False, label=TITLE, elem_id=elem_id)
    return _plain_accordion(gr, elem_id)


@contextlib.contextmanager
def _plain_accordion(gr, elem_id):
    with gr.Accordion(label=TITLE, open=False, elem_id=elem_id):
        yield gr.Checkbox(value=False, label="Use these choices for this render", elem_id=f"{elem_id}-checkbox")


def build(script):
    """Creates the accordion (inside the host's gradio Blocks) for one tab."""
    import gradio as gr
    eid = script.elem_id
    c = {}
    with _accordion(gr, eid("accordion")) as active:
        c["active"] = active
        with gr.Row():
            c["enabled"] = gr.Radio(choices=list(ON_OFF), value=USE_SETTINGS, label="Extension",
                                    elem_id=eid("enabled"))
            c["dtype"] = gr.Dropdown(choices=[USE_SETTINGS, *DTYPE_CHOICES], value=USE_SETTINGS,
                                     label="VAE dtype", elem_id=eid("dtype"))
            c["nan_fallback"] = gr.Radio(choices=list(ON_OFF), value=USE_SETTINGS, label="NaN fallback",
                                         elem_id=eid("nan_fallback"))
        with gr.Row():
            c["tiling"] = gr.Radio(choices=[USE_SETTINGS, *TILING_CHOICES], value=USE_SETTINGS,
                                   label="Tiling", elem_id=eid("tiling"))
            c["tile_size"] = gr.Dropdown(choices=list(TILE_SIZES), value=USE_SETTINGS, allow_custom_value=True,
                                         label="Tile size (pixels)", elem_id=eid("tile_size"))
            c["offload"] = gr.Dropdown(choices=[USE_SETTINGS, *OFFLOAD_CHOICES.values()], value=USE_SETTINGS,
                                       label="VAE weights", elem_id=eid("offload"))
        with gr.Row():
            c["free_memory"] = gr.Radio(choices=list(ON_OFF), value=USE_SETTINGS,
                                        label="Free cached memory", elem_id=eid("free_memory"))
            c["write_stats"] = gr.Radio(choices=list(ON_OFF), value=USE_SETTINGS,
                                        label="Write stats", elem_id=eid("write_stats"))
    fields = paste_fields(c)
    return BuiltUi(inputs=[c[name] for name in ARGS], components=c, infotext_fields=fields,
                   paste_field_names=[str(key) for _, key in fields])

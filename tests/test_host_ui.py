"""The accordion: components, defaults, element ids, API argument order, InputAccordion or its fallback."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, forge, reforge  # noqa: E402,F401

from lib_vaeprec.hosts import ui  # noqa: E402
from lib_vaeprec.options import OFFLOAD_CHOICES, TILING_CHOICES, USE_SETTINGS  # noqa: E402
from lib_vaeprec.policy import CHOICES  # noqa: E402


@pytest.mark.parametrize("host", ["a1111", "forge", "reforge"])
def test_accordion_on_each_host(host, request):
    env = request.getfixturevalue(host).start(load_model=False)
    runner = env.runners[True]
    script = runner.alwayson_scripts[0]
    assert script.alwayson and script.title() == "VAE Precision"
    inputs = runner.inputs[script.args_from:script.args_to]
    assert len(inputs) == len(ui.ARGS)
    active = inputs[0]
    assert active.value is False and "InputAccordion" in type(active).__name__
    assert active.elem_id == "script_img2img_vae_precision_accordion-checkbox"
    assert all(c.value == USE_SETTINGS for c in inputs[1:])
    by_name = dict(zip(ui.ARGS, inputs))
    assert by_name["dtype"].choices == [USE_SETTINGS, *CHOICES]
    assert by_name["tiling"].choices == [USE_SETTINGS, *TILING_CHOICES]
    assert by_name["offload"].choices == [USE_SETTINGS, *OFFLOAD_CHOICES.values()]
    assert by_name["tile_size"].allow_custom_value
    assert by_name["dtype"].elem_id == "script_img2img_vae_precision_dtype"


def test_plain_accordion_without_input_accordion(a1111, monkeypatch):
    env = a1111
    monkeypatch.delattr(env.mod("modules.ui_components"), "InputAccordion")
    env.start(load_model=False)
    runner = env.runners[False]
    active = runner.inputs[runner.alwayson_scripts[0].args_from]
    assert type(active).__name__ == "Checkbox" and active.value is False
    assert active.elem_id == "script_txt2img_vae_precision_accordion-checkbox"


def test_only_arguments_both_gradio_versions_accept(a1111):
    gr = a1111.mod("gradio")
    with pytest.raises(TypeError):
        gr.Dropdown(choices=[], value=None, filterable=True)      # gradio 4 only: the stand-in refuses it


def test_overrides_from_args():
    assert ui.overrides_from_args([False, "off", "bf16"]) == {}
    assert ui.overrides_from_args([True, "off", "bf16"]) == {"enabled": "off", "dtype": "bf16"}
    assert ui.overrides_from_args(["true", "use settings"]) == {"enabled": "use settings"}
    assert ui.overrides_from_args(["false", "on"]) == {}
    assert ui.overrides_from_args([]) == {}


def test_paste_key_is_a_name_and_a_function():
    key = ui.PasteKey("VAE dtype", lambda params: params.get("x"))
    assert key == "VAE dtype" and isinstance(key, str) and callable(key)
    assert key({"x": 1}) == 1 and key in ["VAE dtype"]

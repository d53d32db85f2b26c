"""Every option is readable and writable by key over the API (GET/POST /sdapi/v1/options), with --nowebui and
with the UI, in the three web UIs (stand-ins of modules/api/models.py and modules/api/api.py, real pydantic).

The web UIs build the API's options model (modules/api/models.py OptionsModel) from opts.data_labels when
that module is first imported, and create the API (modules/api/api.py Api) after every script has loaded:
- A1111 --nowebui: webui.py api_only(): initialize() loads the scripts, then create_api(app); the settings
  callbacks (on_ui_settings) never run;
- Forge and reForge: the built-in ControlNet (extensions-builtin/sd_forge_controlnet) imports modules.api
  while the scripts load, before ours.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, forge, reforge  # noqa: E402,F401

from lib_vaeprec.hosts import settings  # noqa: E402

KEYS = [spec.key for spec in settings.SPECS]


def api_after_loading(env, models_imported_first, with_ui):
    if models_imported_first:
        env.mod("modules.api.models")          # what Forge's and reForge's built-in ControlNet does
    env.load_extension()
    if with_ui:
        env.mod("modules.script_callbacks").ui_settings_callback()   # modules/ui_settings.py create_ui
    return env.mod("modules.api.api").Api()


@pytest.mark.parametrize("host", ["a1111", "forge", "reforge"])
@pytest.mark.parametrize("models_imported_first", [False, True])
@pytest.mark.parametrize("with_ui", [False, True])
def test_every_option_is_listed_and_posts_read_back(host, models_imported_first, with_ui, request):
    env = request.getfixturevalue(host)
    api = api_after_loading(env, models_imported_first, with_ui)
    listed = api.get_options()
    assert all(key in listed for key in KEYS)
    assert listed["vae_precision_dtype"] == settings.SPECS[1].default

    api.set_config({"vae_precision_dtype": "fp32", "vae_precision_tile_size": 1024,
                    "vae_precision_enabled": False})
    listed = api.get_options()
    assert (listed["vae_precision_dtype"], listed["vae_precision_tile_size"], listed["vae_precision_enabled"]) \
        == ("fp32", 1024, False)
    read = settings.read()
    assert (read.dtype, read.tile_size, read.enabled) == ("fp32", 1024, False)


def test_the_hosts_options_model_comes_back_on_unload(forge):
    models = forge.mod("modules.api.models")
    hosts_own = models.OptionsModel
    forge.load_extension()
    assert models.OptionsModel is not hosts_own and issubclass(models.OptionsModel, hosts_own)
    forge.mod("modules.script_callbacks").script_unloaded_callback()
    assert models.OptionsModel is hosts_own


def test_settings_section_is_still_in_the_settings_ui(a1111):
    env = a1111.start()
    labels = env.opts.data_labels
    assert all(labels[key].section == settings.SECTION for key in KEYS)

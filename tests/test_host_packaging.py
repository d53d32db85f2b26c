"""install.py, metadata.ini, the hover hints, and the entry point the web UI loads."""
import configparser
import importlib.util
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import REPO, a1111  # noqa: E402,F401

from lib_vaeprec.hosts import settings, ui  # noqa: E402


def load_install():
    spec = importlib.util.spec_from_file_location("vae_precision_install", os.path.join(REPO, "install.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)      # not as __main__: installs nothing
    return module


class FakeLaunch:
    """The web UI's launch.py: is_installed(package), run_pip(command, desc)."""

    def __init__(self, installed=()):
        self.installed, self.pip = set(installed), []

    def is_installed(self, package):
        return package in self.installed

    def run_pip(self, command, desc=None):
        self.pip.append(command)


def test_install_does_nothing_when_the_host_has_everything():
    launch = FakeLaunch()
    assert load_install().install(launch=launch, find_spec=lambda name: object()) == []
    assert launch.pip == []


def test_install_only_what_is_missing_and_never_torch():
    launch = FakeLaunch()
    installed = load_install().install(launch=launch, find_spec=lambda name: None if name == "psutil" else object())
    assert installed == ["psutil"] and launch.pip == ["install psutil"]
    launch = FakeLaunch(installed={"psutil"})       # importable under another name: launch knows better
    assert load_install().install(launch=launch, find_spec=lambda name: None if name == "psutil" else object()) == []
    module = load_install()
    assert not any("torch" in r for r in module.REQUIREMENTS.values())


def test_metadata_ini():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "metadata.ini"))
    assert config["Extension"]["Name"] == "sd-webui-vae-precision"


def test_hints_cover_every_setting_and_control():
    text = open(os.path.join(REPO, "javascript", "vae_precision.js"), encoding="utf8").read()
    assert "onUiLoaded" in text and "setting_vae_precision_" in text and "_vae_precision_" in text
    hinted = set(re.findall(r"^\s{8}(\w+):", text, re.M))
    assert {spec.name for spec in settings.SPECS} <= hinted
    assert set(ui.ARGS[1:]) | {"accordion"} <= hinted


def test_entry_point_defines_one_script_and_registers_callbacks(a1111):
    env = a1111
    entry = env.load_extension()
    assert len(env.script_classes) == 1
    callbacks = env.mod("modules.script_callbacks")
    for category in ("model_loaded", "script_unloaded"):
        assert callbacks.registered(category) == ["vae_precision"]
    assert "vae_precision_dtype" in env.opts.data_labels      # the settings, before any UI is built
    script = env.script_classes[0]()
    assert script.title() == "VAE Precision" and script.show(False) is env.mod("modules.scripts").AlwaysVisible
    assert len(open(entry.__file__, encoding="utf8").read().splitlines()) < 20    # logic lives in lib_vaeprec

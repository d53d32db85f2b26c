"""The "VAE Precision" settings section: registration through on_ui_settings, and reading it back."""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, forge  # noqa: E402,F401

from lib_vaeprec.hosts import settings  # noqa: E402
from lib_vaeprec.options import DEFAULTS, OFFLOAD_CHOICES, TILING_CHOICES  # noqa: E402
from lib_vaeprec.policy import CHOICES  # noqa: E402

KEYS = ["vae_precision_enabled", "vae_precision_dtype", "vae_precision_avoid_emulated", "vae_precision_nan_fallback",
        "vae_precision_tiling", "vae_precision_tile_size", "vae_precision_offload", "vae_precision_free_memory",
        "vae_precision_write_stats", "vae_precision_compile", "vae_precision_channels_last",
        "vae_precision_fused_upsample", "vae_precision_fast_groupnorm", "vae_precision_low_memory",
        "vae_precision_cudnn_benchmark"]


def test_registered_keys_components_and_choices(a1111):
    env = a1111.start()
    gr, labels = env.mod("gradio"), env.opts.data_labels
    ours = [k for k in labels if k.startswith("vae_precision_")]
    assert ours == KEYS
    for key in KEYS:
        assert labels[key].section == ("vae_precision", "VAE Precision") and labels[key].category_id == "sd"
        assert "class='info'" in labels[key].comment_after
    assert labels["vae_precision_dtype"].component is gr.Dropdown
    assert labels["vae_precision_dtype"].component_args["choices"] == list(CHOICES)
    assert labels["vae_precision_tiling"].component is gr.Radio
    assert labels["vae_precision_tiling"].component_args["choices"] == list(TILING_CHOICES)
    assert labels["vae_precision_offload"].component_args["choices"] == list(OFFLOAD_CHOICES.values())
    assert labels["vae_precision_tile_size"].component is gr.Slider
    assert labels["vae_precision_tile_size"].component_args["minimum"] == 0
    assert labels["vae_precision_enabled"].component is gr.Checkbox
    # the settings page builds each component as comp(label=..., value=..., elem_id=..., **component_args)
    for key in KEYS:
        info = labels[key]
        info.component(label=info.label, value=info.default, elem_id=f"setting_{key}", **(info.component_args or {}))


def test_defaults_read_back_as_the_core_defaults(forge):
    env = forge.start()
    assert settings.read(env.opts) == DEFAULTS
    assert settings.read() == DEFAULTS          # from modules.shared by default


def test_changed_values_apply_without_restart(a1111):
    env = a1111.start()
    env.opts.set("vae_precision_dtype", "fp32")
    env.opts.set("vae_precision_offload", OFFLOAD_CHOICES["cpu"])
    env.opts.set("vae_precision_tile_size", 1024)
    read = settings.read()
    assert (read.dtype, read.offload, read.tile_size) == ("fp32", "cpu", 1024)


def test_bad_stored_value_warns_and_falls_back_to_the_default(a1111, caplog):
    env = a1111.start()
    env.opts.set("vae_precision_tiling", "sometimes")
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        read = settings.read()
    assert read.tiling == DEFAULTS.tiling
    assert any("vae_precision_tiling" in r.getMessage() and "'sometimes'" in r.getMessage() for r in caplog.records)


def test_unregistered_settings_read_as_defaults():
    class Bare:
        pass
    assert settings.read(Bare()) == DEFAULTS
    assert settings.touched_by({"vae_precision_dtype": "bf16"}) and not settings.touched_by({"sd_vae": "x"})

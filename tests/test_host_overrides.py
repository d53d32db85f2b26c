"""Per-render choices: settings < override_settings < accordion, bad values, infotext written per batch and
pasted back into the accordion (A1111 stand-in; the same code runs on Forge and reForge)."""
import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, dtypes_of, forge, reforge  # noqa: E402,F401

from lib_vaeprec.engine import engine_of  # noqa: E402
from lib_vaeprec.hosts import ui  # noqa: E402
from lib_vaeprec.options import OFFLOAD_CHOICES  # noqa: E402


def started(env, **settings):
    env.start()
    settings = {"avoid_emulated": False, **settings}    # bf16 is forced here on CPUs that may only emulate it
    for name, value in settings.items():
        env.opts.set(f"vae_precision_{name}", value)
    return env


def dtype_written(env, res, index=0):
    return env.infotext(res.infotexts[index])["VAE dtype"]


def test_precedence_settings_then_override_settings_then_accordion(a1111):
    env = started(a1111, dtype="host default")
    override = {"vae_precision_dtype": "fp32"}
    assert dtype_written(env, env.render()[1]) == "host default (fp32)"
    assert dtype_written(env, env.render(override_settings=override)[1]) == "fp32"
    assert dtype_written(env, env.render(override_settings=override, args=env.args(dtype="bf16"))[1]) == "bf16"
    # a closed accordion changes nothing, whatever its fields hold
    assert dtype_written(env, env.render(override_settings=override, args=env.args(active=False, dtype="bf16"))[1]) \
        == "fp32"


def test_override_settings_last_only_for_their_render(a1111):
    env = started(a1111, dtype="bf16")
    module = env.vae_module()
    seen = {}
    p = env.new_p(override_settings={"vae_precision_dtype": "fp32"})
    p.sample_hook = lambda p, n: seen.update(dtypes=dtypes_of(module))
    env.mod("modules.processing").process_images(p)
    assert seen["dtypes"] == {torch.float32}
    assert env.opts.vae_precision_dtype == "bf16"
    assert env.adapter.options.dtype == "bf16" and dtypes_of(module) == {torch.bfloat16}
    assert env.mod("modules.devices").dtype_vae == torch.bfloat16


def test_api_style_args_and_override_disable(a1111):
    env = started(a1111, dtype="bf16")
    # alwayson_scripts {"VAE Precision": {"args": [true, "use settings", "fp32"]}}: shorter lists keep defaults
    args = env.args()
    args[:3] = [True, "use settings", "fp32"]
    assert dtype_written(env, env.render(args=args)[1]) == "fp32"
    _, res = env.render(override_settings={"vae_precision_enabled": False})
    assert "VAE dtype" not in env.infotext(res.infotexts[0])
    assert "decode" in env.vae_module().__dict__          # the settings' own state is back afterwards


def test_unknown_values_warn_and_the_render_continues(a1111, caplog):
    env = started(a1111, dtype="bf16")
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        _, res = env.render(override_settings={"vae_precision_dtype": "bf17"},
                            args=env.args(tile_size="huge", offload="into the sea"))
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "'bf17'" in messages and "vae_precision_dtype" in messages
    assert "'huge'" in messages and "'into the sea'" in messages
    params = env.infotext(res.infotexts[0])
    assert params["VAE dtype"] == "bf16"                    # the stored setting, the next level down
    assert params["VAE offload"].startswith(OFFLOAD_CHOICES["keep"])
    assert len(res.images) == 1 and torch.isfinite(res.images[0]).all()


def test_infotext_per_batch_and_encodes_count_for_their_batch(a1111):
    env = started(a1111, dtype="bf16")
    _, res = env.render(img2img=True, n_iter=2, batch_size=2)
    first, second = env.infotext(res.infotexts[0]), env.infotext(res.infotexts[2])
    assert res.infotexts[0] == res.infotexts[1]            # the images of one batch share it
    assert "VAE encode" in first and "VAE decode" in first
    assert "VAE encode" not in second and "VAE decode" in second
    assert first["VAE tiling"] == "auto" and first["VAE offload"] == "keep on GPU (ran on cpu)"


def test_write_stats_off_keeps_only_the_choices(a1111):
    env = started(a1111, dtype="bf16", write_stats=False, tile_size=512)
    params = env.infotext(env.render()[1].infotexts[0])
    assert {k for k in params if k.startswith("VAE")} == {"VAE dtype", "VAE tiling", "VAE tile size", "VAE offload"}


def _paste(runner, params):
    """What infotext_utils.connect_paste does with each (component, target) pair."""
    args = runner.default_args()
    for component, key in runner.infotext_fields:
        value = key(params) if callable(key) else params.get(key)
        if value is None:
            continue
        valtype = type(component.value)
        value = False if valtype == bool and value == "False" else valtype(value)
        args[runner.inputs.index(component)] = value
    return args


def test_infotext_pasted_back_restores_the_choices(a1111):
    env = started(a1111, dtype="fp32")
    made = env.args(dtype="bf16", tiling="off", tile_size="512", offload=OFFLOAD_CHOICES["after_use"])
    original = env.infotext(env.render(args=made)[1].infotexts[0])
    assert original["VAE tile size"] == "512"

    runner = env.runners[False]
    pasted = _paste(runner, original)
    script = runner.alwayson_scripts[0]
    values = dict(zip(ui.ARGS, pasted[script.args_from:script.args_to]))
    assert values == {**values, "active": True, "enabled": "on", "dtype": "bf16", "tiling": "off",
                      "tile_size": "512", "offload": OFFLOAD_CHOICES["after_use"]}
    assert values["nan_fallback"] == "use settings"       # not in infotext: left alone
    again = env.infotext(env.render(args=pasted)[1].infotexts[0])
    for key in ("VAE dtype", "VAE tiling", "VAE tile size", "VAE offload"):
        assert again[key] == original[key]
    assert set(runner.paste_field_names) >= {"VAE dtype", "VAE tiling", "VAE tile size", "VAE offload"}


def test_pasting_bad_or_foreign_infotext(a1111, caplog):
    env = started(a1111)
    runner = env.runners[False]
    assert _paste(runner, {"Steps": "20"}) == runner.default_args()       # no VAE keys: nothing changes
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        pasted = _paste(runner, {"VAE dtype": "bf17", "VAE tiling": "auto (4 tiles of 512 px)"})
    script = runner.alwayson_scripts[0]
    values = dict(zip(ui.ARGS, pasted[script.args_from:script.args_to]))
    assert values["dtype"] == "use settings" and values["tiling"] == "auto" and values["tile_size"] == "auto"
    assert len([r for r in caplog.records if "'bf17'" in r.getMessage()]) == 1


def test_precedence_on_forge(forge):
    env = started(forge, dtype="host default")
    _, res = env.render(override_settings={"vae_precision_dtype": "fp32"}, args=env.args(dtype="bf16"))
    assert dtype_written(env, res) == "bf16"
    _, res = env.render(override_settings={"vae_precision_dtype": "fp32"})
    assert dtype_written(env, res) == "fp32"


@pytest.mark.parametrize("host", ["a1111", "forge", "reforge"])
def test_tiling_choice_reaches_each_host_path(host, request):
    env = started(request.getfixturevalue(host), dtype="fp32")
    _, untiled = env.render(img2img=True)
    _, tiled = env.render(img2img=True, args=env.args(tiling="always", tile_size="64"))
    params = env.infotext(tiled.infotexts[0])
    # the 16-pixel images fit one tile: the tiled runner ran, and the infotext names no tiles
    assert engine_of(env.vae_module()).last_call.tiles == 1
    assert params["VAE tiling"] == "always" and params["VAE tile size"] == "64"
    assert torch.allclose(tiled.images[0], untiled.images[0], atol=1e-3)


# ----- a bad value falls back to the next level: accordion -> override_settings / settings -> default -----

@pytest.mark.parametrize("host", ["a1111", "forge", "reforge"])
def test_a_bad_accordion_value_falls_back_to_override_settings(host, request, caplog):
    env = started(request.getfixturevalue(host), dtype="host default")
    args = env.args()
    args[:3] = [True, "use settings", "bf17"]         # alwayson_scripts {"VAE Precision": {"args": [...]}}
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        _, res = env.render(override_settings={"vae_precision_dtype": "fp32"}, args=args)
    assert dtype_written(env, res) == "fp32"
    warnings = [r.getMessage() for r in caplog.records if "'bf17'" in r.getMessage()]
    assert len(warnings) == 1
    # the value typed in the UI's accordion; the fallback's level, the request's override_settings
    assert warnings[0].startswith("VAE Precision: accordion dtype 'bf17'")
    assert "using 'fp32' (override_settings) instead" in warnings[0]


def test_a_bad_value_from_the_api_names_alwayson_scripts_and_the_settings(a1111, caplog):
    env = started(a1111, dtype="fp32")
    args = env.args()
    args[:3] = [True, "use settings", "bf17"]
    p = env.new_p(args=args)
    p.is_api = True                           # real: modules/api/api.py text2imgapi
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        env.mod("modules.processing").process_images(p)
    warning = next(r.getMessage() for r in caplog.records if "'bf17'" in r.getMessage())
    assert warning.startswith("VAE Precision: alwayson_scripts dtype 'bf17'")
    assert "using 'fp32' (the settings) instead" in warning


def test_a_bad_override_falls_back_to_the_stored_setting(a1111, caplog):
    env = started(a1111, dtype="fp32", tile_size=512)
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        _, res = env.render(override_settings={"vae_precision_tile_size": "12x", "vae_precision_dtype": "bf17"})
    params = env.infotext(res.infotexts[0])
    assert params["VAE tile size"] == "512" and params["VAE dtype"] == "fp32"
    text = caplog.text
    assert "vae_precision_tile_size '12x'" in text and "using '512'" in text
    assert "vae_precision_dtype 'bf17'" in text and "using 'fp32'" in text
    assert "could not convert" not in text                 # the setting, the value, what is used: no Python


OVERFLOWING = ["inf", "1e999", "nan", "-inf", "9" * 400, float("inf"), float("nan"), 10 ** 400]


@pytest.mark.parametrize("value", OVERFLOWING, ids=lambda v: f"{type(v).__name__}-{str(v)[:8]}")
def test_overflowing_tile_sizes_fall_back_at_every_level(a1111, caplog, value):
    env = started(a1111, dtype="fp32", tile_size=256)
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        # the accordion's typed size: the settings' 256
        params = env.infotext(env.render(args=env.args(tiling="always", tile_size=value))[1].infotexts[0])
        assert params["VAE tiling"] == "always" and params["VAE tile size"] == "256"
        # override_settings: the stored 256
        params = env.infotext(env.render(override_settings={"vae_precision_tile_size": value})[1].infotexts[0])
        assert params["VAE tile size"] == "256"
        # a stored setting (API POST /sdapi/v1/options stores what it is given): the default, auto
        env.opts.set("vae_precision_tile_size", value)
        params = env.infotext(env.render()[1].infotexts[0])
        assert "VAE tile size" not in params and params["VAE dtype"] == "fp32"
        # pasted infotext: the other fields are restored, the tile size is left out
        runner = env.runners[False]
        pasted = _paste(runner, {"VAE tile size": str(value), "VAE tiling": "always", "VAE dtype": "bf16"})
    values = dict(zip(ui.ARGS, pasted[runner.alwayson_scripts[0].args_from:]))
    assert values["tiling"] == "always" and values["dtype"] == "bf16" and values["tile_size"] == "use settings"
    assert len([r for r in caplog.records if "tile_size" in r.getMessage() or "tile size" in r.getMessage()]) == 4
    assert "Error" not in caplog.text and "Traceback" not in caplog.text


def test_overlong_pasted_values_are_refused_with_one_warning_each(a1111, caplog):
    env = started(a1111)
    runner = env.runners[False]
    long_value = "auto" + "( )" * 13332                    # 40,000 characters: 5 s in a backtracking regex
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        pasted = _paste(runner, {"VAE dtype": long_value, "VAE tiling": long_value, "VAE offload": "sequential"})
    values = dict(zip(ui.ARGS, pasted[runner.alwayson_scripts[0].args_from:]))
    assert values["dtype"] == "use settings" and values["tiling"] == "use settings"
    assert values["offload"] == "sequential"
    warnings = [r.getMessage() for r in caplog.records if "infotext" in r.getMessage()]
    assert len(warnings) == 2 and all("(40000 characters)" in w and "not restored" in w for w in warnings)

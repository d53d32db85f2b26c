"""reForge host (Panchovix main, `ldm_patched`): cached checkpoints without callbacks, in-place VAE reloads,
rebuilt VAEs, --vae-in-* flags, off means off (stand-in web UI in tests/standins/reforge)."""
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import assert_untouched, dtypes_of, reforge, snapshot  # noqa: E402,F401

from lib_vaeprec.engine import engine_of  # noqa: E402


def started(env, **settings):
    env.start(load_model=False)
    settings = {"avoid_emulated": False, **settings}    # bf16 is forced here on CPUs that may only emulate it
    for name, value in settings.items():
        env.opts.set(f"vae_precision_{name}", value)
    env.mod("modules.sd_models").load_model()
    return env


def assert_weights_are(module, state_dict, dtype=torch.float32):
    for name, tensor in module.state_dict().items():
        assert tensor.dtype == dtype and torch.equal(tensor, state_dict[name].to(dtype)), name


def test_attaches_on_load_and_holds_vae_dtype(reforge):
    env = started(reforge, dtype="bf16")
    model = env.model()
    module, vae = env.vae_module(), model.forge_objects.vae
    assert model.first_stage_model is module and engine_of(module) is not None
    assert dtypes_of(module) == {torch.bfloat16} and vae.vae_dtype == torch.bfloat16 and vae.patcher.size == 0
    _, res = env.render(img2img=True)
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "bf16"


def test_cached_checkpoint_switch_is_caught_in_process(reforge):
    env = started(reforge, dtype="bf16")
    sd_models, callbacks = env.mod("modules.sd_models"), env.mod("modules.script_callbacks")
    model_a = env.model()
    sd_models.load_model(sd_models.checkpoints["b.safetensors"])
    env.opts.set("vae_precision_dtype", "fp32")

    fired = []
    callbacks.on_model_loaded(fired.append)
    env.opts.set("sd_model_checkpoint", "a.safetensors")
    env.render()                                # reload_model_weights returns the cached model A
    assert env.model() is model_a and fired == []
    assert dtypes_of(env.vae_module()) == {torch.float32}
    assert model_a.forge_objects.vae.vae_dtype == torch.float32


def test_vae_dropdown_reload_in_place_adopts_new_weights(reforge):
    env = started(reforge, dtype="bf16")
    sd_vae, sd_models, tiny = env.mod("modules.sd_vae"), env.mod("modules.sd_models"), env.mod("tiny_models")
    module, vae = env.vae_module(), env.model().forge_objects.vae
    sd_vae.vae_files["x.safetensors"] = tiny.vae_state_dict(tiny.LdmPatchedAutoencoderKL, 9)
    env.opts.set("sd_vae", "x.safetensors")
    sd_vae.reload_vae_weights()
    assert env.vae_module() is module and env.model().forge_objects.vae is vae
    assert engine_of(module) is not None and dtypes_of(module) == {torch.bfloat16}
    assert vae.vae_dtype == torch.bfloat16
    env.render()

    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_weights_are(module, sd_vae.vae_files["x.safetensors"])
    assert vae.vae_dtype == torch.float32

    env.opts.set("vae_precision_enabled", True)
    env.render()
    env.opts.set("sd_vae", "Automatic")         # back to the checkpoint's VAE (restore_base_vae)
    sd_vae.reload_vae_weights()
    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_weights_are(module, sd_models.checkpoints["a.safetensors"].state_dict)


def test_vae_of_another_shape_is_rebuilt_and_attached(reforge):
    env = started(reforge, dtype="bf16")
    sd_vae, tiny = env.mod("modules.sd_vae"), env.mod("tiny_models")
    old = env.vae_module()
    odd = tiny.vae_state_dict(tiny.LdmPatchedAutoencoderKL, 5)
    odd["extra.weight"] = torch.zeros(1)        # strict load fails -> a new VAE replaces the old everywhere
    sd_vae.vae_files["odd.safetensors"] = odd
    env.opts.set("sd_vae", "odd.safetensors")
    sd_vae.reload_vae_weights()
    model = env.model()
    new = model.forge_objects.vae.first_stage_model
    assert new is not old and model.first_stage_model is new
    assert model.forge_objects_original.vae is model.forge_objects.vae
    assert engine_of(new) is not None and model.forge_objects.vae.vae_dtype == torch.bfloat16


def test_unload_restores_sd_vae_functions(reforge):
    env = reforge
    sd_vae = env.mod("modules.sd_vae")
    originals = (sd_vae.load_vae, sd_vae.reload_vae_weights)
    started(env, dtype="bf16")
    assert (sd_vae.load_vae, sd_vae.reload_vae_weights) != originals
    env.mod("modules.script_callbacks").script_unloaded_callback()
    assert (sd_vae.load_vae, sd_vae.reload_vae_weights) == originals
    assert "decode" not in env.vae_module().__dict__ and env.host_dtype_record() == torch.float32


def test_vae_in_flag_yields_and_it_says_so_once(reforge, caplog):
    env = reforge
    env.mod("ldm_patched.modules.args_parser").args.vae_in_bf16 = True
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        started(env, dtype="fp32")
        env.render()
        env.render()
    assert len([r for r in caplog.records if "--vae-in-bf16" in r.getMessage()]) == 1
    assert env.host_dtype_record() == torch.float32
    env.opts.set("vae_precision_dtype", "host default")
    env.render()
    assert env.host_dtype_record() == torch.bfloat16 and dtypes_of(env.vae_module()) == {torch.bfloat16}


def test_off_means_off_bitwise(reforge):
    env = started(reforge, enabled=False)
    module, vae = env.vae_module(), env.model().forge_objects.vae
    pristine = snapshot(module)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    pristine_image = env.model().decode_first_stage(z)
    env.opts.set("vae_precision_enabled", True)
    env.opts.set("vae_precision_dtype", "bf16")
    env.render(img2img=True, n_iter=2)
    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_untouched(module, pristine)
    assert vae.vae_dtype == torch.float32
    assert torch.equal(env.model().decode_first_stage(z), pristine_image)

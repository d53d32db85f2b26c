"""AUTOMATIC1111 v1.10 host: attach on load, the host's dtype record, weight reloads, off means off,
exceptions and interrupts (stand-in web UI in tests/standins/a1111)."""
import gc
import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, assert_untouched, dtypes_of, snapshot  # noqa: E402,F401

from lib_vaeprec.engine import engine_of  # noqa: E402


def started(env, **settings):
    """The web UI started with our settings (by option name) already saved, the model then loaded."""
    env.start(load_model=False)
    settings = {"avoid_emulated": False, **settings}    # bf16 is forced here on CPUs that may only emulate it
    for name, value in settings.items():
        env.opts.set(f"vae_precision_{name}", value)
    env.mod("modules.sd_models").load_model()
    return env


def host_decode(env, seed=5):
    """The host's own full decode path (sd_samplers_common.decode_first_stage)."""
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return env.mod("modules.sd_samplers_common").decode_first_stage(env.model(), z)


def checkpoint_vae(env, name):
    info = env.mod("modules.sd_models").checkpoints[name]
    return {k[len("first_stage_model."):]: v for k, v in info.state_dict.items()}


def assert_weights_are(module, state_dict, dtype=torch.float32):
    for name, tensor in module.state_dict().items():
        assert tensor.dtype == dtype, name
        assert torch.equal(tensor, state_dict[name].to(dtype)), name


def test_attaches_on_model_load_and_holds_dtype_vae(a1111):
    env = started(a1111, dtype="bf16")
    module = env.vae_module()
    assert engine_of(module) is not None
    assert dtypes_of(module) == {torch.bfloat16}
    assert env.mod("modules.devices").dtype_vae == torch.bfloat16
    p, res = env.render()
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "bf16"


def test_host_default_changes_no_dtype(a1111):
    env = started(a1111, dtype="host default")
    module = env.vae_module()
    assert engine_of(module) is not None           # still measures, tiles, guards NaN
    assert_weights_are(module, checkpoint_vae(env, "a.safetensors"))
    assert env.mod("modules.devices").dtype_vae == torch.float32
    p, res = env.render(img2img=True)
    assert_weights_are(module, checkpoint_vae(env, "a.safetensors"))
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "host default (fp32)"


def test_host_flags_yield_to_the_extension_and_it_says_so_once(a1111, caplog):
    env = a1111
    env.mod("modules.shared").cmd_opts.no_half_vae = True
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        started(env, dtype="bf16")
        env.render()
        env.render()
    said = [r.getMessage() for r in caplog.records if "--no-half-vae" in r.getMessage()]
    assert len(said) == 1 and "host default" in said[0]
    assert env.mod("modules.devices").dtype_vae == torch.bfloat16


def test_default_start_warns_about_nothing_the_user_did_not_choose(a1111, caplog):
    env = a1111
    env.mod("modules.shared").cmd_opts.no_half = False     # no flag given; the NaN retry setting on by default
    with caplog.at_level(logging.INFO, logger="vae_precision"):
        started(env, dtype="bf16")
        env.render()
        env.render()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "chosen by" in r.getMessage()]
    said = [r.getMessage() for r in caplog.records if "Automatically revert VAE to 32-bit floats" in r.getMessage()]
    assert len(said) == 1 and [r.levelno for r in caplog.records if r.getMessage() == said[0]] == [logging.INFO]


def test_a_setting_changed_from_its_default_is_warned_about(a1111, caplog):
    env = a1111
    env.mod("modules.shared").cmd_opts.no_half = False
    env.start(load_model=False)
    env.opts.set("auto_vae_precision", False)
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        env.opts.set("vae_precision_dtype", "bf16")
        env.mod("modules.sd_models").load_model()
    said = [r.getMessage() for r in caplog.records if "chosen by" in r.getMessage()]
    assert len(said) == 1 and "'Automatically revert VAE to 32-bit floats' (off)" in said[0]


def test_host_default_leaves_host_flags_alone(a1111, caplog):
    env = a1111
    env.mod("modules.shared").cmd_opts.no_half_vae = True
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        started(env, dtype="host default")
        env.render()
    assert not [r for r in caplog.records if "--no-half-vae" in r.getMessage()]
    assert env.mod("modules.devices").dtype_vae == torch.float32


def test_off_means_off_bitwise(a1111):
    env = started(a1111, enabled=False)
    module = env.vae_module()
    pristine, pristine_image = snapshot(module), host_decode(env)
    assert "decode" not in module.__dict__

    env.opts.set("vae_precision_enabled", True)
    env.opts.set("vae_precision_dtype", "bf16")
    env.render(img2img=True, n_iter=2)     # the host's encode recasts the module to dtype_vae meanwhile
    assert dtypes_of(module) == {torch.bfloat16}

    env.opts.set("vae_precision_enabled", False)
    p, res = env.render()
    assert_untouched(module, pristine)
    assert module.dtype == torch.float32   # the Lightning module's own dtype record too
    assert env.mod("modules.devices").dtype_vae == torch.float32
    assert torch.equal(host_decode(env), pristine_image)
    assert "VAE dtype" not in env.infotext(res.infotexts[0])


def test_accordion_off_for_one_render(a1111):
    env = started(a1111, dtype="bf16")
    module = env.vae_module()
    seen = {}

    def during_sampling(p, n):
        seen["wrapped"] = "decode" in module.__dict__
        seen["dtypes"] = dtypes_of(module)
        seen["dtype_vae"] = env.mod("modules.devices").dtype_vae

    p = env.new_p(args=env.args(enabled="off"))
    p.sample_hook = during_sampling
    env.mod("modules.processing").process_images(p)
    assert seen == {"wrapped": False, "dtypes": {torch.float32}, "dtype_vae": torch.float32}
    assert engine_of(module) is not None and dtypes_of(module) == {torch.bfloat16}   # settings again


def test_vae_reload_adopts_the_new_weights(a1111):
    env = started(a1111, dtype="bf16")
    sd_vae, module = env.mod("modules.sd_vae"), env.vae_module()
    other = {k: v.clone() for k, v in checkpoint_vae(env, "b.safetensors").items()}
    sd_vae.vae_files["other.safetensors"] = other

    env.opts.set("sd_vae", "other.safetensors")
    sd_vae.reload_vae_weights()
    assert engine_of(module) is not None and dtypes_of(module) == {torch.bfloat16}
    assert env.mod("modules.devices").dtype_vae == torch.bfloat16
    env.render()

    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_weights_are(module, other)       # the new VAE, not the one we had cast before the reload

    env.opts.set("vae_precision_enabled", True)
    env.render()
    env.opts.set("sd_vae", "Automatic")     # back to the checkpoint's own VAE (restore_base_vae)
    sd_vae.reload_vae_weights()
    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_weights_are(module, checkpoint_vae(env, "a.safetensors"))


def test_checkpoint_switch_into_the_same_model(a1111):
    env = started(a1111, dtype="bf16")
    model, module = env.model(), env.vae_module()
    env.render(override_settings={"sd_model_checkpoint": "b.safetensors"},
               override_settings_restore_afterwards=False)
    assert env.model() is model and model.sd_checkpoint_info.name == "b.safetensors"
    assert engine_of(module) is not None and dtypes_of(module) == {torch.bfloat16}
    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_weights_are(module, checkpoint_vae(env, "b.safetensors"))


def test_new_model_gets_its_own_engine(a1111):
    env = started(a1111, dtype="bf16")
    old_module = env.vae_module()
    env.mod("modules.sd_models").load_model(env.mod("modules.sd_models").checkpoints["b.safetensors"])
    new_module = env.vae_module()
    assert new_module is not old_module
    assert engine_of(new_module) is not None and dtypes_of(new_module) == {torch.bfloat16}


def test_switch_inside_a_render_keeps_the_render_options(a1111):
    env = started(a1111, dtype="bf16")
    sd_models, module = env.mod("modules.sd_models"), env.vae_module()
    seen = {}

    def refiner_switch(p, n):
        sd_models.reload_model_weights(info=sd_models.checkpoints["b.safetensors"])
        seen["dtypes"] = dtypes_of(module)
        seen["engine dtype"] = engine_of(module).options.dtype

    p = env.new_p(args=env.args(dtype="fp32"))
    p.sample_hook = refiner_switch
    env.mod("modules.processing").process_images(p)
    assert seen == {"dtypes": {torch.float32}, "engine dtype": "fp32"}
    assert dtypes_of(module) == {torch.bfloat16}


def test_unload_restores_the_host_functions(a1111):
    env = a1111
    sd_vae, sd_models = env.mod("modules.sd_vae"), env.mod("modules.sd_models")
    originals = (sd_vae.load_vae, sd_vae.reload_vae_weights, sd_models.load_model_weights)
    started(env, enabled=False)
    pristine = snapshot(env.vae_module())
    env.opts.set("vae_precision_enabled", True)
    env.opts.set("vae_precision_dtype", "bf16")
    env.render(img2img=True)
    assert (sd_vae.load_vae, sd_vae.reload_vae_weights, sd_models.load_model_weights) != originals

    env.mod("modules.script_callbacks").script_unloaded_callback()
    assert (sd_vae.load_vae, sd_vae.reload_vae_weights, sd_models.load_model_weights) == originals
    assert_untouched(env.vae_module(), pristine)
    assert env.mod("modules.devices").dtype_vae == torch.float32


def test_exception_inside_decode_leaves_a_consistent_engine(a1111):
    env = started(a1111, enabled=False)
    module = env.vae_module()
    pristine = snapshot(module)
    env.opts.set("vae_precision_enabled", True)
    env.opts.set("vae_precision_dtype", "bf16")
    _, reference = env.render()

    def broken(*args, **kwargs):
        raise RuntimeError("decoder failed")
    module.decoder.forward = broken
    with pytest.raises(RuntimeError, match="decoder failed"):
        env.render()
    del module.decoder.forward
    gc.collect()                               # the failed render's p is gone: nothing keeps counting for it
    engine = engine_of(module)
    assert engine is not None and engine.attached and not env.adapter.rendering
    assert dtypes_of(module) == {torch.bfloat16}
    assert env.mod("modules.devices").dtype_vae == torch.bfloat16

    _, again = env.render()
    assert torch.equal(again.images[0], reference.images[0])
    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_untouched(module, pristine)


def test_interrupted_render_goes_back_to_the_settings(a1111):
    env = started(a1111, dtype="bf16")
    module, state = env.vae_module(), env.mod("modules.shared").state

    def interrupt(p, n):
        state.interrupt()

    p = env.new_p(args=env.args(dtype="fp32"), n_iter=3)
    p.sample_hook = interrupt
    res = env.mod("modules.processing").process_images(p)
    assert len(res.images) == 1 and env.infotext(res.infotexts[0])["VAE dtype"] == "fp32"
    assert not env.adapter.rendering
    assert env.adapter.options.dtype == "bf16" and dtypes_of(module) == {torch.bfloat16}
    assert env.mod("modules.devices").dtype_vae == torch.bfloat16
    state.interrupted = False


def test_host_nan_fallback_change_is_kept_on_release(a1111):
    """A1111's decode_latent_batch NaN fallback sets devices.dtype_vae and recasts the VAE itself
    (auto_vae_precision_bfloat16 -> bf16); when the extension lets go, the host's new choice stays."""
    env = started(a1111, dtype="fp32")
    devices, module = env.mod("modules.devices"), env.vae_module()
    devices.dtype_vae = torch.bfloat16
    module.to(devices.dtype_vae)
    env.opts.set("vae_precision_enabled", False)
    _, res = env.render()
    assert devices.dtype_vae == torch.bfloat16
    assert dtypes_of(module) == {torch.bfloat16} and module.dtype == torch.bfloat16
    assert torch.isfinite(res.images[0]).all()


def test_medvram_wrappers_stay_underneath_and_survive_disable(a1111):
    env = a1111
    env.mod("modules.shared").cmd_opts.medvram = True
    started(env, dtype="bf16")
    lowvram, module = env.mod("modules.lowvram"), env.vae_module()
    host_wrap = engine_of(module)._shadowed["decode"]
    assert host_wrap.__name__ == "first_stage_model_decode_wrap"   # ours on top of the host's, not under it
    env.render(img2img=True)
    assert lowvram.sent_to_gpu and dtypes_of(module) == {torch.bfloat16}
    env.opts.set("vae_precision_enabled", False)
    lowvram.sent_to_gpu.clear()
    env.render()
    assert module.__dict__["decode"] is host_wrap and lowvram.sent_to_gpu

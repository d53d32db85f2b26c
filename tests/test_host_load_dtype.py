"""While the extension picks the VAE dtype, the host loads the VAE unrounded, whatever it would load it at
itself; "host default" and off hand the host's own dtype back (stand-in web UIs in tests/standins).

The hosts' load-time choices: A1111 `modules/sd_models.py` load_model_weights (model.half() unless
--no-half-vae, then `.to(devices.dtype_vae)`); Forge `backend/memory_management.py` vae_dtype(), read by
`backend/loader.py` load_huggingface_component and `backend/patcher/vae.py` VAE.__init__; reForge
`ldm_patched/modules/model_management.py` vae_dtype(device, allowed_dtypes), read by
`ldm_patched/modules/sd.py` VAE.__init__.
"""
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, dtypes_of, forge, reforge  # noqa: E402,F401


def assert_weights_are(module, state_dict, dtype):
    """Every weight is the checkpoint's, rounded to `dtype` only (as the host's own load would)."""
    for name, tensor in module.state_dict().items():
        assert tensor.dtype == dtype, name
        assert torch.equal(tensor, state_dict[name].to(dtype)), name


def set_option(env, **values):
    for name, value in values.items():
        env.opts.set(f"vae_precision_{name}", value)


def decode(env, seed=5):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return env.mod("modules.sd_samplers_common").decode_first_stage(env.model(), z)


# ----- AUTOMATIC1111: the VAE is halved on load unless --no-half-vae -----
def a1111_started(env, half_vae, **settings):
    env.start(load_model=False)
    cmd = env.mod("modules.shared").cmd_opts
    cmd.no_half, cmd.no_half_vae = False, not half_vae
    # real: modules/shared_init.py initialize(): fp32 with --no-half/--no-half-vae, else fp16
    env.mod("modules.devices").dtype_vae = torch.float16 if half_vae else torch.float32
    set_option(env, **settings)
    env.mod("modules.sd_models").load_model()
    return env


def a1111_checkpoint_vae(env, name="a.safetensors"):
    info = env.mod("modules.sd_models").checkpoints[name]
    return {k[len("first_stage_model."):]: v for k, v in info.state_dict.items()}


def test_a1111_fp32_runs_the_checkpoints_weights_not_the_halved_ones(a1111):
    env = a1111_started(a1111, half_vae=True, dtype="fp32")
    module, devices, cmd = env.vae_module(), env.mod("modules.devices"), env.mod("modules.shared").cmd_opts
    assert_weights_are(module, a1111_checkpoint_vae(env), torch.float32)
    assert devices.dtype_vae == torch.float32 and cmd.no_half_vae is False     # the flag is the user's again
    p, res = env.render()
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "fp32"

    # a checkpoint switch into the same model loads unrounded too
    env.opts.set("sd_model_checkpoint", "b.safetensors")
    env.mod("modules.sd_models").reload_model_weights()
    assert_weights_are(module, a1111_checkpoint_vae(env, "b.safetensors"), torch.float32)


def test_a1111_host_default_and_off_hand_back_the_hosts_fp16(a1111):
    env = a1111_started(a1111, half_vae=True, dtype="fp32")
    module, devices = env.vae_module(), env.mod("modules.devices")
    set_option(env, dtype="host default")
    env.render()
    assert_weights_are(module, a1111_checkpoint_vae(env), torch.float16)     # exactly what model.half() gives
    assert devices.dtype_vae == torch.float16 and module.dtype == torch.float16

    set_option(env, dtype="fp32")
    env.render()
    assert_weights_are(module, a1111_checkpoint_vae(env), torch.float32)     # not the fp16 ones cast up

    set_option(env, enabled=False)
    env.render()
    assert_weights_are(module, a1111_checkpoint_vae(env), torch.float16)
    assert devices.dtype_vae == torch.float16 and "decode" not in module.__dict__


def test_a1111_fp32_equals_no_half_vae(a1111):
    env = a1111_started(a1111, half_vae=False, enabled=False)        # the host's own fp32 VAE
    no_half_vae = decode(env)
    # as if restarted without --no-half-vae, the extension on with fp32
    env.mod("modules.shared").cmd_opts.no_half_vae = False
    env.mod("modules.devices").dtype_vae = torch.float16
    set_option(env, enabled=True, dtype="fp32", fused_upsample=False)   # the host's own layers, bit for bit
    env.mod("modules.sd_models").load_model()
    assert torch.equal(decode(env), no_half_vae)


# ----- Forge: vae_dtype() decides the dtype the module is built and loaded in -----
def forge_rendered_with_bf16_flag(forge, **settings):
    """Forge started with --vae-in-bf16, the model loaded by a first render with these settings."""
    forge.mod("backend.args").args.vae_in_bf16 = True
    env = forge.start()
    set_option(env, **settings)
    env.render()
    return env, env.model().forge_objects.vae


def test_forge_vae_in_bf16_with_fp32_equals_vae_in_fp32(forge):
    args = forge.mod("backend.args").args
    args.vae_in_bf16 = True
    env = forge.start()
    set_option(env, dtype="fp32", fused_upsample=False)    # the host's own layers, bit for bit
    env.render()
    vae = env.model().forge_objects.vae
    checkpoint = env.mod("modules.sd_models").checkpoints["a.safetensors"].state_dict
    assert_weights_are(vae.first_stage_model, checkpoint, torch.float32)
    assert vae.vae_dtype == torch.float32
    bf16_flag_with_fp32 = decode(env)

    # the host's own fp32: --vae-in-fp32, extension off, a fresh model
    args.vae_in_bf16, args.vae_in_fp32 = False, True
    set_option(env, enabled=False)
    env.render()
    env.mod("modules.sd_models").model_data.forge_hash = None      # forces a reload
    env.render()
    assert env.model().forge_objects.vae is not vae
    assert torch.equal(decode(env), bf16_flag_with_fp32)


def test_forge_host_default_hands_back_the_flags_bf16(forge):
    env, vae = forge_rendered_with_bf16_flag(forge, dtype="fp32")
    checkpoint = env.mod("modules.sd_models").checkpoints["a.safetensors"].state_dict
    set_option(env, dtype="host default")
    env.render()
    assert vae.vae_dtype == torch.bfloat16 and vae.patcher.size == 0
    assert_weights_are(vae.first_stage_model, checkpoint, torch.bfloat16)
    set_option(env, enabled=False)
    env.render()
    assert vae.vae_dtype == torch.bfloat16
    assert_weights_are(vae.first_stage_model, checkpoint, torch.bfloat16)
    assert "decode" not in vae.first_stage_model.__dict__


def test_forge_a_vae_loaded_rounded_says_so_once(forge, caplog):
    env, _ = forge_rendered_with_bf16_flag(forge, dtype="host default")     # loaded at the host's bf16
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        set_option(env, dtype="fp32")
        env.render()
        _, res = env.render()
    said = [r.getMessage() for r in caplog.records if "rounded" in r.getMessage()]
    assert len(said) == 1 and "bf16" in said[0] and "fp32" in said[0]
    # and every image says so: its fp32 pixels come from bf16-rounded weights
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "fp32 (on bf16-rounded weights)"


def test_forge_an_unrounded_vae_says_nothing_of_rounding(forge, caplog):
    forge.mod("backend.args").args.vae_in_bf16 = True
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        env = forge.start()
        set_option(env, dtype="fp32")
        env.render()
        set_option(env, dtype="bf16")
        env.render()
        set_option(env, dtype="mixed")
        env.render()
        _, res = env.render()
    assert not [r for r in caplog.records if "rounded" in r.getMessage()]
    assert "rounded" not in env.infotext(res.infotexts[0])["VAE dtype"]


def test_forge_load_choice_is_the_hosts_while_host_default(forge):
    env, vae = forge_rendered_with_bf16_flag(forge, dtype="host default")
    assert vae.vae_dtype == torch.bfloat16 and dtypes_of(vae.first_stage_model) == {torch.bfloat16}
    assert env.mod("backend.memory_management").vae_dtype() == torch.bfloat16


# ----- reForge: the module is loaded in fp32, then cast to vae_dtype(device, working_dtypes) -----
def reforge_started(env, **settings):
    env.start(load_model=False)
    set_option(env, **settings)
    env.mod("modules.sd_models").load_model()
    return env


def test_reforge_vae_in_bf16_with_fp32_equals_vae_in_fp32(reforge):
    args = reforge.mod("ldm_patched.modules.args_parser").args
    args.vae_in_bf16 = True
    env = reforge_started(reforge, dtype="fp32", fused_upsample=False)    # the host's own layers, bit for bit
    vae = env.model().forge_objects.vae
    checkpoint = env.mod("modules.sd_models").checkpoints["a.safetensors"].state_dict
    assert_weights_are(vae.first_stage_model, checkpoint, torch.float32)
    _, res = env.render()
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "fp32"
    bf16_flag_with_fp32 = decode(env)

    args.vae_in_bf16, args.vae_in_fp32 = False, True
    set_option(env, enabled=False)
    env.mod("modules.sd_models").load_model(forced_reload=True)
    assert env.model().forge_objects.vae is not vae and env.model().forge_objects.vae.vae_dtype == torch.float32
    assert torch.equal(decode(env), bf16_flag_with_fp32)


def test_reforge_off_hands_back_bf16_and_in_place_vae_loads_stay_unrounded(reforge):
    args = reforge.mod("ldm_patched.modules.args_parser").args
    args.vae_in_bf16 = True
    env = reforge_started(reforge, dtype="fp32")
    vae = env.model().forge_objects.vae
    sd_vae = env.mod("modules.sd_vae")
    other = env.mod("modules.sd_models").checkpoints["b.safetensors"].state_dict
    sd_vae.vae_files["other.safetensors"] = other
    sd_vae.reload_vae_weights(vae_file="other.safetensors")       # loads in place into the same module
    assert env.model().forge_objects.vae is vae
    assert_weights_are(vae.first_stage_model, other, torch.float32)

    set_option(env, enabled=False)
    env.render()
    assert vae.vae_dtype == torch.bfloat16
    assert_weights_are(vae.first_stage_model, other, torch.bfloat16)

"""Forge host (lllyasviel main, `backend`): lazy model loads, new VAE per load, vae.vae_dtype, off means off
(stand-in web UI in tests/standins/forge)."""
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import assert_untouched, dtypes_of, forge, snapshot  # noqa: E402,F401

from lib_vaeprec.engine import engine_of  # noqa: E402


def started(env, **settings):
    env.start()
    settings = {"avoid_emulated": False, **settings}    # bf16 is forced here on CPUs that may only emulate it
    for name, value in settings.items():
        env.opts.set(f"vae_precision_{name}", value)
    return env


def host_decode(env, seed=5):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return env.mod("modules.sd_samplers_common").decode_first_stage(env.model(), z)


def test_lazy_load_attaches_at_the_first_render(forge):
    env = started(forge, dtype="bf16")
    assert type(env.model()).__name__ == "FakeInitialModel"
    assert env.adapter.apply(env.model()) is None
    _, res = env.render()
    vae = env.model().forge_objects.vae
    assert engine_of(vae.first_stage_model) is not None
    assert dtypes_of(vae.first_stage_model) == {torch.bfloat16} and vae.vae_dtype == torch.bfloat16
    assert vae.patcher.size == 0            # the cached byte size is recomputed for the new dtype
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "bf16"


def test_vae_built_in_inference_mode_is_usable_and_values_kept(forge):
    env = started(forge, enabled=False)
    env.render()
    module = env.vae_module()
    assert all(t.is_inference() for t in module.parameters())   # forge_loader runs under inference_mode
    pristine = snapshot(module)
    env.opts.set("vae_precision_enabled", True)
    env.opts.set("vae_precision_dtype", "bf16")
    env.render(img2img=True)
    env.opts.set("vae_precision_enabled", False)
    env.render()
    assert_untouched(module, pristine)


def test_checkpoint_change_builds_a_new_vae_that_gets_attached(forge):
    env = started(forge, dtype="bf16")
    env.render()
    old = env.vae_module()
    env.opts.set("sd_model_checkpoint", "b.safetensors")
    env.render()
    new = env.vae_module()
    assert new is not old and engine_of(new) is not None
    assert dtypes_of(new) == {torch.bfloat16} and env.host_dtype_record() == torch.bfloat16


def test_additional_vae_module(forge):
    env = started(forge, dtype="bf16")
    sd_models = env.mod("modules.sd_models")
    tiny = env.mod("tiny_models")
    sd_models.vae_files["my.vae"] = tiny.vae_state_dict(tiny.IntegratedAutoencoderKL, 9)
    env.opts.set("forge_additional_modules", ["my.vae"])
    env.render()
    module = env.vae_module()
    assert engine_of(module) is not None and dtypes_of(module) == {torch.bfloat16}
    env.opts.set("vae_precision_enabled", False)
    env.render()
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, sd_models.vae_files["my.vae"][name]), name


def test_vae_in_flag_yields_and_it_says_so_once(forge, caplog):
    env = forge
    env.mod("backend.args").args.vae_in_fp32 = True
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        started(env, dtype="bf16")
        env.render()
        env.render()
    said = [r for r in caplog.records if "--vae-in-fp32" in r.getMessage()]
    assert len(said) == 1
    assert env.host_dtype_record() == torch.bfloat16


def test_vae_in_cpu_is_not_a_dtype_choice(forge, caplog):
    forge.mod("backend.args").args.vae_in_cpu = True
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        env = started(forge, dtype="fp32")
        env.render()
    assert not [r for r in caplog.records if "--vae-in-cpu" in r.getMessage()]


def test_host_default_keeps_the_flag_dtype(forge, caplog):
    env = forge
    env.mod("backend.args").args.vae_in_bf16 = True
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        started(env, dtype="host default")
        _, res = env.render()
    assert not [r for r in caplog.records if "--vae-in-bf16" in r.getMessage()]
    assert env.host_dtype_record() == torch.bfloat16 and dtypes_of(env.vae_module()) == {torch.bfloat16}
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "host default (bf16)"


def test_off_means_off_bitwise(forge):
    env = started(forge, enabled=False)
    env.render()
    module, vae = env.vae_module(), env.model().forge_objects.vae
    pristine, pristine_image = snapshot(module), host_decode(env)
    env.opts.set("vae_precision_enabled", True)
    env.opts.set("vae_precision_dtype", "bf16")
    env.render(img2img=True, n_iter=2)
    assert vae.vae_dtype == torch.bfloat16
    env.opts.set("vae_precision_enabled", False)
    _, res = env.render()
    assert_untouched(module, pristine)
    assert vae.vae_dtype == torch.float32 and vae.patcher.model_size() > 0
    assert torch.equal(host_decode(env), pristine_image)
    assert "VAE dtype" not in env.infotext(res.infotexts[0])


def test_a_vae_swapped_without_callback_is_attached_before_sampling(forge):
    env = started(forge, dtype="bf16")
    env.render()
    backend_vae = env.mod("backend.patcher.vae")
    tiny = env.mod("tiny_models")
    replacement = backend_vae.VAE(model=tiny.IntegratedAutoencoderKL(seed=4))

    def swap(p, n):   # something replaces forge_objects.vae on all three copies, firing nothing
        if n == 0:
            for objects in (p.sd_model.forge_objects, p.sd_model.forge_objects_original,
                            p.sd_model.forge_objects_after_applying_lora):
                objects.vae = replacement

    p = env.new_p(n_iter=2)
    p.sample_hook = swap
    res = env.mod("modules.processing").process_images(p)
    assert engine_of(replacement.first_stage_model) is not None and replacement.vae_dtype == torch.bfloat16
    assert "VAE decode" in env.infotext(res.infotexts[1])


def test_accordion_override_on_gradio4_host(forge):
    env = started(forge, dtype="bf16")
    _, res = env.render(args=env.args(dtype="fp32"))
    assert env.infotext(res.infotexts[0])["VAE dtype"] == "fp32"
    assert dtypes_of(env.vae_module()) == {torch.bfloat16} and env.host_dtype_record() == torch.bfloat16


def test_unload_detaches_and_gives_vae_dtype_back(forge):
    env = started(forge, dtype="bf16")
    env.render()
    vae = env.model().forge_objects.vae
    # Forge never loads weights into a loaded VAE: only its load-time dtype choice is wrapped
    manager = env.mod("backend.memory_management")
    assert len(env.adapter.patches) == 1 and hasattr(manager.vae_dtype, "vae_precision_original")
    env.mod("modules.script_callbacks").script_unloaded_callback()
    assert not hasattr(manager.vae_dtype, "vae_precision_original")
    assert "decode" not in vae.first_stage_model.__dict__
    assert vae.vae_dtype == torch.float32 and dtypes_of(vae.first_stage_model) == {torch.float32}

"""The caller changes an attached VAE under us (loads weights, converts it, writes into its weights, asks for
gradients): the next call runs what the caller put there, and remove() leaves exactly that, at the caller's
dtype and values."""
import pytest
import torch

import lib_vaeprec
from conftest import make_vae, psnr
from lib_vaeprec import engine as engine_module
from lib_vaeprec.device_caps import DeviceCaps


def latents(batch=2, size=8, seed=0):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def native_16_bit(monkeypatch):
    """This CPU may only emulate fp16/bf16: the device is told it runs both natively (tiny VAEs only)."""
    monkeypatch.setattr(engine_module, "caps_of", lambda device: DeviceCaps("cpu", "cpu", native_bf16=True,
                                                                               native_fp16=True))


def _state(vae):
    return {name: t.detach().clone() for name, t in vae.state_dict().items()}


def _assert_module_holds(vae, expected, dtype=None):
    for name, tensor in vae.state_dict().items():
        want = expected[name] if dtype is None else expected[name].to(dtype)
        assert tensor.dtype == want.dtype, name
        assert torch.equal(tensor, want), name


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "mixed"])
def test_weights_loaded_while_attached_are_kept_unrounded(native_16_bit, dtype):
    vae = make_vae()
    loaded = _state(make_vae(seed=5))
    lib_vaeprec.apply(vae, dtype=dtype, tiling="off")
    with torch.no_grad():
        vae.decode(latents())
    vae.load_state_dict(loaded)
    lib_vaeprec.remove(vae)
    _assert_module_holds(vae, loaded)


def test_weights_loaded_into_a_submodule_and_the_next_call_uses_them(native_16_bit):
    vae, other = make_vae(), make_vae(seed=5)
    with torch.no_grad():
        expected = other.decode(latents()).sample
    engine = lib_vaeprec.apply(vae, dtype="mixed", tiling="off")
    with torch.no_grad():
        vae.decode(latents())
        vae.decode(latents())
    vae.decoder.load_state_dict(other.decoder.state_dict())
    vae.post_quant_conv.load_state_dict(other.post_quant_conv.state_dict())
    with torch.no_grad():
        vae.decode(latents())                 # new weights: measured again, in the safe dtype
        assert engine.last_call.dtype == "bf16"
        image = vae.decode(latents()).sample
    assert engine.last_call.dtype == "mixed" and psnr(image, expected) > 40
    lib_vaeprec.remove(vae)
    _assert_module_holds(vae, _state(other) | {k: v for k, v in _state(make_vae()).items()
                                                if not k.startswith(("decoder.", "post_quant_conv."))})


@pytest.mark.parametrize("ours", ["fp32", "bf16", "mixed"])
@pytest.mark.parametrize("conversion", [
    lambda vae: vae.to("cpu", torch.float16), lambda vae: vae.half(), lambda vae: vae.to(torch.bfloat16),
    lambda vae: vae.double()], ids=["to-cpu-fp16", "half", "to-bf16", "double"])
def test_the_callers_conversion_after_apply_wins(native_16_bit, ours, conversion):
    vae = make_vae()
    original = _state(vae)
    lib_vaeprec.apply(vae, dtype=ours, tiling="off")
    with torch.no_grad():
        vae.decode(latents(batch=1))
    target = _target_of(conversion)
    # a conversion to the dtype every weight already runs in (bf16 after bf16's call or mixed's measuring
    # one) changes nothing: the caller's weights stay
    no_op = {p.dtype for p in vae.parameters()} == {target} and ours != "fp32"
    conversion(vae)
    converted = original if no_op else {name: t.to(target) for name, t in original.items()}
    with torch.no_grad():
        vae.decode(latents(batch=1))          # a call between the conversion and remove()
    lib_vaeprec.remove(vae)
    _assert_module_holds(vae, converted)
    with torch.no_grad():                     # the caller's own call at its own dtype works
        vae.decode(latents(batch=1).to(vae.dtype))


def test_sdxl_pipelines_upcast_and_back_leave_the_callers_weights(native_16_bit):
    """diffusers' SDXL pipelines see an fp16 VAE (ours, cast) with force_upcast: `vae.to(dtype=float32)`,
    decode, `vae.to(dtype=float16)` to undo it. That round trip is not the caller's choice of fp16."""
    vae = make_vae()
    original = _state(vae)
    engine = lib_vaeprec.apply(vae, dtype="fp16", tiling="off")
    with torch.no_grad():
        vae.decode(latents(batch=1))
        assert vae.dtype == torch.float16
        vae.to(dtype=torch.float32)
        vae.decode(latents(batch=1))
        vae.to(dtype=torch.float16)
        vae.decode(latents(batch=1))
    assert engine.last_call.dtype == "fp16"
    lib_vaeprec.remove(vae)
    _assert_module_holds(vae, original)


def test_a_pipelines_to_converts_the_callers_weights():
    from test_diffusers_adapter import TinyPipeline
    vae = make_vae()
    original = _state(vae)
    pipe = TinyPipeline(vae)
    lib_vaeprec.apply(pipe, dtype="bf16", avoid_emulated=False, tiling="off")
    with torch.no_grad():
        vae.decode(latents(batch=1))
    pipe.to(torch.float16)
    lib_vaeprec.remove(pipe)
    _assert_module_holds(vae, {name: t.half() for name, t in original.items()})


def _target_of(conversion):
    probe = torch.nn.Linear(1, 1)
    conversion(probe)
    return probe.weight.dtype


def test_a_submodules_conversion_after_apply_wins(native_16_bit):
    vae = make_vae()
    original = _state(vae)
    lib_vaeprec.apply(vae, dtype="bf16", tiling="off")
    with torch.no_grad():
        vae.decode(latents())
    vae.decoder.half()
    lib_vaeprec.remove(vae)
    expected = {k: v.half() if k.startswith("decoder.") else v for k, v in original.items()}
    _assert_module_holds(vae, expected)


@pytest.mark.parametrize("write", [
    lambda p: p.mul_(2), lambda p: p.data.mul_(2), lambda p: p.detach().mul_(2), lambda p: p.copy_(p * 2)],
    ids=["no_grad-mul_", "data-mul_", "detach-mul_", "copy_"])
def test_in_place_writes_after_apply_are_kept_at_the_callers_dtype(write):
    vae = make_vae()
    original = _state(vae)
    lib_vaeprec.apply(vae, dtype="bf16", avoid_emulated=False, tiling="off")
    with torch.no_grad():
        vae.decode(latents(batch=1))
        write(vae.decoder.conv_in.weight)
    lib_vaeprec.remove(vae)
    weight = vae.decoder.conv_in.weight
    assert weight.dtype == torch.float32
    # the caller wrote into the bf16 copy: its values, at its dtype
    assert torch.equal(weight, (original["decoder.conv_in.weight"].bfloat16() * 2).float())
    untouched = {k: v for k, v in original.items() if k != "decoder.conv_in.weight"}
    _assert_module_holds(vae, untouched | {"decoder.conv_in.weight": weight.detach()})


def test_requires_grad_after_apply_trains_the_callers_weights_and_remove_keeps_them():
    vae = make_vae()
    original = _state(vae)
    lib_vaeprec.apply(vae, dtype="bf16", avoid_emulated=False, tiling="off")
    with torch.no_grad():
        vae.decode(latents(batch=1))
    vae.requires_grad_(True)
    image = vae.decode(latents(batch=1)).sample
    image.mean().backward()
    assert vae.decoder.conv_out.weight.grad.dtype == torch.float32
    vae.requires_grad_(False)
    with torch.no_grad():
        vae.decode(latents(batch=1))
    lib_vaeprec.remove(vae)
    _assert_module_holds(vae, original)
    assert not any(p.requires_grad for p in vae.parameters())
